"""mamba-rl: Mamba (selective state-space) recurrent policies with long memory for TorchRL."""

from mamba_rl import envs as envs  # registers the Gymnasium ids
from mamba_rl import kernels as kernels
from mamba_rl import state as state
from mamba_rl.config import TrainConfig
from mamba_rl.lab import check_equivalence, trace
from mamba_rl.mixer import MambaConfig, MambaMixer
from mamba_rl.module import MambaModule
from mamba_rl.state import MambaState
from mamba_rl.training import train

__version__ = "0.1.0"

__all__ = [
    "MambaConfig",
    "MambaMixer",
    "MambaModule",
    "MambaState",
    "TrainConfig",
    "train",
    "check_equivalence",
    "trace",
    "envs",
    "kernels",
    "state",
]
