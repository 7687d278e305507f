"""The TorchRL face, DelayedMemoryEnv: specs, keys, exact rewards, partial resets, seeding,
bad input."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs, step_mdp

from mamba_rl.envs import DelayedMemoryEnv, DelayedMemoryGymEnv

CONFIGS = [
    {"num_bits": 1, "horizon": 1},
    {"num_bits": 4, "horizon": (1, 5), "num_distractors": 3},
    {"num_bits": 16, "horizon": 2, "wrong_penalty": 0.25},
]


def answer_policy(td):
    """Answers right at decision steps and 0 elsewhere (reads "target": for tests only)."""
    decision = td["decision"].squeeze(-1)
    td["action"] = torch.where(decision, td["target"], torch.zeros_like(td["target"]))
    return td


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_check_env_specs_passes(config):
    env = DelayedMemoryEnv(num_envs=7, seed=0, **config)
    check_env_specs(env, break_when_any_done="both")
    check_env_specs(env, seed=5)


def test_keys_shapes_and_dtypes_match_the_documented_contract():
    env = DelayedMemoryEnv(num_envs=5, num_bits=3, horizon=4, num_distractors=2, seed=1)
    assert (env.obs_dim, env.num_actions, env.batch_size) == (7, 8, torch.Size([5]))
    td = env.reset()
    expected = {
        "observation": ((5, 7), torch.float32),
        "decision": ((5, 1), torch.bool),
        "target": ((5,), torch.int64),
        "success": ((5, 1), torch.bool),
        "done": ((5, 1), torch.bool),
        "terminated": ((5, 1), torch.bool),
        "truncated": ((5, 1), torch.bool),
    }
    for key, (shape, dtype) in expected.items():
        assert (td[key].shape, td[key].dtype) == (torch.Size(shape), dtype), key
    assert env.action_spec.shape == (5,) and env.action_spec.dtype == torch.int64
    td = env.step(td.set("action", env.action_spec.rand()))
    assert td["next", "reward"].shape == (5, 1) and td["next", "reward"].dtype == torch.float32
    for key in ["observation", "decision", "target", "success", "done", "terminated", "truncated"]:
        assert td["next", key].shape == torch.Size(expected[key][0]), key


@pytest.mark.parametrize("horizon", [1, 3, 62], ids=str)
def test_rollout_rewards_exactly_at_query_steps_and_episode_is_horizon_plus_two(horizon):
    env = DelayedMemoryEnv(num_envs=6, num_bits=5, horizon=horizon, seed=2)
    steps = 3 * (horizon + 2)
    rollout = env.rollout(steps, answer_policy, break_when_any_done=False)
    reward = rollout["next", "reward"].squeeze(-1)
    done = rollout["next", "done"].squeeze(-1)
    decision = rollout["decision"].squeeze(-1)
    # episodes end at steps horizon + 1, 2 * horizon + 3, ... (0-based)
    expected_done = torch.zeros(steps, dtype=torch.bool)
    expected_done[horizon + 1 :: horizon + 2] = True
    assert torch.equal(done, expected_done.expand(6, -1))
    assert torch.equal(decision, done)
    assert torch.equal(reward, done.float())
    assert torch.equal(rollout["next", "success"].squeeze(-1), done)
    assert torch.equal(rollout["next", "terminated"], rollout["next", "done"])
    assert not rollout["next", "truncated"].any()


def test_bits_show_at_cue_step_only_in_rollout():
    env = DelayedMemoryEnv(num_envs=9, num_bits=6, horizon=(2, 7), seed=3)
    rollout = env.rollout(60, answer_policy, break_when_any_done=False)
    obs = rollout["observation"]
    cue = obs[..., 6] == 1
    shifts = torch.arange(6)
    bits = ((rollout["target"].unsqueeze(-1) >> shifts) & 1).float()
    assert torch.equal(obs[..., :6][cue], bits[cue])
    assert (obs[..., :6][~cue] == 0).all()
    # the cue step follows every reset: the first step and every step after a done
    after_done = torch.cat([torch.ones(9, 1, dtype=torch.bool), rollout["next", "done"][:, :-1, 0]], 1)
    assert torch.equal(cue, after_done)


def test_wrong_answer_earns_minus_penalty():
    env = DelayedMemoryEnv(num_envs=4, num_bits=2, horizon=2, wrong_penalty=0.5, seed=4)

    def wrong(td):
        td["action"] = (td["target"] + 1) % 4
        return td

    rollout = env.rollout(4, wrong, break_when_any_done=False)
    expected = torch.tensor([0.0, 0.0, 0.0, -0.5]).expand(4, -1)
    assert torch.equal(rollout["next", "reward"].squeeze(-1), expected)
    assert not rollout["next", "success"].any()


def test_partial_reset_leaves_other_envs_untouched():
    def advance(env, td, n):
        for _ in range(n):
            td = step_mdp(env.step(answer_policy(td)))
        return td

    kwargs = {"num_envs": 8, "num_bits": 4, "horizon": (4, 9), "num_distractors": 3, "seed": 5}
    env, ref = DelayedMemoryEnv(**kwargs), DelayedMemoryEnv(**kwargs)
    td, td_ref = advance(env, env.reset(), 3), advance(ref, ref.reset(), 3)
    mask = torch.tensor([True, False, False, True, False, False, False, True]).unsqueeze(-1)
    before = td.clone()
    td = env.reset(td.set("_reset", mask))
    keep = ~mask.squeeze(-1)
    assert (td[keep] == before[keep]).all()
    assert (td["observation"][~keep][:, 4] == 1).all()  # cue flag of the new episodes
    assert "_reset" not in td.keys()
    # the untouched envs go on exactly as in a run without the partial reset
    for _ in range(15):
        td = step_mdp(env.step(answer_policy(td)), keep_other=True)
        td_ref = step_mdp(ref.step(answer_policy(td_ref)), keep_other=True)
        td, td_ref = env.maybe_reset(td), ref.maybe_reset(td_ref)
        assert (td[keep] == td_ref[keep]).all()


def test_step_and_maybe_reset_restarts_done_envs_only():
    env = DelayedMemoryEnv(num_envs=16, num_bits=3, horizon=(1, 4), seed=6)
    td = env.reset()
    for _ in range(30):
        stepped, td = env.step_and_maybe_reset(answer_policy(td))
        done = stepped["next", "done"].squeeze(-1)
        assert (td["observation"][done][:, 3] == 1).all()
        assert torch.equal(td["observation"][~done], stepped["next", "observation"][~done])
        assert not td["done"].any()


def test_same_seed_same_episodes_whatever_the_global_rng():
    def rollout(make):
        torch.manual_seed(int(torch.randint(0, 1000, ())) + 1)
        env = make()
        return env.rollout(40, answer_policy, break_when_any_done=False)

    kwargs = {"num_envs": 10, "num_bits": 5, "horizon": (1, 6), "num_distractors": 2}
    a = rollout(lambda: DelayedMemoryEnv(seed=7, **kwargs))
    b = rollout(lambda: DelayedMemoryEnv(seed=7, **kwargs))

    def reseeded():
        env = DelayedMemoryEnv(seed=99, **kwargs)
        env.rollout(5, break_when_any_done=False)
        env.set_seed(7)
        return env

    c = rollout(reseeded)
    assert (a == b).all() and (a == c).all()
    d = rollout(lambda: DelayedMemoryEnv(seed=8, **kwargs))
    assert not torch.equal(a["observation"], d["observation"])


def test_env_zero_plays_what_the_gym_env_plays_for_the_same_seed():
    env = DelayedMemoryEnv(num_envs=3, num_bits=4, horizon=(2, 5), num_distractors=2, seed=9)
    gym_env = DelayedMemoryGymEnv(num_bits=4, horizon=(2, 5), num_distractors=2)
    rollout = env.rollout(25, answer_policy, break_when_any_done=False)
    obs, info = gym_env.reset(seed=9)
    for i in range(25):
        assert torch.equal(torch.from_numpy(obs), rollout["observation"][0, i])
        action = info["target"] if info["decision"] else 0
        obs, reward, terminated, _, info = gym_env.step(action)
        assert reward == rollout["next", "reward"][0, i, 0].item()
        if terminated:
            obs, info = gym_env.reset()


def test_collector_runs_with_a_random_policy():
    from torchrl.collectors import Collector

    env = DelayedMemoryEnv(num_envs=4, num_bits=2, horizon=3, seed=10)
    collector = Collector(env, None, frames_per_batch=40, total_frames=80)
    batches = list(collector)
    collector.shutdown()
    assert len(batches) == 2 and batches[0].shape == (4, 10)
    assert batches[0]["next", "done"].sum() == 4 * 2


def test_bad_actions_raise_naming_the_value_and_nothing_is_clipped():
    env = DelayedMemoryEnv(num_envs=3, num_bits=2, horizon=2, seed=11)
    td = env.reset()
    cases = [
        (torch.tensor([0, 4, 1]), ValueError, r"action must be in 0..3 \(num_bits=2\), got \[4\] at env indices \[1\]"),
        (torch.tensor([-1, 0, 1]), ValueError, r"got \[-1\] at env indices \[0\]"),
        (torch.zeros(3), TypeError, "integer dtype .* got torch.float32"),
        (torch.zeros(3, dtype=torch.bool), TypeError, "got torch.bool"),
        (torch.zeros(3, 1, dtype=torch.int64), ValueError, r"shape \[3\] .* got \[3, 1\]"),
        (torch.zeros(3, 4, dtype=torch.int64), ValueError, r"got \[3, 4\]"),
    ]
    for action, error, message in cases:
        with pytest.raises(error, match=message):
            env._step(td.clone().set("action", action))
    with pytest.raises(ValueError, match=r"got \[4\] at env indices \[1\]"):
        env.step(td.clone().set("action", torch.tensor([0, 4, 1])))
    # with validate_actions=False only the range check is skipped
    fast = DelayedMemoryEnv(num_envs=3, num_bits=2, horizon=2, seed=11, validate_actions=False)
    out = fast.step(fast.reset().set("action", torch.tensor([0, 4, 1])))
    assert (out["next", "reward"] == 0).all()
    with pytest.raises(TypeError, match="got torch.float32"):
        fast._step(td.clone().set("action", torch.zeros(3)))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_envs": 0}, "num_envs must be an int >= 1, got 0"),
        ({"num_envs": 2.0}, "num_envs must be an int >= 1, got 2.0"),
        ({"num_envs": 2, "num_bits": 17}, "num_bits must be an int in 1..16, got 17"),
        ({"num_envs": 2, "horizon": 0}, "horizon must be in 1..2147483645, got 0"),
        ({"num_envs": 2, "horizon": (9, 2)}, "low <= high, got low=9 > high=2"),
        ({"num_envs": 2, "num_distractors": -2}, "num_distractors must be an int >= 0, got -2"),
        ({"num_envs": 2, "seed": 1.5}, "seed must be an int or None, got 1.5"),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else "",
)
def test_bad_constructor_arguments_raise_naming_argument_and_value(kwargs, message):
    with pytest.raises(ValueError) as info:
        DelayedMemoryEnv(**kwargs)
    assert message in str(info.value)


def test_bad_reset_mask_raises():
    env = DelayedMemoryEnv(num_envs=3, num_bits=2, horizon=2, seed=12)
    td = env.reset()
    with pytest.raises(ValueError, match=r"_reset must be a bool tensor of shape \[3, 1\]"):
        env._reset(TensorDict({"_reset": torch.ones(3, 1)}, batch_size=[3]))
    assert td["observation"].shape == (3, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_env_matches_cpu_env_and_passes_specs():
    kwargs = {"num_envs": 64, "num_bits": 4, "horizon": (1, 6), "num_distractors": 3, "seed": 13}
    cpu, gpu = DelayedMemoryEnv(**kwargs), DelayedMemoryEnv(device="cuda", **kwargs)
    check_env_specs(gpu)
    cpu.set_seed(13), gpu.set_seed(13)
    a = cpu.rollout(30, answer_policy, break_when_any_done=False)
    b = gpu.rollout(30, answer_policy, break_when_any_done=False)
    assert (a == b.cpu()).all()
