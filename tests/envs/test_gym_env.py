"""The Gymnasium faces: the registered single env and DelayedMemoryVectorEnv."""

import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode, VectorEnv

import mamba_rl  # noqa: F401  (registers the id)
from mamba_rl.envs import GYM_ID, DelayedMemoryEnv, DelayedMemoryGymEnv, DelayedMemoryVectorEnv


def play_episode(env, seed=None, answer=True):
    """Plays one episode of a single env; returns the per-step (obs, reward, terminated, info)."""
    obs, info = env.reset(seed=seed)
    steps = [(obs, None, None, info)]
    terminated = False
    while not terminated:
        action = info["target"] if answer else (info["target"] + 1) % env.action_space.n
        obs, reward, terminated, truncated, info = env.step(action)
        assert truncated is False
        steps.append((obs, reward, terminated, info))
    return steps


# check_env warns that gymnasium.make's wrappers are on; the unwrapped env is checked below
@pytest.mark.filterwarnings("ignore:.*is different from the unwrapped version")
def test_make_with_issue_arguments_passes_check_env():
    env = gymnasium.make(GYM_ID, num_bits=4, horizon=1000)
    assert env.observation_space == gymnasium.spaces.Box(0.0, 1.0, (6,), np.float32)
    assert env.action_space == gymnasium.spaces.Discrete(16)
    check_env(env)


def test_unwrapped_env_passes_check_env_without_warnings():
    env = gymnasium.make(GYM_ID, num_bits=3, horizon=(1, 4), num_distractors=2).unwrapped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("horizon", [1, 5, 1000], ids=str)
def test_episode_is_horizon_plus_two_steps_with_reward_at_query_only(horizon):
    env = gymnasium.make(GYM_ID, num_bits=4, horizon=horizon)
    steps = play_episode(env, seed=0)
    assert len(steps) - 1 == horizon + 2
    rewards = [s[1] for s in steps[1:]]
    assert rewards == [0.0] * (horizon + 1) + [1.0]
    assert [s[2] for s in steps[1:]] == [False] * (horizon + 1) + [True]
    assert [s[3]["success"] for s in steps[1:]] == [False] * (horizon + 1) + [True]
    # decision: the step to come is scored; true only on the observation of the query step
    assert [s[3]["decision"] for s in steps] == [False] * (horizon + 1) + [True, False]


def test_bits_visible_at_cue_step_only():
    env = DelayedMemoryGymEnv(num_bits=5, horizon=4, num_distractors=1)
    steps = play_episode(env, seed=1)
    target = steps[0][3]["target"]
    np.testing.assert_array_equal(steps[0][0][:5], [(target >> j) & 1 for j in range(5)])
    assert steps[0][0][5] == 1.0
    for obs, *_ in steps[1:]:
        assert (obs[:5] == 0).all() and obs[5] == 0.0
    assert [s[0][6] for s in steps] == [0.0] * 5 + [1.0, 0.0]


def test_wrong_answer_earns_minus_penalty():
    env = gymnasium.make(GYM_ID, num_bits=2, horizon=3, wrong_penalty=2.0)
    steps = play_episode(env, seed=2, answer=False)
    assert [s[1] for s in steps[1:]] == [0.0] * 4 + [-2.0]
    assert not steps[-1][3]["success"]


def test_same_seed_same_episodes_and_reset_continues_the_stream():
    env = DelayedMemoryGymEnv(num_bits=6, horizon=(1, 8), num_distractors=3)

    def episodes(seed):
        first = play_episode(env, seed=seed)
        return [first] + [play_episode(env) for _ in range(4)]

    def as_arrays(runs):
        return [np.stack([s[0] for s in run]) for run in runs]

    a, b = as_arrays(episodes(3)), as_arrays(episodes(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a[:-1], a[1:]))
    c = as_arrays(episodes(4))
    assert not all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, c))


def test_step_after_termination_or_before_reset_raises():
    env = DelayedMemoryGymEnv(num_bits=1, horizon=1)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(0)
    play_episode(env, seed=0)
    with pytest.raises(RuntimeError, match="after the episode terminated"):
        env.step(0)


@pytest.mark.parametrize(
    "action,error,message",
    [
        (16, ValueError, "action must be in 0..15, got 16"),
        (-1, ValueError, "action must be in 0..15, got -1"),
        (np.int64(16), ValueError, "got 16"),
        (1.0, TypeError, "action must be an integer in 0..15, got float 1.0"),
        (np.float32(1), TypeError, "got float32"),
        (True, TypeError, "got bool True"),
        (np.array([1]), ValueError, r"scalar .* got an array of shape \(1,\)"),
        (np.array(1.0), TypeError, "dtype float64"),
        ("1", TypeError, "got str '1'"),
    ],
    ids=repr,
)
def test_bad_action_raises_naming_the_value(action, error, message):
    env = DelayedMemoryGymEnv(num_bits=4, horizon=3)
    env.reset(seed=0)
    with pytest.raises(error, match=message):
        env.step(action)
    env.step(np.array(3))  # a 0-d integer array is fine


@pytest.mark.filterwarnings("ignore:.*not in the possible render_modes")
@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_bits": 0}, "num_bits must be an int in 1..16, got 0"),
        ({"num_bits": 17}, "num_bits must be an int in 1..16, got 17"),
        ({"horizon": 0}, "horizon must be in 1..2147483645, got 0"),
        ({"horizon": (4, 2)}, "low <= high, got low=4 > high=2"),
        ({"render_mode": "human"}, "render_mode must be None (nothing to render), got 'human'"),
    ],
    ids=str,
)
def test_bad_arguments_to_make_raise_naming_argument_and_value(kwargs, message):
    with pytest.raises(ValueError) as info:
        gymnasium.make(GYM_ID, **kwargs)
    assert message in str(info.value)


def test_make_vec_gives_the_vector_env_with_next_step_autoreset():
    envs = gymnasium.make_vec(GYM_ID, num_envs=6, num_bits=3, horizon=2)
    assert isinstance(envs, DelayedMemoryVectorEnv) and isinstance(envs, VectorEnv)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert envs.observation_space.shape == (6, 5) and envs.action_space.shape == (6,)
    obs, info = envs.reset(seed=0)
    assert obs.shape == (6, 5) and obs.dtype == np.float32 and obs in envs.observation_space
    envs.action_space.seed(0)
    for _ in range(9):
        obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
        assert obs in envs.observation_space
        assert reward.dtype == np.float32 and terminated.dtype == truncated.dtype == np.bool_
        assert set(info) == {"decision", "target", "success"}


def test_vector_env_next_step_autoreset_ignores_action_and_starts_next_episode():
    envs = DelayedMemoryVectorEnv(num_envs=4, num_bits=4, horizon=2, wrong_penalty=1.0)
    obs, info = envs.reset(seed=5)
    first_target = info["target"]
    # cue, 2 delay steps, query: 4 steps
    for _ in range(4):
        obs, reward, terminated, _, info = envs.step(info["target"])
    assert terminated.all() and (reward == 1.0).all() and info["success"].all()
    # the next step restarts every env; its (wrong) action earns nothing
    obs, reward, terminated, _, info = envs.step((info["target"] + 1) % 16)
    assert (reward == 0.0).all() and not terminated.any() and not info["success"].any()
    assert (obs[:, 4] == 1).all()
    np.testing.assert_array_equal(obs[:, :4], (info["target"][:, None] >> np.arange(4)) & 1)
    assert not np.array_equal(info["target"], first_target)


def test_vector_env_plays_what_the_torchrl_env_plays():
    kwargs = {"num_bits": 5, "horizon": (1, 4), "num_distractors": 2}
    envs = DelayedMemoryVectorEnv(num_envs=5, **kwargs)
    torch_env = DelayedMemoryEnv(num_envs=5, seed=6, **kwargs)
    obs, info = envs.reset(seed=6)
    td = torch_env.reset()
    # with the right answer, next-step autoreset makes each episode one step longer
    vector_obs = []
    for _ in range(40):
        vector_obs.append(obs)
        obs, _, _, _, info = envs.step(np.where(info["decision"], info["target"], 0))
    torch_obs = []
    for _ in range(40):
        torch_obs.append(td["observation"].numpy())
        decision = td["decision"].squeeze(-1)
        td["action"] = torch.where(decision, td["target"], 0)
        _, td = torch_env.step_and_maybe_reset(td)
    vector_obs, torch_obs = np.stack(vector_obs, 1), np.stack(torch_obs, 1)
    for i in range(5):
        # drop the terminal observations (all flags 0 after a query step) of the vector env
        terminal = np.r_[False, vector_obs[i, :-1, 6] == 1]
        kept = vector_obs[i][~terminal]
        np.testing.assert_array_equal(kept, torch_obs[i, : len(kept)])


def test_vector_env_partial_reset_through_reset_mask_leaves_others_untouched():
    envs = DelayedMemoryVectorEnv(num_envs=6, num_bits=3, horizon=(3, 7), num_distractors=2)
    ref = DelayedMemoryVectorEnv(num_envs=6, num_bits=3, horizon=(3, 7), num_distractors=2)
    obs, _ = envs.reset(seed=7)
    ref.reset(seed=7)
    action = np.zeros(6, dtype=np.int64)
    for _ in range(2):
        obs, *_ = envs.step(action)
        obs_ref, *_ = ref.step(action)
    mask = np.array([False, True, False, False, True, False])
    obs, info = envs.reset(options={"reset_mask": mask})
    np.testing.assert_array_equal(obs[~mask], obs_ref[~mask])
    assert (obs[mask, 3] == 1).all()
    for _ in range(20):
        obs, reward, *_ = envs.step(action)
        obs_ref, reward_ref, *_ = ref.step(action)
        np.testing.assert_array_equal(obs[~mask], obs_ref[~mask])
        np.testing.assert_array_equal(reward[~mask], reward_ref[~mask])


@pytest.mark.parametrize(
    "actions,error,message",
    [
        (np.array([0, 1, 8]), ValueError, r"actions must be in 0..7, got \[8\] at env indices \[2\]"),
        (np.array([-1, 1, 2]), ValueError, r"got \[-1\] at env indices \[0\]"),
        (np.array([0.0, 1.0, 2.0]), TypeError, "integer dtype, got float64"),
        (np.array([True, False, True]), TypeError, "got bool"),
        (np.array([[0], [1], [2]]), ValueError, r"shape \(3,\) .* got \(3, 1\)"),
        (np.array([0, 1]), ValueError, r"got \(2,\)"),
        (torch.tensor([0, 1, 2]), TypeError, "got a torch.Tensor"),
    ],
    ids=repr,
)
def test_vector_env_bad_actions_raise_naming_the_value(actions, error, message):
    envs = DelayedMemoryVectorEnv(num_envs=3, num_bits=3, horizon=2)
    envs.reset(seed=0)
    with pytest.raises(error, match=message):
        envs.step(actions)


def test_vector_env_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_envs must be an int >= 1, got 0"):
        DelayedMemoryVectorEnv(num_envs=0)
    with pytest.raises(ValueError, match="num_bits must be an int in 1..16, got 20"):
        gymnasium.make_vec(GYM_ID, num_envs=2, num_bits=20)
    envs = DelayedMemoryVectorEnv(num_envs=2, num_bits=1, horizon=1)
    with pytest.raises(RuntimeError, match="before reset"):
        envs.step(np.zeros(2, dtype=np.int64))
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=r"reset_mask'\] must be a bool array of shape \(2,\)"):
        envs.reset(options={"reset_mask": np.array([1, 0])})
    with pytest.raises(ValueError, match=r"unknown keys \['foo'\]"):
        envs.reset(options={"foo": 1})
    with pytest.raises(ValueError, match="seed must be an int or None, got 'a'"):
        envs.reset(seed="a")
