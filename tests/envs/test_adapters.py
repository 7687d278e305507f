"""The env adapters: same-step autoreset with the final observation kept apart, terminated vs
truncated, observation flattening, and the errors for bad env input."""

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces

from mamba_rl.envs.adapters import EnvSpecError, GymVectorEnv, TorchRLBatchedEnv, make_env
from mamba_rl.envs.spaces import UnsupportedSpaceError, flat_size, flatten_observation


class Countdown(gymnasium.Env):
    """Observation ``[steps taken / length, 1]``, reward 1 a step; after ``length`` steps the episode
    terminates (``end="terminate"``) or is cut by the time limit (``end="truncate"``)."""

    observation_space = spaces.Box(0.0, 1.0, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, length=3, end="truncate", bad_obs=False):
        self.length, self.end, self.bad_obs = length, end, bad_obs

    def _obs(self):
        return np.array([self.t / self.length, 2.0 if self.bad_obs else 1.0], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        last = self.t == self.length
        return self._obs(), 1.0, last and self.end == "terminate", last and self.end == "truncate", {}


ID = "mamba_rl_test/Countdown-v0"
if ID not in gymnasium.registry:
    gymnasium.register(ID, entry_point=Countdown)


@pytest.mark.parametrize("end", ["terminate", "truncate"])
def test_gym_adapter_resets_in_the_same_step_and_keeps_the_final_observation(end):
    env = GymVectorEnv(ID, 2, {"length": 3, "end": end})
    _, obs, _ = env.reset(0)
    torch.testing.assert_close(obs, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    for _ in range(2):
        _, step = env.step({}, torch.zeros(2, dtype=torch.int64))
        assert not step.terminated.any() and not step.truncated.any()
    _, step = env.step({}, torch.zeros(2, dtype=torch.int64))
    assert bool(step.terminated.all()) == (end == "terminate")
    assert bool(step.truncated.all()) == (end == "truncate")
    # the step's final observation is the episode's last; the next observation a new episode's first
    torch.testing.assert_close(step.final_obs, torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
    torch.testing.assert_close(step.obs, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    env.close()


def test_observation_flattening_one_hots_discrete_parts_of_dict_and_tuple_spaces():
    space = spaces.Dict(
        {"a": spaces.Discrete(4), "b": spaces.Tuple((spaces.Box(-1, 1, (2, 2)), spaces.MultiDiscrete([2, 3])))}
    )
    assert flat_size(space) == 4 + 4 + 5
    obs = {"a": np.array([3, 0]), "b": (np.arange(8, dtype=np.float32).reshape(2, 2, 2), np.array([[1, 2], [0, 0]]))}
    flat = flatten_observation(space, obs, torch.device("cpu"))
    expected = torch.tensor(
        [[0, 0, 0, 1, 0, 1, 2, 3, 0, 1, 0, 0, 1], [1, 0, 0, 0, 4, 5, 6, 7, 1, 0, 1, 0, 0]], dtype=torch.float32
    )
    torch.testing.assert_close(flat, expected)


def test_popgym_discrete_observation_is_one_hot():
    pytest.importorskip("popgym")
    env = make_env("popgym-RepeatFirstEasy-v0", 3, "cpu")
    assert isinstance(env.observation_space, spaces.Discrete) and env.obs_dim == env.observation_space.n
    _, obs, _ = env.reset(0)
    assert obs.shape == (3, env.obs_dim) and torch.equal(obs.sum(-1), torch.ones(3))
    env.close()


def test_unknown_id_names_the_closest_registered_ids():
    with pytest.raises(EnvSpecError, match="closest registered ids: CartPole-v1"):
        make_env("CartPole-v9", 2, "cpu")


def test_env_kwargs_the_env_rejects_are_named():
    with pytest.raises(EnvSpecError, match="rejected env_kwargs .*'colour'"):
        make_env("CartPole-v1", 2, "cpu", env_kwargs={"colour": "red"})


def test_unsupported_action_space_is_named_with_what_is_supported():
    class TextActions(Countdown):
        action_space = spaces.Text(5)

    gymnasium.register("mamba_rl_test/TextActions-v0", entry_point=TextActions)
    with pytest.raises(UnsupportedSpaceError, match=r"action space Text\(.*supported: Discrete, MultiDiscrete"):
        make_env("mamba_rl_test/TextActions-v0", 2, "cpu")


def test_an_observation_outside_the_envs_own_space_is_an_error():
    env = GymVectorEnv(ID, 2, {"bad_obs": True})
    with pytest.raises(EnvSpecError, match="reset returned an observation outside its observation space"):
        env.reset(0)
    env.close()


def test_torchrl_factory_path_errors_name_the_path():
    with pytest.raises(EnvSpecError, match="has no attribute 'nope'"):
        make_env("mamba_rl.envs:nope", 2, "cpu")
    with pytest.raises(EnvSpecError, match="cannot import 'no_such_module'"):
        make_env("no_such_module:factory", 2, "cpu")


def memory_factory(num_envs, device, horizon=3):
    from mamba_rl.envs import DelayedMemoryEnv

    return DelayedMemoryEnv(num_envs, num_bits=2, horizon=horizon, device=device, seed=0)


def test_torchrl_adapter_steps_an_envbase_with_step_and_maybe_reset():
    env = make_env(f"{__name__}:memory_factory", 3, "cpu", env_kwargs={"horizon": 2})
    assert isinstance(env, TorchRLBatchedEnv) and env.action_space == spaces.Discrete(4)
    _, obs, decision = env.reset(0)
    assert obs.shape == (3, env.obs_dim) and not decision.any()
    rewards, ends = [], []
    for _ in range(4):
        _, step = env.step({}, torch.zeros(3, dtype=torch.int64))
        rewards.append(step.reward)
        ends.append(step.terminated)
    # cue, 2 delays, query: the 4th step ends every episode, and only it is rewarded (or not)
    assert [bool(e.any()) for e in ends] == [False, False, False, True] and bool(ends[-1].all())
    assert not torch.stack(rewards[:3]).any()
    env.close()


class BadStep(Countdown):
    """Countdown whose steps break its own spaces: an observation outside them (``bad="obs"``) or a NaN
    reward (``bad="reward"``); its reset is fine."""

    def __init__(self, bad="obs"):
        super().__init__(length=3)
        self.bad = bad

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if self.bad == "obs":
            obs = obs + 5.0
        return obs, float("nan") if self.bad == "reward" else reward, terminated, truncated, info


class Picky(Countdown):
    """Countdown whose constructor refuses a bad value (as many envs do, with a ValueError)."""

    def __init__(self, length=3):
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        super().__init__(length=length)


for _name, _entry in (("BadStep", BadStep), ("Picky", Picky)):
    if f"mamba_rl_test/{_name}-v0" not in gymnasium.registry:
        gymnasium.register(f"mamba_rl_test/{_name}-v0", entry_point=_entry)


def test_unsupported_observation_space_is_named_with_what_is_supported():
    class TextObservations(Countdown):
        observation_space = spaces.Text(5)

    gymnasium.register("mamba_rl_test/TextObservations-v0", entry_point=TextObservations)
    with pytest.raises(UnsupportedSpaceError, match=r"observation space Text\(.*supported: Box, Discrete"):
        make_env("mamba_rl_test/TextObservations-v0", 2, "cpu")


@pytest.mark.parametrize(
    "bad, message",
    [
        ("obs", "step returned an observation outside its observation space"),
        ("reward", "step returned rewards .*expected 2 finite numbers"),
    ],
)
def test_a_step_that_breaks_the_envs_own_spec_is_an_error(bad, message):
    env = make_env("mamba_rl_test/BadStep-v0", 2, "cpu", env_kwargs={"bad": bad})
    env.reset(0)
    with pytest.raises(EnvSpecError, match=message):
        env.step({}, torch.zeros(2, dtype=torch.int64))
    env.close()


def test_an_env_kwarg_value_the_env_refuses_is_named():
    with pytest.raises(EnvSpecError, match=r"rejected env_kwargs \{'length': 0\}: length must be >= 1, got 0"):
        make_env("mamba_rl_test/Picky-v0", 2, "cpu", env_kwargs={"length": 0})


def broken_spec_factory(num_envs, device):
    from mamba_rl.envs import DelayedMemoryEnv

    class WideObservations(DelayedMemoryEnv):
        """Its steps return one observation feature more than its observation spec holds."""

        def _step(self, tensordict):
            out = super()._step(tensordict)
            return out.set("observation", torch.cat([out["observation"], out["observation"][:, :1]], -1))

    return WideObservations(num_envs, num_bits=2, horizon=2, device=device, seed=0)


def test_torchrl_env_kwargs_the_factory_rejects_are_named():
    with pytest.raises(EnvSpecError, match=r"rejected its arguments .*env_kwargs \{'colour': 'red'\}"):
        make_env(f"{__name__}:memory_factory", 2, "cpu", env_kwargs={"colour": "red"})


def test_torchrl_env_whose_output_breaks_its_own_specs_is_an_error():
    with pytest.raises(EnvSpecError, match="does not match its own specs"):
        make_env(f"{__name__}:broken_spec_factory", 2, "cpu")
