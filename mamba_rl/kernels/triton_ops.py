"""Fused Triton kernels behind :mod:`mamba_rl.kernels.ops` (``backend="triton"``).

Importing this module imports Triton; :func:`mamba_rl.kernels.ops.resolve_backend` treats an
ImportError here as "no Triton backend". One family per file:

- :mod:`~mamba_rl.kernels.triton_scan`: the selective scan's autograd function and host side,
  its kernels in :mod:`~mamba_rl.kernels.triton_scan_fwd`, :mod:`~mamba_rl.kernels.triton_scan_bwd`
  and :mod:`~mamba_rl.kernels.triton_scan_common`;
- :mod:`~mamba_rl.kernels.triton_scan_restart`: what the restart states (``reset_state``) add
  to it, by linearity;
- :mod:`~mamba_rl.kernels.triton_conv`: the causal conv, forward and backward;
- :mod:`~mamba_rl.kernels.triton_step`: the single rollout step (conv, SSM, the fused mixer step);
- :mod:`~mamba_rl.kernels.triton_math`, :mod:`~mamba_rl.kernels.triton_host`,
  :mod:`~mamba_rl.kernels.triton_launch`: what they share (fast math, host helpers, launches).
"""

from mamba_rl.kernels.triton_conv import causal_conv1d_triton
from mamba_rl.kernels.triton_scan import selective_scan_triton
from mamba_rl.kernels.triton_step import (
    MixerStepWorkspace,
    causal_conv1d_step_inplace,
    causal_conv1d_step_triton,
    mamba_mixer_step,
    selective_state_step_inplace,
    selective_state_step_triton,
)

__all__ = [
    "selective_scan_triton",
    "causal_conv1d_triton",
    "selective_state_step_triton",
    "causal_conv1d_step_triton",
    "selective_state_step_inplace",
    "causal_conv1d_step_inplace",
    "mamba_mixer_step",
    "MixerStepWorkspace",
]
