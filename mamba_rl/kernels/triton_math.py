"""Elementwise math shared by the Triton kernels: ``exp2``, softplus and sigmoid, accurate or fast.

The fast forms are inline PTX (``ex2.approx.ftz``, ``rcp.approx.ftz``), so a kernel passes
``PTX=False`` / ``FAST=False`` under ``TRITON_INTERPRET=1`` and gets ``tl.exp2`` and the accurate
softplus and sigmoid instead.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["LOG2E"]

LOG2E = 1.4426950408889634


@triton.jit
def _rcp_approx(x):
    """``1 / x`` by ``rcp.approx.ftz.f32``: one MUFU instruction, ~1 ulp."""
    return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _exp2(x, PTX: tl.constexpr):
    """``2 ** x``: with ``PTX`` one ``ex2.approx.ftz`` (no denormal range fix-up: results below
    2^-126 are zero), else ``tl.exp2``."""
    if PTX:
        return tl.inline_asm_elementwise(
            "ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.exp2(x)


@triton.jit
def _softplus(x):
    # max(x, 0) + log1p(exp(-|x|)), with log1p(y) = log(w) * y / (w - 1), w = 1 + y (exact for
    # small y, where log(1 + y) alone would round to zero)
    y = tl.exp(-tl.abs(x))
    w = 1.0 + y
    log1p_y = tl.where(w == 1.0, y, tl.log(w) * y / (w - 1.0))
    return tl.maximum(x, 0.0) + log1p_y


@triton.jit
def _softplus_fast(x, FAST: tl.constexpr):
    """With ``FAST``, ``_softplus`` from approximate MUFU ops: ``max(x, 0) + log1p(y)``, ``y =
    exp(-|x|)`` by ``ex2.approx``, and ``log1p(y) = 2 atanh(s)``, ``s = y / (2 + y)`` in ``(0,
    1/3]``, by its odd series to ``s^13`` (truncation below 2e-8 relative; ``rcp.approx`` for the
    division). About 15 instructions instead of ~40 for the accurate ``exp``, ``log`` and division,
    within ~5e-7 relative (``lg2.approx`` would be cheaper but its error is absolute, large
    relative to ``log1p(y)`` for small ``y``). Else ``_softplus``."""
    if FAST:
        y = _exp2(-tl.abs(x) * 1.4426950408889634, True)
        s = y * _rcp_approx(2.0 + y)
        s2 = s * s
        p = 2.0 / 13.0
        p = p * s2 + 2.0 / 11.0
        p = p * s2 + 2.0 / 9.0
        p = p * s2 + 2.0 / 7.0
        p = p * s2 + 2.0 / 5.0
        p = p * s2 + 2.0 / 3.0
        p = p * s2 + 2.0
        return tl.maximum(x, 0.0) + s * p
    else:
        return _softplus(x)


@triton.jit
def _sigmoid_fast(x, FAST: tl.constexpr):
    """With ``FAST``, ``1 / (1 + exp(-x))`` from approximate MUFU ops; else ``tl.sigmoid``."""
    if FAST:
        return _rcp_approx(1.0 + _exp2(-x * 1.4426950408889634, True))
    else:
        return tl.sigmoid(x)
