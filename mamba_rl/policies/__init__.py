"""Mamba and GRU actor-critics.

- :func:`make_actor_critic`: ``controller="mamba"`` (a :class:`~mamba_rl.MambaModule` trunk) or
  ``"gru"`` (``torchrl.modules.GRUModule``, the baseline), the same actor and value heads,
  shared or separate trunks.
- :class:`ActorCritic`: the tensor-level API the trainer uses (``step``, ``sequence``,
  ``zero_state``) and :meth:`ActorCritic.to_torchrl` for Collectors and TorchRL loss modules.
- :func:`count_parameters`: parameters per part, printed at the start of training.
- :mod:`mamba_rl.policies.heads`: the action distributions (categorical, bits, multi-discrete,
  Gaussian) and :func:`make_action_head` from a Gymnasium action space.
- :func:`build_policy`: the actor-critic a ``TrainConfig`` describes, sized from its env;
  :func:`load_policy` the one a trainer checkpoint holds.
"""

from mamba_rl.policies.actor_critic import (
    CONTROLLERS,
    ActorCritic,
    TorchRLActorCritic,
    count_parameters,
    make_actor_critic,
)
from mamba_rl.policies.build import build_policy, load_policy, make_train_env, memory_params
from mamba_rl.policies.heads import (
    ActionHead,
    BitsHead,
    CategoricalHead,
    GaussianHead,
    MultiDiscreteHead,
    make_action_head,
)
from mamba_rl.policies.trunks import GRU_BACKENDS, GRUTrunk, MambaTrunk

__all__ = [
    "ActionHead",
    "BitsHead",
    "CategoricalHead",
    "GaussianHead",
    "MultiDiscreteHead",
    "build_policy",
    "load_policy",
    "make_action_head",
    "make_train_env",
    "memory_params",
    "CONTROLLERS",
    "GRU_BACKENDS",
    "ActorCritic",
    "GRUTrunk",
    "MambaTrunk",
    "TorchRLActorCritic",
    "count_parameters",
    "make_actor_critic",
]
