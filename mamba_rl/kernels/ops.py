"""Public entry points of the scan and conv: shape checks and backend dispatch.

``backend``:
- ``"torch"``: the readable PyTorch reference in :mod:`mamba_rl.kernels.naive` (any device);
- ``"triton"``: fused Triton kernels (CUDA, or CPU under ``TRITON_INTERPRET=1``), when present;
- ``"chunked"``: the scan by chunks and the conv by windows in vectorised PyTorch
  (:mod:`mamba_rl.kernels.chunked`, any device, made for the CPU, where the reference's loop over
  time and its per-tap ops are bound by per-op costs); the single steps as ``"torch"``;
- ``"auto"``: Triton on CUDA tensors when the Triton kernels import, ``"chunked"`` on CPU
  tensors, else PyTorch.
"""

from __future__ import annotations

import importlib
import os

import torch

from mamba_rl.kernels import chunked, naive

__all__ = [
    "BACKENDS",
    "resolve_backend",
    "selective_scan",
    "selective_state_step",
    "causal_conv1d",
    "causal_conv1d_step",
]

BACKENDS = ("auto", "torch", "triton", "chunked")


def _triton_module():
    """The Triton kernels module, or None when Triton (or the module) cannot be imported."""
    try:
        return importlib.import_module("mamba_rl.kernels.triton_ops")
    except ImportError:
        return None


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn ``"auto"`` into a concrete backend for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda" and _triton_module() is not None:
            return "triton"
        return "chunked" if device.type == "cpu" else "torch"
    if backend == "triton" and _triton_module() is None:
        raise RuntimeError("backend='triton' needs the Triton kernels (pip install triton)")
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"backend='triton' needs CUDA tensors, got tensors on {device}; use backend='auto' "
            "(or TRITON_INTERPRET=1 to run the Triton kernels on the CPU, slowly)"
        )
    return backend


def _check_shape(name: str, tensor: torch.Tensor | None, expected: tuple[int, ...]) -> None:
    if tensor is not None and tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {list(expected)}, got {list(tensor.shape)}")


def _check_float(name: str, tensor: torch.Tensor | None) -> None:
    if tensor is not None and not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")


def _check_bool(name: str, tensor: torch.Tensor | None) -> None:
    if tensor is not None and tensor.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got dtype {tensor.dtype}")


def _check_device(ref_name: str, ref: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    """Every tensor on ``ref``'s device (a Triton kernel would read a CPU pointer as garbage)."""
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != ref.device:
            raise ValueError(f"{name} must be on the device of {ref_name} ({ref.device}), got {tensor.device}")


def _check_reset_state(
    reset: torch.Tensor | None, reset_state: torch.Tensor | None, tail: tuple[int, ...], tail_names: str
) -> None:
    """``reset_state`` holds one row per True of ``reset`` (this reads ``reset.sum()``: a host sync)."""
    if reset_state is None:
        return
    if reset is None:
        raise ValueError("reset_state needs reset: it holds the states entering the reset steps")
    _check_float("reset_state", reset_state)
    expected = (int(reset.sum()), *tail)
    if tuple(reset_state.shape) != expected:
        raise ValueError(
            f"reset_state must have shape [R={expected[0]} (resets), {tail_names}] = "
            f"{list(expected)}, got {list(reset_state.shape)}"
        )


def _check_scan_args(u, delta, A, B, C, D, z, delta_bias, h0, reset) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must have shape [b, d, L], got {list(u.shape)}")
    b, d, L = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must have shape [d={d}, n], got {list(A.shape)}")
    n = A.shape[1]
    for name, t in (
        ("u", u),
        ("delta", delta),
        ("A", A),
        ("B", B),
        ("C", C),
        ("D", D),
        ("z", z),
        ("delta_bias", delta_bias),
        ("h0", h0),
    ):
        _check_float(name, t)
    _check_bool("reset", reset)
    if A.is_complex():
        raise TypeError("A must be real; complex A is not supported")
    _check_shape("delta", delta, (b, d, L))
    _check_shape("B", B, (b, n, L))
    _check_shape("C", C, (b, n, L))
    _check_shape("D", D, (d,))
    _check_shape("z", z, (b, d, L))
    _check_shape("delta_bias", delta_bias, (d,))
    _check_shape("h0", h0, (b, d, n))
    _check_shape("reset", reset, (b, L))
    _check_device("u", u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, h0=h0, reset=reset)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    h0: torch.Tensor | None = None,
    reset: torch.Tensor | None = None,
    backend: str = "auto",
    reset_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective scan with an initial state, resets inside the sequence and the final state out.

    Arguments as mamba-ssm's ``selective_scan_fn`` (Mamba-1, real ``A``, input-dependent ``B``/``C``):

    Args:
        u: ``[b, d, L]`` input.
        delta: ``[b, d, L]`` step sizes (before ``delta_bias`` and softplus).
        A: ``[d, n]`` (negative for a decaying state).
        B, C: ``[b, n, L]``.
        D: ``[d]`` skip connection, optional.
        z: ``[b, d, L]`` gate, optional: ``y *= silu(z)``.
        delta_bias: ``[d]``, optional.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        h0: ``[b, d, n]`` state entering step 0 (zero when None); receives gradients.
        reset: ``[b, L]`` bool; True at ``t`` makes the state entering step ``t`` the restart
            state (zero without ``reset_state``).
        backend: ``"auto" | "torch" | "triton" | "chunked"``.
        reset_state: ``[R, d, n]``, the states entering the ``R = reset.sum()`` reset steps in
            ``reset.nonzero()`` order (``stored[reset]`` for a per-step ``stored``); receives
            gradients. None: zeros. See :mod:`mamba_rl.kernels.naive`.

    Returns:
        ``(y [b, d, L] in u's dtype, h_last [b, d, n] in float32)``; gradients flow from both.
    """
    _check_scan_args(u, delta, A, B, C, D, z, delta_bias, h0, reset)
    _check_reset_state(reset, reset_state, (u.shape[1], A.shape[1]), "d, n")
    _check_device("u", u, reset_state=reset_state)
    backend = resolve_backend(backend, u.device)
    if backend == "chunked":
        return chunked.selective_scan_chunked(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, reset, reset_state
        )
    if backend == "triton":
        return _triton_module().selective_scan_triton(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, reset, reset_state
        )
    return naive.selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, reset, reset_state)


def selective_state_step(
    h: torch.Tensor,
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    reset: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of :func:`selective_scan`, pure (``h`` is not written).

    ``h`` ``[b, d, n]``; ``x, delta, z`` ``[b, d]``; ``A`` ``[d, n]``; ``B, C`` ``[b, n]``;
    ``reset`` ``[b]``. Returns ``(y [b, d], h_new [b, d, n])``.
    """
    if x.dim() != 2:
        raise ValueError(f"x must have shape [b, d], got {list(x.shape)}")
    b, d = x.shape
    n = A.shape[-1]
    _check_shape("h", h, (b, d, n))
    _check_shape("delta", delta, (b, d))
    _check_shape("B", B, (b, n))
    _check_shape("C", C, (b, n))
    _check_shape("z", z, (b, d))
    _check_shape("reset", reset, (b,))
    _check_bool("reset", reset)
    _check_device("x", x, h=h, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, reset=reset)
    if resolve_backend(backend, x.device) == "triton":
        return _triton_module().selective_state_step_triton(
            h, x, delta, A, B, C, D, z, delta_bias, delta_softplus, reset
        )
    return naive.selective_state_step_ref(h, x, delta, A, B, C, D, z, delta_bias, delta_softplus, reset)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    reset: torch.Tensor | None = None,
    activation: str | None = None,
    backend: str = "auto",
    reset_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv with an initial state, history replaced at resets, final state out.

    ``x`` ``[b, d, L]``, ``weight`` ``[d, w]``, ``bias`` ``[d]``, ``initial_state``
    ``[b, d, w - 1]``, ``reset`` ``[b, L]`` bool, ``activation`` None or ``"silu"``,
    ``reset_state`` ``[R, d, w - 1]``: the history entering each reset step (zeros when None;
    same order as :func:`selective_scan`'s). Returns ``(y [b, d, L], final_state [b, d, w - 1])``.
    """
    if x.dim() != 3:
        raise ValueError(f"x must have shape [b, d, L], got {list(x.shape)}")
    b, d, L = x.shape
    if weight.dim() != 2 or weight.shape[0] != d:
        raise ValueError(f"weight must have shape [d={d}, width], got {list(weight.shape)}")
    _check_float("x", x)
    _check_shape("bias", bias, (d,))
    _check_shape("initial_state", initial_state, (b, d, weight.shape[1] - 1))
    _check_shape("reset", reset, (b, L))
    _check_bool("reset", reset)
    _check_device("x", x, weight=weight, bias=bias, initial_state=initial_state, reset=reset, reset_state=reset_state)
    _check_reset_state(reset, reset_state, (d, weight.shape[1] - 1), "d, width - 1")
    backend = resolve_backend(backend, x.device)
    if backend == "triton":
        return _triton_module().causal_conv1d_triton(x, weight, bias, initial_state, reset, activation, reset_state)
    if backend == "chunked":
        return chunked.causal_conv1d_chunked(x, weight, bias, initial_state, reset, activation, reset_state)
    return naive.causal_conv1d_ref(x, weight, bias, initial_state, reset, activation, reset_state)


def causal_conv1d_step(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    reset: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of :func:`causal_conv1d`, pure. ``x`` ``[b, d]``, ``conv_state`` ``[b, d, w - 1]``."""
    if x.dim() != 2:
        raise ValueError(f"x must have shape [b, d], got {list(x.shape)}")
    _check_shape("conv_state", conv_state, (x.shape[0], x.shape[1], weight.shape[-1] - 1))
    _check_shape("reset", reset, (x.shape[0],))
    _check_bool("reset", reset)
    _check_device("x", x, conv_state=conv_state, weight=weight, bias=bias, reset=reset)
    if resolve_backend(backend, x.device) == "triton":
        return _triton_module().causal_conv1d_step_triton(x, conv_state, weight, bias, activation, reset)
    return naive.causal_conv1d_step_ref(x, conv_state, weight, bias, activation, reset)
