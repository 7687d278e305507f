"""Gymnasium spaces as flat float vectors (observations) and the action spaces the policy heads take.

Observations: a ``Box`` is flattened, a ``Discrete(n)`` becomes an ``n``-wide one-hot, a
``MultiDiscrete`` one one-hot per entry, a ``MultiBinary`` its bits as floats; ``Dict`` (in key
order) and ``Tuple`` spaces are the concatenation of their parts. Anything else is an error that
names the space. Actions: ``Discrete``, ``MultiDiscrete`` and bounded ``Box`` (see
:mod:`mamba_rl.policies.heads`).
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces

__all__ = [
    "ACTION_SPACES",
    "OBSERVATION_SPACES",
    "EnvSpecError",
    "UnsupportedSpaceError",
    "check_action_space",
    "flat_size",
    "flatten_observation",
]

OBSERVATION_SPACES = "Box, Discrete, MultiDiscrete, MultiBinary, and Dict/Tuple of those"
ACTION_SPACES = "Discrete, MultiDiscrete (start 0), and Box with finite bounds"


class EnvSpecError(ValueError):
    """An env id, its kwargs, its spaces, or what its reset/step returned is not what the trainer can use."""


class UnsupportedSpaceError(EnvSpecError):
    """An observation or action space the trainer cannot flatten or act in."""


def flat_size(space: spaces.Space, what: str = "observation space") -> int:
    """Features of ``space`` once flattened (see the module docstring)."""
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape, dtype=np.int64))
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(np.asarray(space.nvec).sum())
    if isinstance(space, spaces.MultiBinary):
        return int(np.prod(space.shape, dtype=np.int64))
    if isinstance(space, spaces.Dict):
        return sum(flat_size(sub, f"{what}[{key!r}]") for key, sub in space.spaces.items())
    if isinstance(space, spaces.Tuple):
        return sum(flat_size(sub, f"{what}[{i}]") for i, sub in enumerate(space.spaces))
    raise UnsupportedSpaceError(f"{what} {space} is not supported; supported: {OBSERVATION_SPACES}")


def flatten_observation(space: spaces.Space, obs, device: torch.device) -> torch.Tensor:
    """A batch of observations of ``space`` (numpy, as a vector env returns them, leading dim ``N``)
    as float32 ``[N, flat_size(space)]`` on ``device``."""
    if isinstance(space, spaces.Dict):
        return torch.cat([flatten_observation(sub, obs[key], device) for key, sub in space.spaces.items()], -1)
    if isinstance(space, spaces.Tuple):
        return torch.cat([flatten_observation(sub, part, device) for sub, part in zip(space.spaces, obs)], -1)
    array = torch.as_tensor(np.asarray(obs), device=device)
    n = array.shape[0]
    if isinstance(space, spaces.Discrete):
        return torch.nn.functional.one_hot(array.long().reshape(n) - int(space.start), int(space.n)).float()
    if isinstance(space, spaces.MultiDiscrete):
        nvec = np.asarray(space.nvec).reshape(-1)
        start = torch.as_tensor(np.asarray(space.start).reshape(-1), device=device)
        codes = array.long().reshape(n, -1) - start
        return torch.cat([torch.nn.functional.one_hot(codes[:, i], int(k)).float() for i, k in enumerate(nvec)], -1)
    if isinstance(space, (spaces.Box, spaces.MultiBinary)):
        return array.reshape(n, -1).float()
    raise UnsupportedSpaceError(f"observation space {space} is not supported; supported: {OBSERVATION_SPACES}")


def check_action_space(space: spaces.Space) -> spaces.Space:
    """``space`` if a policy head can act in it, else an :class:`UnsupportedSpaceError` naming it."""
    if isinstance(space, spaces.Discrete):
        return space
    if isinstance(space, spaces.MultiDiscrete) and np.asarray(space.nvec).ndim == 1:
        return space
    if isinstance(space, spaces.Box) and len(space.shape) == 1 and np.issubdtype(space.dtype, np.floating):
        if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            raise UnsupportedSpaceError(f"action space {space} has infinite bounds; supported: {ACTION_SPACES}")
        return space
    raise UnsupportedSpaceError(f"action space {space} is not supported; supported: {ACTION_SPACES}")
