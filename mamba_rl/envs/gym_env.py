"""The Gymnasium face of the delayed multi-bit memory task.

- :class:`DelayedMemoryGymEnv`: one environment, registered as ``"mamba_rl/DelayedMemory-v0"``
  (``gymnasium.make("mamba_rl/DelayedMemory-v0", num_bits=4, horizon=1000)``).
- :class:`DelayedMemoryVectorEnv`: ``num_envs`` environments batched in torch, a
  :class:`gymnasium.vector.VectorEnv` with next-step autoreset; the id's
  ``vector_entry_point`` (``gymnasium.make_vec("mamba_rl/DelayedMemory-v0", num_envs=64)``).

Both wrap the functional core of :mod:`mamba_rl.envs.delayed_memory` (same task, same
episodes for the same seed: environment ``i`` of a vector env seeded ``s`` plays what
``DelayedMemoryEnv(..., seed=s)``'s environment ``i`` plays, and a single env reset with
``seed=s`` plays what environment 0 plays).
"""

from __future__ import annotations

import numbers
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from mamba_rl.envs.delayed_memory import (
    DelayedMemoryParams,
    delayed_memory_init,
    delayed_memory_observe,
    delayed_memory_reset,
    delayed_memory_step,
)

__all__ = ["DelayedMemoryGymEnv", "DelayedMemoryVectorEnv"]


def _check_render_mode(render_mode) -> None:
    if render_mode is not None:
        raise ValueError(f"render_mode must be None (nothing to render), got {render_mode!r}")


def _draw_seed(np_random: np.random.Generator) -> int:
    return int(np_random.integers(0, 2**63 - 1))


def _check_seed(seed) -> None:
    if seed is not None and (not isinstance(seed, numbers.Integral) or isinstance(seed, bool)):
        raise ValueError(f"seed must be an int or None, got {seed!r}")


class DelayedMemoryGymEnv(gymnasium.Env):
    """One delayed multi-bit memory environment (numpy in and out).

    Args:
        num_bits: bits to remember, ``1 .. 16``.
        horizon: delay steps, an int ``>= 1`` or ``(low, high)`` drawn per episode.
        num_distractors: fair-coin noise channels appended to the observation.
        wrong_penalty: a wrong answer earns ``-wrong_penalty``.
        horizon_sampling: ``"uniform"`` or ``"log_uniform"`` draw of a ``(low, high)`` horizon
            (:class:`DelayedMemoryParams`).
        render_mode: must be None.

    Spaces: observation ``Box(0, 1, (obs_dim,), float32)`` laid out
    ``[bits | cue | query | distractors]``; action ``Discrete(2**num_bits)``.

    An episode is ``horizon + 2`` steps: the cue step shows the bits, the delay steps do not,
    and the action at the query step is scored (reward 1 if it equals the bits' integer code
    ``sum(bits[j] << j)``, else ``-wrong_penalty``), which terminates the episode. It is never
    truncated. Stepping after termination without ``reset()`` raises.

    Info (at reset and every step): ``"decision"`` (bool, the next action will be scored),
    ``"target"`` (int, the episode's code; a policy must not read it); at every step also
    ``"success"`` (bool, the step just taken was scored and right).

    Seeding: ``reset(seed=s)`` restarts the episode stream of ``s``; ``reset()`` plays the next
    episode of the current stream (a stream drawn from ``np_random`` if never seeded).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        num_bits: int = 4,
        horizon: int | tuple[int, int] = 1000,
        num_distractors: int = 0,
        wrong_penalty: float = 0.0,
        horizon_sampling: str = "uniform",
        render_mode: str | None = None,
    ):
        _check_render_mode(render_mode)
        self.render_mode = None
        self.params = DelayedMemoryParams(
            num_bits=num_bits,
            horizon=horizon,
            num_distractors=num_distractors,
            wrong_penalty=wrong_penalty,
            horizon_sampling=horizon_sampling,
        )
        self.observation_space = spaces.Box(0.0, 1.0, shape=(self.params.obs_dim,), dtype=np.float32)
        self.action_space = spaces.Discrete(self.params.num_actions)
        self._state = None
        self._terminated = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        _check_seed(seed)
        if options:
            raise ValueError(f"options must be None or empty (none are supported), got {options!r}")
        super().reset(seed=seed)
        if seed is not None or self._state is None:
            stream_seed = seed if seed is not None else _draw_seed(self.np_random)
            self._state = delayed_memory_init(1, self.params, stream_seed)
        self._state = delayed_memory_reset(self._state, None, self.params)
        self._terminated = False
        observation, decision = delayed_memory_observe(self._state, self.params)
        info = {"decision": bool(decision[0]), "target": int(self._state.target[0])}
        return observation[0].numpy(), info

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("step() called before reset(): call reset() first")
        if self._terminated:
            raise RuntimeError("step() called after the episode terminated (at its query step): call reset()")
        action = _scalar_action(action, self.params.num_actions)
        result = delayed_memory_step(self._state, torch.tensor([action], dtype=torch.int64), self.params)
        self._state = result.state
        self._terminated = bool(result.done[0])
        info = {
            "decision": bool(result.decision[0]),
            "target": int(self._state.target[0]),
            "success": bool(result.success[0]),
        }
        return result.observation[0].numpy(), float(result.reward[0]), self._terminated, False, info


def _scalar_action(action, num_actions: int) -> int:
    """An int in ``0 .. num_actions - 1`` from a Python/numpy integer or a 0-d integer array."""
    if isinstance(action, np.ndarray):
        if action.shape != ():
            raise ValueError(f"action must be a scalar (one category index), got an array of shape {action.shape}")
        if not np.issubdtype(action.dtype, np.integer):
            raise TypeError(f"action must be an integer, got an array of dtype {action.dtype}")
        action = action.item()
    if isinstance(action, (bool, np.bool_)) or not isinstance(action, numbers.Integral):
        raise TypeError(f"action must be an integer in 0..{num_actions - 1}, got {type(action).__name__} {action!r}")
    action = int(action)
    if not 0 <= action < num_actions:
        raise ValueError(f"action must be in 0..{num_actions - 1}, got {action}")
    return action


def _batch_action(actions, num_envs: int, num_actions: int) -> np.ndarray:
    """An int64 array ``(num_envs,)`` from an integer array-like, checked, never clipped."""
    if isinstance(actions, torch.Tensor):
        raise TypeError("actions must be a numpy array of integers, got a torch.Tensor")
    actions = np.asarray(actions)
    if actions.dtype == np.bool_ or not np.issubdtype(actions.dtype, np.integer):
        raise TypeError(f"actions must have an integer dtype, got {actions.dtype}")
    if actions.shape != (num_envs,):
        raise ValueError(
            f"actions must have shape ({num_envs},) (one category index per environment), got {actions.shape}"
        )
    bad = (actions < 0) | (actions >= num_actions)
    if bad.any():
        index = np.flatnonzero(bad)[:5]
        raise ValueError(
            f"actions must be in 0..{num_actions - 1}, got {actions[index].tolist()} at env indices {index.tolist()}"
        )
    return actions.astype(np.int64, copy=False)


class DelayedMemoryVectorEnv(VectorEnv):
    """``num_envs`` delayed multi-bit memory environments batched in torch (numpy in and out).

    Args:
        num_envs: ``N >= 1``.
        num_bits, horizon, num_distractors, wrong_penalty, horizon_sampling: as in
            :class:`DelayedMemoryGymEnv`.
        device: where the torch state lives (default CPU); inputs and outputs are numpy.
        render_mode: must be None.

    Spaces: ``single_observation_space = Box(0, 1, (obs_dim,), float32)``,
    ``single_action_space = Discrete(2**num_bits)``; batched ``observation_space`` is
    ``(N, obs_dim)`` and ``action_space`` is ``MultiDiscrete([2**num_bits] * N)``.

    ``step(actions)`` takes an integer array ``(N,)`` and returns observations
    float32 ``(N, obs_dim)``, rewards float32 ``(N,)``, terminations bool ``(N,)``, truncations
    bool ``(N,)`` (always False) and infos ``{"decision", "target", "success"}``, each an array
    ``(N,)`` (``reset`` gives ``"decision"`` and ``"target"``).

    Autoreset mode: ``AutoresetMode.NEXT_STEP`` (``metadata["autoreset_mode"]``, Gymnasium
    1.x's default). After an environment terminates, the next ``step`` ignores its action and
    returns the first observation of its next episode, with reward 0, terminated False and
    success False.

    ``reset(seed=s)`` reseeds all environments (environment ``i`` then plays the stream of
    ``(s, i)``); ``reset(options={"reset_mask": mask})`` with a bool array ``(N,)`` restarts
    only the masked environments and returns the current observations of the others.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int,
        num_bits: int = 4,
        horizon: int | tuple[int, int] = 1000,
        num_distractors: int = 0,
        wrong_penalty: float = 0.0,
        horizon_sampling: str = "uniform",
        device: torch.device | str | None = None,
        render_mode: str | None = None,
    ):
        _check_render_mode(render_mode)
        if not isinstance(num_envs, numbers.Integral) or isinstance(num_envs, bool) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        self.num_envs = int(num_envs)
        self.render_mode = None
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.params = DelayedMemoryParams(
            num_bits=num_bits,
            horizon=horizon,
            num_distractors=num_distractors,
            wrong_penalty=wrong_penalty,
            horizon_sampling=horizon_sampling,
        )
        self.single_observation_space = spaces.Box(0.0, 1.0, shape=(self.params.obs_dim,), dtype=np.float32)
        self.single_action_space = spaces.Discrete(self.params.num_actions)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._state = None
        self._autoreset = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        _check_seed(seed)
        options = dict(options or {})
        reset_mask = options.pop("reset_mask", None)
        if options:
            raise ValueError(f"options may only hold 'reset_mask', got unknown keys {sorted(options)}")
        mask = None
        if reset_mask is not None:
            if seed is not None:
                raise ValueError("seed and options['reset_mask'] cannot be combined")
            reset_mask = np.asarray(reset_mask)
            if reset_mask.dtype != np.bool_ or reset_mask.shape != (self.num_envs,):
                raise ValueError(
                    f"options['reset_mask'] must be a bool array of shape ({self.num_envs},), "
                    f"got {reset_mask.dtype} {reset_mask.shape}"
                )
            if self._state is None:
                raise RuntimeError("a partial reset needs a first full reset()")
            mask = torch.from_numpy(reset_mask).to(self.device)
        super().reset(seed=seed)
        if seed is not None or self._state is None:
            stream_seed = seed if seed is not None else _draw_seed(self.np_random)
            self._state = delayed_memory_init(self.num_envs, self.params, stream_seed, device=self.device)
        self._state = delayed_memory_reset(self._state, mask, self.params)
        if mask is None:
            self._autoreset.zero_()
        else:
            self._autoreset &= ~mask
        observation, decision = delayed_memory_observe(self._state, self.params)
        info = {"decision": decision.cpu().numpy(), "target": self._state.target.cpu().numpy()}
        return observation.cpu().numpy(), info

    def step(self, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("step() called before reset(): call reset() first")
        actions = _batch_action(actions, self.num_envs, self.params.num_actions)
        action = torch.from_numpy(actions).to(self.device)
        # Terminal environments are left as they are by the step (a no-op with reward 0),
        # then restarted: that is next-step autoreset.
        result = delayed_memory_step(self._state, action, self.params)
        restart = self._autoreset
        self._state = delayed_memory_reset(result.state, restart, self.params)
        observation, decision = delayed_memory_observe(self._state, self.params)
        terminated = result.done & ~restart
        self._autoreset = terminated
        info = {
            "decision": decision.cpu().numpy(),
            "target": self._state.target.cpu().numpy(),
            "success": result.success.cpu().numpy(),
        }
        return (
            observation.cpu().numpy(),
            result.reward.cpu().numpy(),
            terminated.cpu().numpy(),
            np.zeros(self.num_envs, dtype=np.bool_),
            info,
        )
