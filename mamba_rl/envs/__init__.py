"""The delayed multi-bit memory environment (TorchRL and Gymnasium faces).

- :class:`DelayedMemoryEnv`: the TorchRL ``EnvBase``, ``batch_size=[num_envs]``, on CPU or CUDA.
- :class:`DelayedMemoryGymEnv` / :class:`DelayedMemoryVectorEnv`: the Gymnasium faces; importing
  this package registers ``"mamba_rl/DelayedMemory-v0"`` (with a ``vector_entry_point``).
- The functional core (:func:`delayed_memory_init`, :func:`delayed_memory_reset`,
  :func:`delayed_memory_observe`, :func:`delayed_memory_step`, :func:`delayed_memory_score`,
  :func:`delayed_memory_states_ahead`) on plain tensors, for compiled or
  CUDA-graph rollout loops; the task itself is described in :mod:`mamba_rl.envs.delayed_memory`.
"""

import gymnasium

from mamba_rl.envs.delayed_memory import (
    MAX_HORIZON,
    DelayedMemoryParams,
    DelayedMemoryState,
    DelayedMemoryStep,
    check_action,
    delayed_memory_init,
    delayed_memory_observe,
    delayed_memory_reset,
    delayed_memory_score,
    delayed_memory_states_ahead,
    delayed_memory_step,
)
from mamba_rl.envs.gym_env import DelayedMemoryGymEnv, DelayedMemoryVectorEnv
from mamba_rl.envs.torchrl_env import DelayedMemoryEnv

GYM_ID = "mamba_rl/DelayedMemory-v0"

# A re-import (importlib.reload) must not re-register: gymnasium would warn about overriding.
if GYM_ID not in gymnasium.registry:
    gymnasium.register(
        id=GYM_ID,
        entry_point="mamba_rl.envs.gym_env:DelayedMemoryGymEnv",
        vector_entry_point="mamba_rl.envs.gym_env:DelayedMemoryVectorEnv",
    )

__all__ = [
    "GYM_ID",
    "MAX_HORIZON",
    "DelayedMemoryEnv",
    "DelayedMemoryGymEnv",
    "DelayedMemoryParams",
    "DelayedMemoryState",
    "DelayedMemoryStep",
    "DelayedMemoryVectorEnv",
    "check_action",
    "delayed_memory_init",
    "delayed_memory_observe",
    "delayed_memory_reset",
    "delayed_memory_score",
    "delayed_memory_states_ahead",
    "delayed_memory_step",
]
