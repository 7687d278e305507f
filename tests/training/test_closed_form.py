"""The memory task's blank delay in closed form (delay_closed_form): the same episodes, query
logits, values, losses and gradients as the stepped replay; the refused configs; resume."""

import pytest
import torch

from mamba_rl.config import ConfigError, TrainConfig
from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.envs.delayed_memory import DelayedMemoryState, delayed_memory_observe
from mamba_rl.policies import make_actor_critic
from mamba_rl.training import train
from mamba_rl.training.closed_form import ClosedFormCollector, closed_form_replay
from mamba_rl.training.ppo import ppo_loss
from mamba_rl.training.rollout import RolloutCollector

# delays 1..12 with d_conv = 4: played whole (1, 2), or 3 blank steps and a jump of up to 9
PARAMS = DelayedMemoryParams(num_bits=2, horizon=(1, 12))
NUM_ENVS = 12


def _policy(dtype=torch.float64, **options):
    torch.manual_seed(0)
    policy = make_actor_critic("mamba", PARAMS.obs_dim, PARAMS.num_actions, d_model=8, d_state=4, **options)
    return policy.to(dtype)


def _stepped(policy, episodes):
    """Query logits ``[N, A]`` and values ``[N]`` of the episodes, stepped through every delay step by
    the trainer's sequence path (padded after the query with terminal observations)."""
    state = DelayedMemoryState(**{name: episodes[name] for name in DelayedMemoryState._fields})
    steps = int(state.horizon.max()) + 2
    obs = torch.stack(
        [delayed_memory_observe(state._replace(t=torch.full_like(state.t, t)), PARAMS)[0] for t in range(steps)], 1
    ).to(torch.float64)
    reset = torch.zeros(obs.shape[:2], dtype=torch.bool)
    reset[:, 0] = True
    logits, value, _ = policy.sequence(obs, policy.zero_state(obs.shape[0]), reset)
    rows = torch.arange(obs.shape[0])
    query = state.horizon + 1
    return logits[rows, query], value[rows, query]


def _relative(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize(
    "options", [{}, {"shared_trunk": False}, {"preset": "rl"}], ids=["shared", "separate-trunks", "start-marker"]
)
def test_closed_form_replay_equals_the_stepped_replay_in_float64(options):
    policy = _policy(**options)
    collector = ClosedFormCollector(policy, PARAMS, NUM_ENVS, seed=0, device="cpu")
    rollout = collector.collect()
    horizon = rollout.episodes["horizon"]
    assert horizon.min() == 1 and horizon.max() == 12, "delays both played whole and jumped"
    env_idx = torch.arange(NUM_ENVS)
    logits, value = closed_form_replay(policy, rollout, env_idx, policy_mask=rollout.decision)
    ref_logits, ref_value = _stepped(policy, rollout.episodes)
    assert _relative(logits, ref_logits) < 1e-9
    assert _relative(value[:, 0], ref_value) < 1e-9
    # the collection: the value and the log-prob of the sampled answer (the heads' float32)
    log_prob, _ = policy.action_dist.log_prob_entropy(ref_logits, rollout.action[:, 0])
    torch.testing.assert_close(rollout.log_prob[:, 0], log_prob, atol=1e-6, rtol=0)
    torch.testing.assert_close(rollout.value[:, 0], ref_value.float(), atol=1e-6, rtol=0)

    # every parameter's gradient of any function of the query logits and values
    weights = torch.randn_like(logits), torch.randn_like(ref_value)
    params = [p for p in policy.parameters() if p.requires_grad]

    def grads(logits, value):
        return torch.autograd.grad((logits * weights[0]).sum() + (value * weights[1]).sum(), params, allow_unused=True)

    got, want = grads(logits, value[:, 0]), grads(*_stepped(policy, rollout.episodes))
    for name, g, w in zip([n for n, p in policy.named_parameters() if p.requires_grad], got, want):
        if w is None:
            assert g is None or not g.any(), name
            continue
        assert _relative(g, w) < 1e-9, name

    # the PPO loss (the heads' log-softmax is float32) and its gradient
    advantages = torch.randn(NUM_ENVS)
    returns = rollout.reward[:, 0]

    def loss(logits, value):
        return ppo_loss(
            logits,
            value,
            rollout.action[:, 0],
            rollout.log_prob[:, 0],
            rollout.value[:, 0],
            advantages,
            returns,
            torch.ones(NUM_ENVS),
            action_dist=policy.action_dist,
        ).loss

    logits, value = closed_form_replay(policy, rollout, env_idx, policy_mask=rollout.decision)
    closed, stepped = loss(logits, value[:, 0]), loss(*_stepped(policy, rollout.episodes))
    torch.testing.assert_close(closed, stepped, atol=1e-6, rtol=1e-6)
    for g, w in zip(torch.autograd.grad(closed, params), torch.autograd.grad(stepped, params)):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)


def test_closed_form_plays_the_episodes_the_stepped_collector_plays():
    policy = _policy(torch.float32)
    closed = ClosedFormCollector(policy, PARAMS, NUM_ENVS, seed=5, device="cpu")
    stepped = RolloutCollector(policy, PARAMS, NUM_ENVS, 2 * (PARAMS.horizon_range[1] + 2), 1, 5, "cpu")
    rollout = stepped.collect()
    episodes = [closed.collect().episodes for _ in range(2)]
    for env in range(NUM_ENVS):
        starts = rollout.is_init[env].nonzero().squeeze(-1).tolist()
        for k in range(2):
            start = starts[k]
            cue = rollout.obs[env, start, : PARAMS.num_bits]
            target = int(sum(int(bit) << j for j, bit in enumerate(cue)))
            length = int(rollout.episode_length[env][rollout.done[env]][k])
            assert target == int(episodes[k]["target"][env])
            assert length == int(episodes[k]["horizon"][env]) + 2


def test_a_closed_form_run_resumes_identically_at_ten_million_steps(tmp_path):
    cfg = dict(
        num_bits=2,
        horizon=[1, 10**7],
        horizon_sampling="log_uniform",
        num_envs=16,
        d_model=8,
        device="cpu",
        eval_episodes=0,
        progress_bar=False,
        tensorboard=False,
        checkpoint_interval=1,
        num_threads=1,
        delay_closed_form=True,
    )
    full = train(TrainConfig(**cfg, num_updates=4), tmp_path / "full", verbose=False)
    train(TrainConfig(**cfg, num_updates=2), tmp_path / "split", verbose=False)
    resumed = train(TrainConfig(**cfg, num_updates=4), tmp_path / "split", resume=True, verbose=False)
    a = torch.load(full.run_dir / "checkpoint.pt", weights_only=False)
    b = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=False)
    assert [h["accuracy"] for h in a["history"]] == [h["accuracy"] for h in b["history"]]
    # the episodes' steps, delays included: 16 episodes of delays up to 10**7 per update
    assert a["global_step"] == b["global_step"] > 4 * 16 * 10**4
    for key in a["policy"]:
        assert torch.equal(a["policy"][key], b["policy"][key]), key
    for key in a["collector"]["carry"]:
        assert torch.equal(a["collector"]["carry"][key], b["collector"]["carry"][key]), key
    assert torch.equal(a["collector"]["generator"], b["collector"]["generator"])


def test_init_policy_starts_from_the_checkpoints_parameters(tmp_path):
    cfg = dict(num_bits=2, horizon=[1, 5], num_envs=8, d_model=8, device="cpu", num_updates=1, eval_episodes=0)
    cfg.update(progress_bar=False, tensorboard=False, num_threads=1)
    first = train(TrainConfig(**cfg, seed=1), tmp_path / "first", verbose=False)
    start = torch.load(first.run_dir / "checkpoint.pt", weights_only=False)["policy"]
    # Adam moves each parameter by about the learning rate: 1e-12 keeps the start visible
    tuned = train(
        TrainConfig(**cfg, seed=2, init_policy=str(first.run_dir), learning_rate=1e-12, delay_closed_form=True),
        tmp_path / "tuned",
        verbose=False,
    )
    after = torch.load(tuned.run_dir / "checkpoint.pt", weights_only=False)["policy"]
    for key in start:
        torch.testing.assert_close(after[key], start[key], atol=1e-9, rtol=0)
    with pytest.raises(ConfigError, match="init_policy=.* does not fit the policy"):
        train(TrainConfig(**{**cfg, "d_model": 16}, init_policy=str(first.run_dir)), tmp_path / "bad", verbose=False)


@pytest.mark.parametrize(
    "override,message",
    [
        (
            {"controller": "gru"},
            "delay_closed_form needs controller = 'mamba' (a GRU is nonlinear: no closed form), got 'gru'",
        ),
        ({"num_layers": 2}, "delay_closed_form needs num_layers = 1 (a later Mamba layer reads"),
        ({"num_distractors": 8}, "delay_closed_form needs num_distractors = 0 (distractors make"),
        ({"chunk_len": 64}, "delay_closed_form needs chunk_len = 'auto' (each episode is replayed whole), got 64"),
        ({"chunks_per_rollout": 2}, "delay_closed_form needs chunks_per_rollout = 1"),
        ({"policy_mask_key": None}, "delay_closed_form needs policy_mask_key = 'decision'"),
        ({"state_figure_interval": 5}, "delay_closed_form needs state_figure_interval = 0"),
        ({"env": "CartPole-v1"}, "delay_closed_form needs env = the memory task"),
    ],
    ids=lambda v: "-".join(map(str, v)) if isinstance(v, dict) else "",
)
def test_configs_without_a_closed_form_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        TrainConfig(delay_closed_form=True, **override)
    assert message in str(info.value)


def test_the_policys_closed_form_refuses_a_gru_and_a_stack():
    obs = torch.zeros(3, PARAMS.obs_dim)
    steps = torch.full((3,), 10)
    gru = make_actor_critic("gru", PARAMS.obs_dim, PARAMS.num_actions, gru_hidden_size=8)
    with pytest.raises(ValueError, match="trunk must be 'mamba' .* got controller='gru'"):
        gru.skip_constant_steps(obs, gru.zero_state(3), steps)
    stack = make_actor_critic("mamba", PARAMS.obs_dim, PARAMS.num_actions, d_model=8, num_layers=2)
    with pytest.raises(ValueError, match="one Mamba layer .* got num_layers=2"):
        stack.skip_constant_steps(obs, stack.zero_state(3), steps)
