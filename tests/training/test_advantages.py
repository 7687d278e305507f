"""``reward_scale``: the advantages and value targets are those of the scaled rewards."""

import torch

from mamba_rl.config import TrainConfig
from mamba_rl.training.rollout import Rollout
from mamba_rl.training.trainer import rollout_advantages


def test_reward_scale_scales_advantages_and_value_targets_of_a_zero_value_rollout():
    torch.manual_seed(0)
    n, steps = 3, 7
    done = torch.zeros(n, steps, dtype=torch.bool)
    # an episode ends by termination, another by truncation (bootstrapped from final_value)
    done[0, 2], done[1, 4] = True, True
    terminated = done.clone()
    terminated[1, 4] = False
    zeros = torch.zeros(n, steps)
    rollout = Rollout(
        obs=torch.zeros(n, steps, 1),
        action=torch.zeros(n, steps, dtype=torch.int64),
        log_prob=zeros,
        value=zeros,
        reward=torch.randn(n, steps) * 10,
        done=done,
        is_init=done,
        decision=~done,
        success=done,
        episode_return=zeros,
        episode_length=zeros.long(),
        chunk_states={},
        bootstrap_value=torch.zeros(n),
        chunk_len=steps,
        terminated=terminated,
        final_value=zeros,
    )
    cfg = TrainConfig(env="CartPole-v1")
    advantages, returns = rollout_advantages(rollout, cfg)
    cfg.reward_scale = 0.01
    scaled_advantages, scaled_returns = rollout_advantages(rollout, cfg)
    # with every value 0, GAE is linear in the rewards
    torch.testing.assert_close(scaled_advantages, 0.01 * advantages)
    torch.testing.assert_close(scaled_returns, 0.01 * returns)
    assert advantages.abs().max() > 1
