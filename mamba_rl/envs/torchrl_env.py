"""The TorchRL face of the delayed multi-bit memory task: :class:`DelayedMemoryEnv`."""

from __future__ import annotations

import numbers

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite
from torchrl.envs import EnvBase

from mamba_rl.envs.delayed_memory import (
    DelayedMemoryParams,
    check_action,
    delayed_memory_init,
    delayed_memory_observe,
    delayed_memory_reset,
    delayed_memory_step,
)

__all__ = ["DelayedMemoryEnv"]


class DelayedMemoryEnv(EnvBase):
    """``num_envs`` delayed multi-bit memory environments, batched on one device.

    The task, the observation layout and the seeding are described in
    :mod:`mamba_rl.envs.delayed_memory`; this class wraps that functional core. An episode is a
    cue step, ``horizon`` delay steps and a query step: ``horizon + 2`` actions, of which only
    the last is scored; the episode then terminates (it is never truncated).

    Args:
        num_envs: ``N >= 1``, the batch size.
        num_bits: bits to remember, ``1 .. 16``; ``num_actions = 2**num_bits``.
        horizon: delay steps, an int ``>= 1``, or ``(low, high)`` to draw it per episode
            uniformly over ``low .. high`` inclusive.
        num_distractors: fair-coin noise channels appended to the observation.
        wrong_penalty: a wrong answer earns ``-wrong_penalty`` (a right one earns 1).
        horizon_sampling: ``"uniform"`` or ``"log_uniform"`` draw of a ``(low, high)`` horizon
            (:class:`DelayedMemoryParams`).
        device: where all state and outputs live (default CPU).
        seed: seeds the episodes; ``None`` draws one from torch's global RNG.

    Keyword Args:
        validate_actions (bool): check the action's range at every step (default True); the
            check reads one bool back from the device, so turn it off for the last bit of GPU
            throughput. Dtype and shape are always checked.

    Keys (all with leading dim ``N``):

    - input ``"action"``: int64 ``[N]``, ``0 .. num_actions - 1`` (any integer dtype but bool is
      accepted; floats, bools, other shapes and out-of-range values raise).
    - ``"observation"``: float32 ``[N, obs_dim]``, ``[bits (num_bits) | cue | query |
      distractors]``, ``obs_dim = num_bits + 2 + num_distractors``.
    - ``"decision"``: bool ``[N, 1]``, True where the action taken at this step will be scored.
    - ``"target"``: int64 ``[N]``, the integer code of the episode's bits (for analysis; a policy
      must not read it).
    - ``"success"``: bool ``[N, 1]``, under ``"next"``: True where the step just taken was
      scored and right; False at reset and on every other step.
    - ``("next", "reward")``: float32 ``[N, 1]``; ``"done"``, ``"terminated"``, ``"truncated"``:
      bool ``[N, 1]`` (done == terminated; truncated is always False).

    The observation-side keys are written at reset and at every step, so after
    :func:`~torchrl.envs.utils.step_mdp` they describe the current step.

    Resets: ``reset(td)`` with a bool ``"_reset"`` of shape ``[N, 1]`` (or ``[N]``) restarts only
    those environments; the others' state and outputs are left untouched, and so are their
    future episodes (each environment draws from its own counter-based stream, see the core
    module). Stepping an environment whose episode has ended, without resetting it, is a no-op
    that reports done again with reward 0.

    Seeding: ``DelayedMemoryEnv(..., seed=s)`` and ``env.set_seed(s)`` followed by ``reset()``
    give the same episodes, on CPU or CUDA alike; environment ``i`` of a batch sees the same
    episodes whatever ``num_envs``.

    Example:
        >>> env = DelayedMemoryEnv(num_envs=8, num_bits=4, horizon=(10, 20), seed=0)
        >>> td = env.reset()
        >>> td["observation"].shape, env.obs_dim, env.num_actions
        (torch.Size([8, 6]), 6, 16)
        >>> rollout = env.rollout(100, break_when_any_done=False)
        >>> rollout["next", "reward"].shape
        torch.Size([8, 100, 1])
    """

    def __init__(
        self,
        num_envs: int,
        num_bits: int = 4,
        horizon: int | tuple[int, int] = 1000,
        num_distractors: int = 0,
        wrong_penalty: float = 0.0,
        horizon_sampling: str = "uniform",
        device: torch.device | str | None = None,
        seed: int | None = None,
        *,
        validate_actions: bool = True,
    ):
        if not isinstance(num_envs, numbers.Integral) or isinstance(num_envs, bool) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        num_envs = int(num_envs)
        self.params = DelayedMemoryParams(
            num_bits=num_bits,
            horizon=horizon,
            num_distractors=num_distractors,
            wrong_penalty=wrong_penalty,
            horizon_sampling=horizon_sampling,
        )
        if seed is not None and (not isinstance(seed, numbers.Integral) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        device = torch.device("cpu") if device is None else torch.device(device)
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.num_envs = num_envs
        self.validate_actions = bool(validate_actions)
        self._make_specs()
        self._state = None
        self._set_seed(seed)

    @property
    def obs_dim(self) -> int:
        """``num_bits + 2 + num_distractors``."""
        return self.params.obs_dim

    @property
    def num_actions(self) -> int:
        """``2**num_bits``."""
        return self.params.num_actions

    @property
    def state(self):
        """The current :class:`~mamba_rl.envs.delayed_memory.DelayedMemoryState` (read only)."""
        return self._state

    def _make_specs(self) -> None:
        n = self.num_envs
        num_actions = self.params.num_actions
        self.observation_spec = Composite(
            observation=Bounded(low=0.0, high=1.0, shape=(n, self.params.obs_dim), dtype=torch.float32),
            decision=Categorical(2, shape=(n, 1), dtype=torch.bool),
            target=Categorical(num_actions, shape=(n,), dtype=torch.int64),
            success=Categorical(2, shape=(n, 1), dtype=torch.bool),
            shape=(n,),
        )
        self.action_spec = Categorical(num_actions, shape=(n,), dtype=torch.int64)
        self.reward_spec = Bounded(
            low=min(0.0, -self.params.wrong_penalty), high=1.0, shape=(n, 1), dtype=torch.float32
        )
        self.done_spec = Composite(
            done=Categorical(2, shape=(n, 1), dtype=torch.bool),
            terminated=Categorical(2, shape=(n, 1), dtype=torch.bool),
            truncated=Categorical(2, shape=(n, 1), dtype=torch.bool),
            shape=(n,),
        )

    def _set_seed(self, seed: int | None) -> None:
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        self._state = delayed_memory_init(self.num_envs, self.params, seed, device=self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = None
        if tensordict is not None:
            mask = tensordict.get("_reset", None)
        if mask is not None:
            if mask.dtype != torch.bool or mask.numel() != self.num_envs:
                raise ValueError(
                    f"_reset must be a bool tensor of shape [{self.num_envs}, 1] or "
                    f"[{self.num_envs}], got {mask.dtype} {list(mask.shape)}"
                )
            mask = mask.reshape(self.num_envs).to(self.device)
        self._state = delayed_memory_reset(self._state, mask, self.params)
        observation, decision = delayed_memory_observe(self._state, self.params)
        false = torch.zeros((self.num_envs, 1), dtype=torch.bool, device=self.device)
        return TensorDict(
            {
                "observation": observation,
                "decision": decision.unsqueeze(-1),
                "target": self._state.target.clone(),
                "success": false.clone(),
                "done": false.clone(),
                "terminated": false.clone(),
                "truncated": false,
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get("action")
        action = check_action(action, self.params, self.num_envs, self.validate_actions)
        self._state, observation, reward, done, decision, success = delayed_memory_step(
            self._state, action, self.params
        )
        done = done.unsqueeze(-1)
        return TensorDict(
            {
                "observation": observation,
                "reward": reward.unsqueeze(-1),
                "done": done,
                "terminated": done.clone(),
                "truncated": torch.zeros_like(done),
                "decision": decision.unsqueeze(-1),
                "target": self._state.target.clone(),
                "success": success.unsqueeze(-1),
            },
            batch_size=self.batch_size,
            device=self.device,
        )
