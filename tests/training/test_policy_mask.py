"""The policy mask in the replay: the actor head runs only at the scored steps, and the PPO update
takes the same loss and gradients as with the logits of every step weighted by the mask (float64,
Mamba and GRU, both backprop modes); without a mask the update is plain PPO over every step."""

import dataclasses

import pytest
import torch

from mamba_rl.config import TrainConfig
from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.evaluate import build_policy
from mamba_rl.training import RolloutCollector, ppo_loss, replay
from mamba_rl.training.trainer import ppo_update, rollout_advantages
from tests.conftest import assert_close

NUM_ENVS, CHUNK_LEN, NUM_CHUNKS = 6, 7, 3


def _config(**kwargs):
    base = dict(
        num_bits=3,
        horizon=[2, 9],
        num_envs=NUM_ENVS,
        d_model=16,
        gru_hidden_size=16,
        device="cpu",
        update_epochs=1,
        num_minibatches=1,
        max_grad_norm=1e9,
        ent_coef=0.05,
        progress_bar=False,
        tensorboard=False,
    )
    return TrainConfig(**{**base, **kwargs})


def _double_rollout(controller):
    """A policy and a rollout of it in float64: rows start mid-episode and end mid-episode, and
    the rows' old log-probs are moved off the policy's so that ratios leave the clip range."""
    torch.manual_seed(0)
    cfg = _config(controller=controller)
    policy = build_policy(cfg, "cpu")
    params = DelayedMemoryParams(num_bits=3, horizon=(2, 9))
    collector = RolloutCollector(
        policy, params, NUM_ENVS, CHUNK_LEN, NUM_CHUNKS, 0, torch.device("cpu"), cuda_graph=False
    )
    collector.collect()
    rollout = collector.collect()
    policy.double()
    gen = torch.Generator().manual_seed(1)
    rollout = dataclasses.replace(
        rollout,
        obs=rollout.obs.double(),
        log_prob=rollout.log_prob.double() + 0.3 * torch.randn(rollout.log_prob.shape, generator=gen).double(),
        value=rollout.value.double(),
        reward=rollout.reward.double(),
        bootstrap_value=rollout.bootstrap_value.double(),
        chunk_states={name: value.double() for name, value in rollout.chunk_states.items()},
        terminated=None,
    )
    return policy, rollout


@pytest.mark.parametrize("backprop", ["chunk", "episode"])
@pytest.mark.parametrize("controller", ["mamba", "gru"])
def test_masked_replay_gives_the_logits_of_the_masked_steps_in_row_major_order(controller, backprop):
    policy, rollout = _double_rollout(controller)
    env_idx = torch.tensor([4, 0, 3])
    mask = rollout.decision
    assert 0 < int(mask[env_idx].sum()) < mask[env_idx].numel()
    with torch.no_grad():
        full, full_value = replay(policy, rollout, env_idx, backprop)
        masked, masked_value = replay(policy, rollout, env_idx, backprop, policy_mask=mask)
    assert masked.shape == (int(mask[env_idx].sum()), 2**3)
    assert_close(masked, full[mask[env_idx]])
    assert_close(masked_value, full_value)


def _reference_grads(policy, rollout, advantages, returns, cfg, masked):
    """The loss and gradients of one minibatch of every env from the logits of every step,
    each step weighted by the decision mask (``masked``) or all by 1."""
    policy.zero_grad()
    env_idx = torch.arange(NUM_ENVS)
    logits, value = replay(policy, rollout, env_idx, cfg.backprop)
    out = ppo_loss(
        logits,
        value,
        rollout.action,
        rollout.log_prob,
        rollout.value,
        advantages,
        returns,
        rollout.decision.double() if masked else None,
        clip_coef=cfg.clip_coef,
        ent_coef=cfg.ent_coef,
        vf_coef=cfg.vf_coef,
        action_dist=policy.action_dist,
    )
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in policy.named_parameters()}


@pytest.mark.parametrize("backprop", ["chunk", "episode"])
@pytest.mark.parametrize("controller", ["mamba", "gru"])
@pytest.mark.parametrize("policy_mask_key", ["decision", None], ids=["masked", "plain_ppo"])
def test_ppo_update_has_the_loss_and_gradients_of_the_full_logits(controller, backprop, policy_mask_key):
    policy, rollout = _double_rollout(controller)
    cfg = _config(controller=controller, backprop=backprop, policy_mask_key=policy_mask_key)
    advantages, returns = rollout_advantages(rollout, cfg)
    expected, expected_grads = _reference_grads(policy, rollout, advantages, returns, cfg, policy_mask_key is not None)
    assert 0 < float(expected.clip_fraction) < 1, "the ratios must exercise both sides of the clip"
    # a step of size 0 keeps the parameters, and the gradients stay on them
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
    stats = ppo_update(policy, optimizer, rollout, advantages, returns, cfg, torch.Generator().manual_seed(0))
    # the update's statistics are logged as float32
    for name in ("loss", "policy", "entropy", "approx_kl", "clip_fraction"):
        assert_close(stats[f"losses/{name}"], getattr(expected, name).detach().float(), msg=name)
    for name, p in policy.named_parameters():
        assert_close(p.grad, expected_grads[name], msg=name)
    assert expected_grads["actor_head.0.weight"].abs().sum() > 0
