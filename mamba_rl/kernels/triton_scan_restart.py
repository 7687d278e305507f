"""The restart states' part of the Triton selective scan (``reset_state``), forward and backward.

The scan is linear in its states, so with restart states it is the scan that restarts from zero
(:mod:`~mamba_rl.kernels.triton_scan`, the same kernels as without restart states) plus the
zero-input scan ``g`` started from the restart states::

    g = reset_state[k]  if reset[:, t], its k-th reset (g = 0 before a row's first reset)
    g = exp(delta_t A) g
    y_t += silu(z_t) * <g, C_t>,   h_last += g_{L-1}

(``D u`` and ``delta B u`` belong to the other part). This file adds that term on top of the
other part's outputs, so the scan without restart states runs exactly the kernels it runs alone.

One program is one warp: a batch row and 32 channels, a channel's ``d_state`` states in one
thread (as in the scan). It walks time from the row's first reset, so rows without resets cost
one launch slot. The backward walks twice: forward to write each step's ``S_t``, the sum of the
step sizes since the last reset (``g_t = exp2(A log2(e) S_t) g_s``; a ``[b, L, d]`` fp32 scratch,
no per-step state), then backward through the adjoint ``q_t = C_t dy'_t + a_{t+1} q_{t+1}`` (cut
at resets), where ``d reset_state[k] = a_s q_s`` at the ``k``-th reset ``s``. The gradients of
``C`` are sums over channels: each warp writes its sums per step into a ``[d / 32, b, L, n]``
partial buffer summed afterwards (deterministic, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mamba_rl.kernels.triton_host import next_pow2
from mamba_rl.kernels.triton_launch import DirectLauncher, interpreted
from mamba_rl.kernels.triton_math import LOG2E, _exp2, _sigmoid_fast, _softplus_fast

__all__ = ["add_restart_states"]


@triton.jit
def _restart_setup(
    p_A_log2e, p_bias, p_first, p_row0, ptrs, strides, d, n, N: tl.constexpr, BD: tl.constexpr, HAS_BIAS: tl.constexpr
):
    """A program's batch row, channels ``[1, BD]``, states ``[N, 1]``, their masks, ``A log2(e)``
    ``[N, BD]``, ``delta_bias`` ``[1, BD]``, the row's first reset step (``L`` if none), the
    ``reset_state`` row of its first reset, and ``ptrs`` = (delta, C, z, reset, reset_state) at
    the program's row and channels with their step (row for reset_state) strides (``strides``:
    each tensor's, in its dims' order)."""
    i_b = tl.program_id(1).to(tl.int64)
    ch = tl.program_id(0) * BD + tl.arange(0, BD)[None, :]
    nn = tl.arange(0, N)[:, None]
    m_ch = ch < d
    m_s = m_ch & (nn < n)
    A_log2e = tl.load(p_A_log2e + nn * d + ch, mask=m_ch, other=0.0)
    bias = tl.load(p_bias + ch, mask=m_ch & HAS_BIAS, other=0.0).to(tl.float32)
    # [1, 1] int64, as the reset flags it counts
    row0 = tl.zeros([1, 1], tl.int64) + tl.load(p_row0 + i_b)
    p_delta, p_C, p_z, p_reset, p_rs = ptrs
    s_dt, s_C, s_z, s_r, s_rs = strides
    s_dt_b, s_dt_d, s_dt_t = s_dt
    s_C_b, s_C_n, s_C_t = s_C
    s_z_b, s_z_d, s_z_t = s_z
    s_r_b, s_r_t = s_r
    s_rs_k, s_rs_d, s_rs_n = s_rs
    ptrs = (
        p_delta + (i_b * s_dt_b + ch * s_dt_d),
        p_C + (i_b * s_C_b + nn * s_C_n),
        p_z + (i_b * s_z_b + ch * s_z_d),
        p_reset + i_b * s_r_b,
        p_rs + (ch * s_rs_d + nn * s_rs_n),
    )
    return (
        i_b,
        ch,
        nn,
        m_ch,
        m_s,
        A_log2e,
        bias,
        tl.load(p_first + i_b),
        row0,
        ptrs,
        (s_dt_t, s_C_t, s_z_t, s_r_t, s_rs_k),
    )


@triton.jit
def _restart_step_size(p_delta, t, m_ch, s_dt_t, bias, SOFTPLUS: tl.constexpr, FAST: tl.constexpr):
    """Step ``t``'s raw ``delta (+ bias)`` and step size ``[1, BD]`` (as the scan computes them)."""
    raw_dt = tl.load(p_delta + t * s_dt_t, mask=m_ch, other=0.0).to(tl.float32) + bias
    dt = raw_dt
    if SOFTPLUS:
        dt = _softplus_fast(raw_dt, FAST)
    return raw_dt, tl.where(m_ch, dt, 0.0)


@triton.jit
def _is_reset(p_reset, t, s_r_t):
    """Whether step ``t`` starts an episode, as a ``[1, 1]`` tile (the interpreter cannot mask
    with a scalar and-ed into a tile)."""
    return tl.load(p_reset + (tl.full([1, 1], 0, tl.int64) + t) * s_r_t) != 0


@triton.jit
def _restart_fwd_kernel(
    p_delta,
    p_A_log2e,
    p_C,
    p_z,
    p_bias,
    p_reset,
    p_rs,
    p_first,
    p_row0,
    p_y,
    p_hin,
    p_hout,
    L,
    d,
    n,
    s_dt,
    s_C,
    s_z,
    s_r,
    s_rs,
    s_y,
    s_hi,
    N: tl.constexpr,
    BD: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    PTX: tl.constexpr,
    FAST: tl.constexpr,
):
    """Adds ``silu(z_t) <g_t, C_t>`` to ``y`` in place from the row's first reset on, and writes
    ``h_out = h_in + g_{L-1}`` ``[b, d, n]``. ``s_*``: each tensor's strides, in its dims' order."""
    ptrs, strides = (p_delta, p_C, p_z, p_reset, p_rs), (s_dt, s_C, s_z, s_r, s_rs)
    i_b, ch, nn, m_ch, m_s, A_log2e, bias, t_first, k, ptrs, steps = _restart_setup(
        p_A_log2e, p_bias, p_first, p_row0, ptrs, strides, d, n, N, BD, HAS_BIAS
    )
    p_delta, p_C, p_z, p_reset, p_rs = ptrs
    s_dt_t, s_C_t, s_z_t, s_r_t, s_rs_k = steps
    s_y_b, s_y_d, s_y_t = s_y
    s_hi_b, s_hi_d, s_hi_n = s_hi
    p_y += i_b * s_y_b + ch * s_y_d
    # the reset_state row of the last reset seen (k - 1 before the first one)
    k = k - 1
    g = tl.zeros([N, BD], dtype=tl.float32)
    for t in range(t_first, L):
        _, dt = _restart_step_size(p_delta, t, m_ch, s_dt_t, bias, SOFTPLUS, FAST)
        is_reset = _is_reset(p_reset, t, s_r_t)
        k += is_reset.to(tl.int64)
        # a select, so that nothing from before the reset survives it
        g = tl.where(is_reset, tl.load(p_rs + k * s_rs_k, mask=m_s & is_reset, other=0.0).to(tl.float32), g)
        g = _exp2(dt * A_log2e, PTX) * g
        Cv = tl.load(p_C + t * s_C_t, mask=nn < n, other=0.0).to(tl.float32)
        yg = tl.sum(g * Cv, axis=0, keep_dims=True)
        if HAS_Z:
            z = tl.load(p_z + t * s_z_t, mask=m_ch, other=0.0).to(tl.float32)
            yg *= z * _sigmoid_fast(z, FAST)
        y = tl.load(p_y + t * s_y_t, mask=m_ch, other=0.0).to(tl.float32) + yg
        tl.store(p_y + t * s_y_t, y.to(p_y.dtype.element_ty), mask=m_ch)
    h = tl.load(p_hin + i_b * s_hi_b + ch * s_hi_d + nn * s_hi_n, mask=m_s, other=0.0)
    tl.store(p_hout + (i_b * d + ch) * n + nn, h + g, mask=m_s)


@triton.jit
def _restart_bwd_kernel(
    p_delta,
    p_A_log2e,
    p_C,
    p_z,
    p_bias,
    p_reset,
    p_rs,
    p_first,
    p_row0,
    p_dy,
    p_dh,
    p_S,
    p_ddelta,
    p_dz,
    p_dC,
    p_dA,
    p_dbias,
    p_drs,
    L,
    d,
    n,
    s_dt,
    s_C,
    s_z,
    s_r,
    s_rs,
    s_dy,
    s_dh,
    N: tl.constexpr,
    BD: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    PTX: tl.constexpr,
    FAST: tl.constexpr,
):
    """The restart term's gradients: ``ddelta``, ``dz`` ``[b, L, d]`` (contiguous, written from the
    row's first reset on), ``dC`` partial sums ``[d / BD, b, L, N]``, ``dA`` and ``d(delta_bias)``
    per row ``[b, N, d]`` / ``[b, d]``, and ``d reset_state`` ``[R, d, n]`` (contiguous).
    ``s_*``: each tensor's strides, in its dims' order."""
    ptrs, strides = (p_delta, p_C, p_z, p_reset, p_rs), (s_dt, s_C, s_z, s_r, s_rs)
    i_b, ch, nn, m_ch, m_s, A_log2e, bias, t_first, k, ptrs, steps = _restart_setup(
        p_A_log2e, p_bias, p_first, p_row0, ptrs, strides, d, n, N, BD, HAS_BIAS
    )
    p_delta, p_C, p_z, p_reset, p_rs = ptrs
    s_dt_t, s_C_t, s_z_t, s_r_t, s_rs_k = steps
    s_dy_b, s_dy_d, s_dy_t = s_dy
    s_dh_b, s_dh_d, s_dh_n = s_dh
    p_dy += i_b * s_dy_b + ch * s_dy_d
    # [b, L, d]: S_t, the sum of the step sizes from the last reset at or before t through t
    p_S += i_b * L * d + ch
    # 1. forward: S_t, and the reset_state row of the row's last reset
    k = k - 1
    S = tl.zeros([1, BD], dtype=tl.float32)
    for t in range(t_first, L):
        _, dt = _restart_step_size(p_delta, t, m_ch, s_dt_t, bias, SOFTPLUS, FAST)
        is_reset = _is_reset(p_reset, t, s_r_t)
        k += is_reset.to(tl.int64)
        S = tl.where(is_reset, dt, S + dt)
        tl.store(p_S + t * d, S, mask=m_ch)
    # 2. backward from the end: q, the gradient reaching g_t; r, the restart state of t's segment
    q = tl.load(p_dh + i_b * s_dh_b + ch * s_dh_d + nn * s_dh_n, mask=m_s, other=0.0).to(tl.float32)
    r = tl.load(p_rs + k * s_rs_k, mask=m_s & (tl.zeros([1, 1], tl.int32) + t_first < L), other=0.0).to(tl.float32)
    dA = tl.zeros([N, BD], dtype=tl.float32)
    dbias = tl.zeros([1, BD], dtype=tl.float32)
    # [b, L, d]: ddelta and dz (channels innermost, one coalesced row per step)
    p_out = i_b * L * d + ch
    # [d / BD, b, L, N]: this warp's sums over its channels of the dC terms
    p_dC += (tl.program_id(0) * tl.num_programs(1) + i_b) * L * N + nn
    for i in range(L - t_first):
        # [1, 1]: the step (the loop above leaves its own t behind)
        tt = tl.full([1, 1], 0, tl.int32) + (L - 1 - i)
        raw_dt, dt = _restart_step_size(p_delta, tt, m_ch, s_dt_t, bias, SOFTPLUS, FAST)
        S = tl.load(p_S + tt * d, mask=m_ch, other=0.0)
        g = _exp2(S * A_log2e, PTX) * r
        Cv = tl.load(p_C + tt * s_C_t, mask=nn < n, other=0.0).to(tl.float32)
        dy = tl.load(p_dy + tt * s_dy_t, mask=m_ch, other=0.0).to(tl.float32)
        dyp = dy
        if HAS_Z:
            z = tl.load(p_z + tt * s_z_t, mask=m_ch, other=0.0).to(tl.float32)
            sz = _sigmoid_fast(z, FAST)
            dyp = dy * z * sz
            yg = tl.sum(g * Cv, axis=0, keep_dims=True)
            tl.store(p_dz + p_out + tt * d, yg * dy * sz * (1.0 + z * (1.0 - sz)), mask=m_ch)
        tl.store(p_dC + tt * N, tl.sum(g * dyp, axis=1, keep_dims=True))
        q += Cv * dyp
        w = q * g
        dA += w * dt
        ddt = tl.sum(w * A_log2e, axis=0, keep_dims=True) * 0.6931471805599453
        if SOFTPLUS:
            ddt = ddt * _sigmoid_fast(raw_dt, FAST)
        ddt = tl.where(m_ch, ddt, 0.0)
        dbias += ddt
        tl.store(p_ddelta + p_out + tt * d, ddt, mask=m_ch)
        a = _exp2(dt * A_log2e, PTX)
        is_reset = _is_reset(p_reset, tt, s_r_t)
        # at the k-th reset: g_t = a_t reset_state[k], and nothing flows on to step tt - 1
        tl.store(p_drs + k * d * n + ch * n + nn, a * q, mask=m_s & is_reset)
        q = tl.where(is_reset, 0.0, a * q)
        k -= is_reset.to(tl.int64)
        r = tl.where(is_reset, tl.load(p_rs + k * s_rs_k, mask=m_s & is_reset & (tt > t_first), other=0.0), r)
    tl.store(p_dA + i_b * N * d + nn * d + ch, dA, mask=m_ch)
    if HAS_BIAS:
        tl.store(p_dbias + i_b * d + ch, dbias, mask=m_ch)


_RESTART_FWD, _RESTART_BWD = DirectLauncher(_restart_fwd_kernel), DirectLauncher(_restart_bwd_kernel)


def _row_starts(reset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[b]`` int32 each: every row's first reset step (``L`` when it has none) and the
    ``reset_state`` row of its first reset (the number of resets in the rows before it)."""
    L = reset.shape[1]
    count = reset.sum(1, dtype=torch.int32)
    first = torch.where(count > 0, reset.to(torch.uint8).argmax(1).to(torch.int32), L)
    return first.to(torch.int32), (count.cumsum(0, dtype=torch.int32) - count)


def _constexprs(d: int, N: int, z, delta_bias, delta_softplus: bool) -> dict:
    """The constexprs both kernels take: states and channels per program (one warp), which of
    ``z`` and ``delta_bias`` there are, softplus, and inline PTX / fast math (not in the
    interpreter)."""
    return dict(
        N=N,
        BD=min(32, next_pow2(d)),
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus),
        PTX=not interpreted(),
        FAST=not interpreted(),
    )


class _RestartFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, h_last, delta, A, C, z, delta_bias, reset, reset_state, delta_softplus):
        b, d, L = delta.shape
        n = A.shape[1]
        N = next_pow2(n)
        # [N, d]: A log2(e), zero rows past n
        A_log2e = torch.zeros(N, d, device=A.device, dtype=torch.float32)
        torch.mul(A.t(), LOG2E, out=A_log2e[:n])
        reset_u8 = reset.contiguous().view(torch.uint8)
        first, row0 = _row_starts(reset)
        y = y.clone()
        h_out = torch.empty(b, d, n, device=y.device, dtype=torch.float32)
        z_ = delta if z is None else z
        constexprs = _constexprs(d, N, z, delta_bias, delta_softplus)
        _RESTART_FWD[(triton.cdiv(d, constexprs["BD"]), b)](
            delta,
            A_log2e,
            C,
            z_,
            delta if delta_bias is None else delta_bias,
            reset_u8,
            reset_state,
            first,
            row0,
            y,
            h_last,
            h_out,
            L,
            d,
            n,
            delta.stride(),
            C.stride(),
            z_.stride(),
            reset_u8.stride(),
            reset_state.stride(),
            y.stride(),
            h_last.stride(),
            **constexprs,
            num_warps=1,
        )
        ctx.save_for_backward(delta, A_log2e, C, z, delta_bias, reset_u8, reset_state, first, row0)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.n = n
        ctx.dtypes = (
            delta.dtype,
            A.dtype,
            C.dtype,
            None if z is None else z.dtype,
            None if delta_bias is None else delta_bias.dtype,
        )
        return y, h_out

    @staticmethod
    def backward(ctx, dy, dh):
        delta, A_log2e, C, z, delta_bias, reset_u8, reset_state, first, row0 = ctx.saved_tensors
        b, d, L = delta.shape
        N, n = A_log2e.shape[0], ctx.n
        dy = torch.zeros_like(delta) if dy is None else dy
        dh = torch.zeros(b, d, n, device=delta.device, dtype=torch.float32) if dh is None else dh
        constexprs = _constexprs(d, N, z, delta_bias, ctx.delta_softplus)
        groups = triton.cdiv(d, constexprs["BD"])
        S = torch.empty(b, L, d, device=delta.device, dtype=torch.float32)
        # [b, L, d] memory, [b, d, L] views
        ddelta = torch.zeros(b, L, d, device=delta.device, dtype=torch.float32).transpose(1, 2)
        dz = None if z is None else torch.zeros(b, L, d, device=delta.device, dtype=torch.float32).transpose(1, 2)
        dC = torch.zeros(groups, b, L, N, device=delta.device, dtype=torch.float32)
        dA = torch.empty(b, N, d, device=delta.device, dtype=torch.float32)
        dbias = torch.empty(b, d, device=delta.device, dtype=torch.float32)
        drs = torch.zeros(reset_state.shape, device=delta.device, dtype=torch.float32)
        z_ = delta if z is None else z
        _RESTART_BWD[(groups, b)](
            delta,
            A_log2e,
            C,
            z_,
            delta if delta_bias is None else delta_bias,
            reset_u8,
            reset_state,
            first,
            row0,
            dy,
            dh,
            S,
            ddelta,
            ddelta if dz is None else dz,
            dC,
            dA,
            dbias,
            drs,
            L,
            d,
            n,
            delta.stride(),
            C.stride(),
            z_.stride(),
            reset_u8.stride(),
            reset_state.stride(),
            dy.stride(),
            dh.stride(),
            **constexprs,
            num_warps=1,
        )
        delta_dtype, A_dtype, C_dtype, z_dtype, bias_dtype = ctx.dtypes
        return (
            dy,
            dh,
            ddelta.to(delta_dtype),
            dA.sum(0)[:n].t().to(A_dtype),
            dC.sum(0)[..., :n].transpose(1, 2).to(C_dtype),
            None if dz is None else dz.to(z_dtype),
            None if delta_bias is None else dbias.sum(0).to(bias_dtype),
            None,
            drs.to(reset_state.dtype),
            None,
        )


def add_restart_states(y, h_last, delta, A, C, z, delta_bias, delta_softplus, reset, reset_state):
    """``(y, h_last)`` of the scan that restarts from zero at ``reset``, plus what the restart
    states ``reset_state`` ``[R, d, n]`` add (see the module): new tensors, differentiable in every
    float input. Shapes as :func:`~mamba_rl.kernels.triton_scan.selective_scan_triton`'s."""
    return _RestartFn.apply(y, h_last, delta, A, C, z, delta_bias, reset, reset_state, delta_softplus)
