"""Stateful selective scan and causal conv: PyTorch references and fused Triton kernels."""

from mamba_rl.kernels.naive import (
    causal_conv1d_ref,
    causal_conv1d_step_ref,
    selective_scan_ref,
    selective_state_step_ref,
)
from mamba_rl.kernels.ops import (
    BACKENDS,
    causal_conv1d,
    causal_conv1d_step,
    resolve_backend,
    selective_scan,
    selective_state_step,
)

__all__ = [
    "BACKENDS",
    "resolve_backend",
    "selective_scan",
    "selective_state_step",
    "causal_conv1d",
    "causal_conv1d_step",
    "selective_scan_ref",
    "selective_state_step_ref",
    "causal_conv1d_ref",
    "causal_conv1d_step_ref",
]
