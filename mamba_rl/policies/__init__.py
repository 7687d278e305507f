"""Mamba and GRU actor-critics.

- :func:`make_actor_critic`: ``controller="mamba"`` (a :class:`~mamba_rl.MambaModule` trunk) or
  ``"gru"`` (``torchrl.modules.GRUModule``, the baseline), the same categorical actor and value
  heads, shared or separate trunks.
- :class:`ActorCritic`: the tensor-level API the trainer uses (``step``, ``sequence``,
  ``zero_state``) and :meth:`ActorCritic.to_torchrl` for Collectors and TorchRL loss modules.
- :func:`count_parameters`: parameters per part, printed at the start of training.
"""

from mamba_rl.policies.actor_critic import (
    CONTROLLERS,
    ActorCritic,
    TorchRLActorCritic,
    count_parameters,
    make_actor_critic,
)
from mamba_rl.policies.trunks import GRU_BACKENDS, GRUTrunk, MambaTrunk

__all__ = [
    "CONTROLLERS",
    "GRU_BACKENDS",
    "ActorCritic",
    "GRUTrunk",
    "MambaTrunk",
    "TorchRLActorCritic",
    "count_parameters",
    "make_actor_critic",
]
