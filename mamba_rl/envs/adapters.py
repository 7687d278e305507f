"""The one protocol the trainer steps environments through, and its three implementations.

A :class:`BatchedEnv` is ``num_envs`` copies of one task stepped together with **same-step
autoreset**: where a step ends an episode, the observation it returns is the first one of the
next episode, and the last observation of the ended episode comes separately (``final_obs``),
so that a time-limit truncation can be bootstrapped from its value.

Protocol (duck-typed; :class:`BatchedEnv` documents it)::

    env.num_envs, env.obs_dim, env.device
    env.observation_space, env.action_space   # one copy's Gymnasium spaces (before flattening)
    env.device_resident   # True: reset/step are tensor ops on env.device, no host sync:
                          # the collector may torch.compile the step and capture it in a CUDA graph
    env.can_truncate      # False: truncated is always False and final_obs is None
    env.check_state(state)  # optional, device-resident envs: a state where one step ends episodes
    env.action_independent_observations  # optional; True: the env also has plan and score
    plan = env.plan(state, steps)             # an EnvPlan: the next steps, before any action
    reward, success = env.score(plan, action)  # [N, steps] each
    state, obs, decision = env.reset(seed)
    state, step = env.step(state, action)     # step: an EnvStep
    env.close()

``state`` is a ``dict[str, Tensor]`` the collector carries (and checkpoints) for a functional env;
host envs keep their state inside and use ``{}``. ``obs`` is float32 ``[N, obs_dim]``.
``decision [N]`` marks the steps whose action the env scores (``policy_mask_key="decision"``);
envs that do not mark steps return all True.

An env whose observations, flags and state never depend on the actions (only its rewards and
successes do) says so with ``action_independent_observations = True`` and implements ``plan``
and ``score``: the collector then plays a whole block of steps at once
(:class:`~mamba_rl.training.rollout.SequenceRolloutCollector`) instead of one step at a time.

Implementations:

- :class:`DelayedMemoryTask`: the memory task's functional core (device-resident).
- :class:`GymVectorEnv`: any Gymnasium id, ``gymnasium.make_vec`` sync or async.
- :class:`TorchRLBatchedEnv`: a TorchRL ``EnvBase`` from ``package.module:factory``.

:func:`make_env` picks one from a config's ``env`` string.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, NamedTuple, Protocol

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

from mamba_rl.envs.delayed_memory import (
    DelayedMemoryParams,
    DelayedMemoryState,
    _seed_key,
    delayed_memory_init,
    delayed_memory_observe,
    delayed_memory_reset,
    delayed_memory_score,
    delayed_memory_states_ahead,
    delayed_memory_step,
    mix32,
)
from mamba_rl.envs.spaces import EnvSpecError, UnsupportedSpaceError, check_action_space, flat_size, flatten_observation

__all__ = [
    "BatchedEnv",
    "DelayedMemoryTask",
    "EnvSpecError",
    "EnvPlan",
    "EnvStep",
    "GymVectorEnv",
    "MEMORY_ENV_ID",
    "TorchRLBatchedEnv",
    "episode_seed",
    "make_env",
]

MEMORY_ENV_ID = "mamba_rl/DelayedMemory-v0"


class EnvStep(NamedTuple):
    """What :meth:`BatchedEnv.step` returns besides the state; every tensor has leading dim ``N``.

    Attributes:
        obs: float32 ``[N, obs_dim]``, the observation the next action is taken on (a new
            episode's first where this step ended one).
        reward: float32 ``[N]``.
        terminated: bool ``[N]``, the episode reached a terminal state (no bootstrap).
        truncated: bool ``[N]``, the episode was cut (time limit): bootstrap from ``final_obs``.
        final_obs: float32 ``[N, obs_dim]``, the last observation of the episodes that ended here
            (rows where ``terminated | truncated``; others hold ``obs``); None if the env never truncates.
        decision: bool ``[N]``, the action taken on ``obs`` is scored.
        success: bool ``[N]``, the step just taken was scored and right (False for envs without
            such a notion).
    """

    obs: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_obs: torch.Tensor | None
    decision: torch.Tensor
    success: torch.Tensor


class EnvPlan(NamedTuple):
    """The next ``T`` steps of an env with ``action_independent_observations``, known before any
    action (what its ``plan`` returns); every tensor has leading dims ``[N, ...]``.

    Attributes:
        obs: float32 ``[N, T + 1, obs_dim]``, the observation each step's action is taken on;
            ``obs[:, T]`` the one after the last step (a new episode's first where step ``T - 1``
            ended one).
        decision: bool ``[N, T + 1]``, the action taken on ``obs`` is scored.
        terminated: bool ``[N, T]``, the step ends its episode.
        state: the env state after the ``T`` steps.
        scoring: what the env's ``score`` reads to reward the actions (the env's own business).
    """

    obs: torch.Tensor
    decision: torch.Tensor
    terminated: torch.Tensor
    state: dict[str, torch.Tensor]
    scoring: object


class BatchedEnv(Protocol):
    """``num_envs`` copies of a task with same-step autoreset (see the module docstring)."""

    num_envs: int
    obs_dim: int
    device: torch.device
    observation_space: spaces.Space
    action_space: spaces.Space
    device_resident: bool
    can_truncate: bool

    def reset(self, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]: ...

    def step(self, state: dict[str, torch.Tensor], action: torch.Tensor) -> tuple[dict[str, torch.Tensor], EnvStep]: ...

    def close(self) -> None: ...


def episode_seed(seed: int, episode: int) -> int:
    """A 31-bit env seed for episode ``episode`` of a run seeded ``seed``: the same episode whatever
    the number of envs that run the episodes in parallel."""
    return mix32(mix32(int(seed) & 0xFFFFFFFF) ^ (int(episode) & 0xFFFFFFFF)) & 0x7FFFFFFF


# --------------------------------------------------------------------------------------------
# The memory task (device-resident)


class DelayedMemoryTask:
    """The delayed memory task's functional core as a :class:`BatchedEnv` (device-resident, never truncates).

    The state is :class:`~mamba_rl.envs.DelayedMemoryState` as a dict; ``step`` is
    :func:`~mamba_rl.envs.delayed_memory_step`.

    Args:
        params: the task.
        num_envs: copies.
        device: where the state lives (None: the CPU).
        autoreset: start the next episode where one ends (training); False plays one episode per
            copy, a finished copy then staying terminal (reward 0, not scored: evaluation).
        first_env: copy ``i`` draws from the stream of ``(seed, first_env + i)``, so that episode
            ``k`` of an evaluation is the same whatever batch of copies plays it.
    """

    device_resident = True
    can_truncate = False
    action_independent_observations = True
    """The promise :meth:`plan` rests on: the observations, ``decision``, ``terminated`` and the env
    state after any number of steps do not depend on the actions taken (the episodes are hashes of
    the seed, the env and the episode counter, and an episode ends at its query step whatever the
    answer); only the reward and the success do, and :meth:`score` gives them from the actions."""

    def __init__(
        self, params: DelayedMemoryParams, num_envs: int, device, *, autoreset: bool = True, first_env: int = 0
    ) -> None:
        self.params = params
        self.num_envs = num_envs
        self.device = torch.device("cpu" if device is None else device)
        self.autoreset = autoreset
        self.first_env = int(first_env)
        self.obs_dim = params.obs_dim
        self.observation_space = spaces.Box(0.0, 1.0, (params.obs_dim,), np.float32)
        self.action_space = spaces.Discrete(params.num_actions)

    def reset(self, seed: int):
        state = delayed_memory_init(self.num_envs, self.params, seed, self.device)
        if self.first_env:
            index = self.first_env + torch.arange(self.num_envs, dtype=torch.int64, device=self.device)
            state = state._replace(stream=mix32(index ^ _seed_key(seed)))
        state = delayed_memory_reset(state, None, self.params)
        obs, decision = delayed_memory_observe(state, self.params)
        return {name: value.clone() for name, value in state._asdict().items()}, obs, decision

    def step(self, state, action):
        env_state = DelayedMemoryState(**{name: state[name] for name in DelayedMemoryState._fields})
        env_state, obs, reward, done, decision, success = delayed_memory_step(
            env_state, action, self.params, autoreset=self.autoreset
        )
        return env_state._asdict(), EnvStep(obs, reward, done, torch.zeros_like(done), None, decision, success)

    def plan(self, state, steps: int) -> EnvPlan:
        """The next ``steps`` steps from ``state`` (:func:`~mamba_rl.envs.delayed_memory_states_ahead`,
        observed by :func:`~mamba_rl.envs.delayed_memory_observe`): bit for bit what ``steps``
        calls of :meth:`step` give, whatever the actions."""
        now = DelayedMemoryState(**{name: state[name] for name in DelayedMemoryState._fields})
        ahead = delayed_memory_states_ahead(now, steps, self.params, self.autoreset)
        n = self.num_envs
        obs, decision = delayed_memory_observe(DelayedMemoryState(*(value.reshape(-1) for value in ahead)), self.params)
        # [N, T]: the states the steps are taken in
        taken = DelayedMemoryState(*(value[:, :steps] for value in ahead))
        return EnvPlan(
            obs.view(n, steps + 1, -1),
            decision.view(n, steps + 1),
            taken.t >= taken.horizon + 1,
            {name: value[:, steps].contiguous() for name, value in ahead._asdict().items()},
            taken,
        )

    def score(self, plan: EnvPlan, action: torch.Tensor):
        """``(reward, success)`` ``[N, T]`` of the actions ``[N, T]`` taken in ``plan``'s steps
        (:func:`~mamba_rl.envs.delayed_memory_score`, the rule :meth:`step` applies)."""
        return delayed_memory_score(plan.scoring, action, self.params)

    def check_state(self, state):
        """``state`` with every env at its query step, so that one step ends and restarts every
        episode (the collector checks its compiled step on it)."""
        return dict(state, t=state["horizon"] + 1)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# Host envs: actions to the env's format


def _to_env_action(space: spaces.Space, action: torch.Tensor) -> np.ndarray:
    """The head's action ``[N]`` / ``[N, D]`` as the batched numpy action of ``space``."""
    array = action.detach().cpu().numpy()
    if isinstance(space, spaces.Discrete):
        return (array + int(space.start)).astype(space.dtype)
    if isinstance(space, spaces.MultiDiscrete):
        return (array + np.asarray(space.start)).astype(space.dtype)
    return np.clip(array, space.low, space.high).astype(space.dtype)


def _check_obs(space: spaces.Space, obs, num_envs: int, where: str) -> None:
    """The batched ``obs`` belongs to ``num_envs`` copies of ``space``, else an :class:`EnvSpecError`."""
    try:
        items = list(gymnasium.vector.utils.iterate(gymnasium.vector.utils.batch_space(space, num_envs), obs))
        bad = next((i for i, item in enumerate(items) if not space.contains(item)), None)
    except Exception as err:  # a malformed batch cannot even be iterated
        raise EnvSpecError(
            f"the env's {where} returned an observation outside its observation space {space}: {err}"
        ) from err
    if len(items) != num_envs or bad is not None:
        item = items[bad] if bad is not None else obs
        raise EnvSpecError(
            f"the env's {where} returned an observation outside its observation space {space}: "
            f"{item!r}" + (f" (env {bad})" if bad is not None else "")
        )


class GymVectorEnv:
    """A Gymnasium id as a :class:`BatchedEnv`: ``gymnasium.make_vec(id, num_envs, ...)``.

    The vector env runs with ``AutoresetMode.DISABLED`` and this class resets the envs whose
    episode ended in the same step (``reset(options={"reset_mask": done})``): the final
    observation is what the step returned, the next one what the reset returned, so no mode's
    conventions need decoding. Each reset is seeded: the ``k``-th episode started by this env
    (counting across copies in index order) gets :func:`episode_seed` ``(seed, k)``, unless
    ``episode_seeds`` is set: then it is called with the number of episodes to start and returns
    their seeds (evaluation uses it to give episode ``i`` the same seed whatever ``num_envs``).

    Args:
        env_id: a registered id (unknown ids raise, naming the closest registered ones).
        num_envs: copies.
        env_kwargs: passed to every copy's constructor.
        vectorization: ``"sync"`` (one process) or ``"async"`` (one process per copy).
        device: where observations are put.
        check: check every observation against the observation space (the first reset and
            step are always checked).
    """

    device_resident = False
    can_truncate = True

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        env_kwargs: dict | None = None,
        vectorization: str = "sync",
        device="cpu",
        check: bool = False,
    ) -> None:
        if env_id not in gymnasium.registry:
            close = difflib.get_close_matches(env_id, list(gymnasium.registry), n=5, cutoff=0.5)
            hint = f"; closest registered ids: {', '.join(close)}" if close else ""
            popgym = ""
            if env_id.startswith("popgym"):
                popgym = " (POPGym ids need `pip install popgym` and `import popgym`)"
            raise EnvSpecError(f"env {env_id!r} is not a registered Gymnasium id{hint}{popgym}")
        if vectorization not in ("sync", "async"):
            raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
        kwargs = dict(env_kwargs or {})
        try:
            self.vec = gymnasium.make_vec(
                env_id,
                num_envs=num_envs,
                vectorization_mode=vectorization,
                vector_kwargs={"autoreset_mode": gymnasium.vector.AutoresetMode.DISABLED},
                **kwargs,
            )
        except (TypeError, ValueError, AssertionError) as err:
            # a constructor refuses an unknown keyword (TypeError) or a bad value (ValueError, assert)
            what = f"rejected env_kwargs {kwargs}" if kwargs else "could not be made (no env_kwargs given)"
            raise EnvSpecError(f"env {env_id!r} {what}: {err}") from err
        self.env_id = env_id
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.observation_space = self.vec.single_observation_space
        self.action_space = check_action_space(self.vec.single_action_space)
        self.obs_dim = flat_size(self.observation_space)
        self.check = check
        self.episode_seeds: Callable[[int], list[int]] | None = None
        self._seed = 0
        self._started = 0
        self._true = torch.ones(num_envs, dtype=torch.bool, device=self.device)
        self._false = torch.zeros(num_envs, dtype=torch.bool, device=self.device)

    def _seeds(self, count: int) -> list[int]:
        if self.episode_seeds is not None:
            return list(self.episode_seeds(count))
        seeds = [episode_seed(self._seed, self._started + k) for k in range(count)]
        self._started += count
        return seeds

    def _obs(self, obs, where: str, check: bool) -> torch.Tensor:
        if check:
            _check_obs(self.observation_space, obs, self.num_envs, where)
        return flatten_observation(self.observation_space, obs, self.device)

    def reset(self, seed: int):
        self._seed, self._started = int(seed), 0
        obs, _ = self.vec.reset(seed=self._seeds(self.num_envs))
        self._steps = 0
        return {}, self._obs(obs, "reset", True), self._true

    def step(self, state, action):
        obs, reward, terminated, truncated, _ = self.vec.step(_to_env_action(self.action_space, action))
        self._steps += 1
        reward = np.asarray(reward)
        if reward.shape != (self.num_envs,) or not np.isfinite(reward).all():
            raise EnvSpecError(f"the env's step returned rewards {reward!r}; expected {self.num_envs} finite numbers")
        final_obs = self._obs(obs, "step", self.check or self._steps == 1)
        done = np.logical_or(terminated, truncated)
        next_obs = final_obs
        if done.any():
            mask = np.asarray(done, dtype=np.bool_)
            seeds = [None] * self.num_envs
            for i, s in zip(np.flatnonzero(mask), self._seeds(int(mask.sum()))):
                seeds[i] = s
            reset_obs, _ = self.vec.reset(seed=seeds, options={"reset_mask": mask})
            reset_obs = self._obs(reset_obs, "reset", self.check)
            next_obs = torch.where(torch.as_tensor(mask, device=self.device)[:, None], reset_obs, final_obs)
        step = EnvStep(
            next_obs,
            torch.as_tensor(reward, dtype=torch.float32, device=self.device),
            torch.as_tensor(np.asarray(terminated, dtype=np.bool_), device=self.device),
            torch.as_tensor(np.asarray(truncated, dtype=np.bool_), device=self.device),
            final_obs,
            self._true,
            self._false,
        )
        return state, step

    def close(self) -> None:
        self.vec.close()


# --------------------------------------------------------------------------------------------
# TorchRL envs


def _spec_to_space(spec, what: str) -> spaces.Space:
    """A TorchRL leaf spec (one env's shape) as the Gymnasium space a head or the flattening takes."""
    from torchrl.data import Binary, Bounded, Categorical, MultiCategorical, MultiOneHot, OneHot, Unbounded

    shape = tuple(spec.shape)
    if isinstance(spec, OneHot):
        return spaces.Discrete(int(spec.space.n))
    if isinstance(spec, Categorical) and shape in ((), (1,)):
        return spaces.Discrete(int(spec.space.n))
    if isinstance(spec, (MultiCategorical, MultiOneHot)):
        return spaces.MultiDiscrete(np.asarray(spec.nvec).reshape(-1))
    if isinstance(spec, Binary):
        return spaces.MultiBinary(shape)
    if isinstance(spec, Bounded) and spec.dtype.is_floating_point:
        return spaces.Box(spec.space.low.cpu().numpy(), spec.space.high.cpu().numpy(), shape, np.float32)
    if isinstance(spec, Unbounded) and spec.dtype.is_floating_point and what == "observation":
        return spaces.Box(-np.inf, np.inf, shape, np.float32)
    raise UnsupportedSpaceError(
        f"{what} spec {type(spec).__name__}(shape={list(shape)}, dtype={spec.dtype}) is not "
        "supported; supported: OneHot, Categorical, MultiCategorical, bounded float actions; "
        "float, Categorical, OneHot and Binary observations"
    )


class TorchRLBatchedEnv:
    """A TorchRL ``EnvBase`` as a :class:`BatchedEnv`, stepped with ``step_and_maybe_reset``.

    ``factory`` is an import path ``"package.module:function"``; ``function(num_envs=..., device=...,
    **env_kwargs)`` must return an ``EnvBase`` with ``batch_size == [num_envs]`` (a ``ParallelEnv``
    or a natively batched env). Every float/categorical leaf of its observation spec is flattened
    and concatenated (in sorted key order); the action comes from its single action key. Keys
    ``"decision"`` and ``"success"`` in the step's output, when present, are used as the memory
    task uses them.
    """

    device_resident = False
    can_truncate = True

    def __init__(self, factory: str, num_envs: int, env_kwargs: dict | None = None, device="cpu") -> None:
        from torchrl.envs import EnvBase
        from torchrl.envs.utils import check_env_specs

        fn = _import_factory(factory)
        kwargs = dict(env_kwargs or {})
        try:
            env = fn(num_envs=num_envs, device=device, **kwargs)
        except (TypeError, ValueError) as err:
            raise EnvSpecError(
                f"env factory {factory!r} rejected its arguments (num_envs={num_envs}, device, "
                f"env_kwargs {kwargs}): {err}"
            ) from err
        if not isinstance(env, EnvBase):
            raise EnvSpecError(f"env factory {factory!r} must return a torchrl EnvBase, got {type(env).__name__}")
        if tuple(env.batch_size) != (num_envs,):
            raise EnvSpecError(
                f"env factory {factory!r} must return an env with batch_size [{num_envs}], got {list(env.batch_size)}"
            )
        try:
            # a short rollout whose every entry must fit the env's own specs
            check_env_specs(env, seed=0)
        except (AssertionError, ValueError, RuntimeError, KeyError) as err:
            raise EnvSpecError(
                f"env factory {factory!r}: the env's reset/step output does not match its own "
                f"specs (torchrl.envs.utils.check_env_specs): {err}"
            ) from err
        self.env = env
        self.num_envs = num_envs
        self.device = torch.device(device)
        obs_spec = env.observation_spec
        self.obs_keys = sorted(k for k in obs_spec.keys(True, True) if k not in ("decision", "success", "target"))
        leaves = {
            key: _spec_to_space(
                obs_spec[key][0] if obs_spec[key].shape[:1] == (num_envs,) else obs_spec[key], "observation"
            )
            for key in self.obs_keys
        }
        self.observation_space = spaces.Dict({str(k): v for k, v in leaves.items()})
        self._leaf_spaces = leaves
        if len(env.action_keys) != 1:
            raise EnvSpecError(f"env factory {factory!r}: expected one action key, got {env.action_keys}")
        self.action_key = env.action_keys[0]
        action_spec = env.full_action_spec[self.action_key]
        self._one_hot_action = type(action_spec).__name__ == "OneHot"
        if type(action_spec).__name__ == "MultiOneHot":
            raise UnsupportedSpaceError(
                f"env factory {factory!r}: MultiOneHot actions are not supported; use "
                "MultiCategorical, OneHot, Categorical or bounded float actions"
            )
        self._action_spec = action_spec
        self.action_space = check_action_space(_spec_to_space(action_spec[0], "action"))
        self.obs_dim = sum(flat_size(space) for space in leaves.values())
        self._td = None
        self._true = torch.ones(num_envs, dtype=torch.bool, device=self.device)
        self._false = torch.zeros(num_envs, dtype=torch.bool, device=self.device)

    def _obs(self, td) -> torch.Tensor:
        parts = []
        for key in self.obs_keys:
            space, value = self._leaf_spaces[key], td.get(key)
            if isinstance(space, spaces.Discrete) and value.shape[-1:] == (space.n,):
                parts.append(value.reshape(self.num_envs, -1).float().to(self.device))
            else:
                parts.append(
                    flatten_observation(
                        space,
                        value.reshape(self.num_envs, *space.shape).cpu().numpy()
                        if not isinstance(space, (spaces.Discrete, spaces.MultiDiscrete))
                        else value.reshape(self.num_envs, -1).cpu().numpy(),
                        self.device,
                    )
                )
        return torch.cat(parts, -1)

    def _flag(self, td, key, default):
        value = td.get(key, None)
        return default if value is None else value.reshape(self.num_envs).to(self.device, torch.bool)

    def reset(self, seed: int):
        self.env.set_seed(int(seed))
        self._td = self.env.reset()
        return {}, self._obs(self._td), self._flag(self._td, "decision", self._true)

    def step(self, state, action):
        td = self._td
        if self._one_hot_action:
            action = torch.nn.functional.one_hot(action, int(self.action_space.n))
        elif isinstance(self.action_space, spaces.Box):
            low = torch.as_tensor(self.action_space.low, device=action.device)
            high = torch.as_tensor(self.action_space.high, device=action.device)
            action = torch.maximum(torch.minimum(action, high), low)
        td.set(self.action_key, action.reshape(self._action_spec.shape).to(self.env.device, self._action_spec.dtype))
        td, next_root = self.env.step_and_maybe_reset(td)
        nxt = td.get("next")
        reward = nxt.get("reward").reshape(self.num_envs).float().to(self.device)
        terminated = self._flag(nxt, "terminated", None)
        if terminated is None:
            terminated = self._flag(nxt, "done", self._false)
        truncated = self._flag(nxt, "truncated", self._false)
        final_obs = self._obs(nxt)
        self._td = next_root
        step = EnvStep(
            self._obs(next_root),
            reward,
            terminated,
            truncated & ~terminated,
            final_obs,
            self._flag(next_root, "decision", self._true),
            self._flag(nxt, "success", self._false),
        )
        return state, step

    def close(self) -> None:
        if not self.env.is_closed:
            self.env.close()


def _import_factory(path: str) -> Callable:
    module_name, _, name = path.partition(":")
    if not module_name or not name:
        raise EnvSpecError(f"a TorchRL env is named 'package.module:factory', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise EnvSpecError(f"env factory {path!r}: cannot import {module_name!r}: {err}") from err
    if not hasattr(module, name):
        raise EnvSpecError(f"env factory {path!r}: module {module_name!r} has no attribute {name!r}")
    return getattr(module, name)


def make_env(
    env: str,
    num_envs: int,
    device,
    *,
    env_kwargs: dict | None = None,
    vectorization: str = "sync",
    memory_params: DelayedMemoryParams | None = None,
) -> BatchedEnv:
    """The :class:`BatchedEnv` a config's ``env`` names: the memory task (``mamba_rl/DelayedMemory-v0``,
    its parameters in ``memory_params``), a TorchRL factory ``"package.module:function"``, or a
    Gymnasium id (POPGym ids import ``popgym`` first)."""
    if env == MEMORY_ENV_ID:
        if memory_params is None:
            raise ValueError(f"env {MEMORY_ENV_ID!r} needs memory_params")
        return DelayedMemoryTask(memory_params, num_envs, device)
    if ":" in env and env.rpartition(":")[2].isidentifier():
        return TorchRLBatchedEnv(env, num_envs, env_kwargs, device)
    if env.startswith("popgym"):
        try:
            import popgym  # noqa: F401  (registers the popgym-* ids)
        except ImportError as err:
            raise EnvSpecError(f"env {env!r} needs the popgym package: pip install 'mamba-rl[popgym]'") from err
    return GymVectorEnv(env, num_envs, env_kwargs, vectorization, device)
