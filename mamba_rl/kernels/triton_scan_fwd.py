"""The selective scan's forward kernels: a time range alone, and the scan proper.

See :mod:`~mamba_rl.kernels.triton_scan` for the layout, the time ranges and the checkpoints.
"""

from __future__ import annotations

import triton
import triton.language as tl

from mamba_rl.kernels.triton_math import _sigmoid_fast
from mamba_rl.kernels.triton_scan_common import (
    _at_step,
    _chunk_deltas,
    _fwd_chunk,
    _input_streams,
    _pick,
    _prefetch_chunk,
    _program,
    _put,
    _range_start,
    _raw_delta,
    _state_stream,
    _step,
    _store_local,
    _stream,
)


@triton.jit
def _scan_fwd_local_kernel(
    p_u,
    p_delta,
    p_A_log2e,
    p_B,
    p_bias,
    p_reset,
    p_loc,
    p_P,
    L,
    d,
    n,
    range_steps,
    s_u,
    s_dt,
    s_B,
    s_r,
    N: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BD: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_RESET: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_D: tl.constexpr,
    PTX: tl.constexpr,
    FAST: tl.constexpr,
):
    """Time range ``r = program_id(2)`` (steps ``[r R, (r + 1) R)``, ``R = range_steps``) of the
    recurrence, alone: the state it ends in from a zero state (``loc``) and the factor ``P = prod_t
    a_t`` by which the state entering it is carried to its end (``[b, ranges, N, d]`` each). Each
    chunk's deltas are loaded a chunk ahead (:func:`_chunk_deltas`). ``s_*``: each stream's strides
    (batch, channel or state, step); the resets' (batch, step)."""
    i_b = tl.program_id(1).to(tl.int64)
    i_r = tl.program_id(2)
    lane = tl.arange(0, BD)[None, :]
    ch = tl.program_id(0) * BD + lane
    ch_pf, nn, m_ch, m_n, m_s, A_log2e, bias = _program(p_A_log2e, p_bias, ch, d, n, N, HAS_BIAS, EVEN_D)
    if EVEN_N:  # no padded states: B and C load unmasked
        m_n = None
    us = _stream(p_u, s_u, i_b, ch, ch_pf)
    dts = _stream(p_delta, s_dt, i_b, ch, ch_pf)
    Bs = _state_stream(p_B, s_B, i_b, nn)
    s_r_b, s_r_t = s_r
    p_reset += i_b * s_r_b
    # every stream starts at the range's first step; L: the range's length
    t_lo, L = _range_start(i_r, range_steps, L)
    us, dts, Bs = _at_step(us, t_lo), _at_step(dts, t_lo), _at_step(Bs, t_lo)
    ins = (dts, us, Bs, (p_reset + t_lo * s_r_t, s_r_t))
    prog = (A_log2e, bias, m_ch, lane)
    h = tl.zeros([N, BD], dtype=tl.float32)
    acc = (tl.zeros([1, BD], dtype=tl.float32), tl.full([1, 1], 1, tl.int1))
    raws = _chunk_deltas(dts, 0, m_ch, L, bias, BLOCK_T, HAS_BIAS)
    for i_c in range(tl.cdiv(L, BLOCK_T)):
        # past the range's end dt = 0, x = 0: h unchanged
        h, acc, raws = _fwd_chunk(
            h, acc, i_c, raws, prog, m_n, ins, L, BLOCK_T, HAS_BIAS, SOFTPLUS, HAS_RESET, PTX, FAST
        )
    sum_dt, kept = acc
    _store_local(p_loc, p_P, h, sum_dt, A_log2e, kept, i_b, i_r, nn, ch, m_s, d, N, HAS_RESET, PTX)


@triton.jit
def _scan_fwd_kernel(
    p_u,
    p_delta,
    p_A_log2e,
    p_B,
    p_C,
    p_D,
    p_z,
    p_bias,
    p_reset,
    p_y,
    p_h_ckpt,
    p_h_in,
    p_h_end,
    L,
    d,
    n,
    n_chunks,
    range_segs,
    pieces_per_range,
    n_pieces,
    s_u,
    s_dt,
    s_z,
    s_B,
    s_C,
    s_y,
    s_r,
    N: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BD: tl.constexpr,
    SEG_CHUNKS: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_RESET: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_D: tl.constexpr,
    PTX: tl.constexpr,
    FAST: tl.constexpr,
):
    """Time range ``program_id(2)`` of the scan from the state entering it (``p_h_in``): writes
    ``y``, the state entering every ``SEG_CHUNKS``-th chunk (``p_h_ckpt``, for the backward) and
    the state the range ends in (``p_h_end``). ``s_*``: each stream's strides (batch, channel or
    state, step); the resets' (batch, step)."""
    i_d = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    i_r = tl.program_id(2)
    ch = i_d * BD + tl.arange(0, BD)[None, :]
    ch_pf, nn, m_ch, m_n, m_s, A_log2e, bias = _program(p_A_log2e, p_bias, ch, d, n, N, HAS_BIAS, EVEN_D)
    if EVEN_N:  # no padded states: B and C load unmasked
        m_n = None
    if HAS_D:
        D_ch = tl.load(p_D + ch, mask=m_ch, other=0.0).to(tl.float32)
    us, dts, zs, Bs, Cs = _input_streams(p_u, p_delta, p_z, p_B, p_C, s_u, s_dt, s_z, s_B, s_C, i_b, ch, ch_pf, nn)
    s_y_b, s_y_d, s_y_t = s_y
    p_y += i_b * s_y_b + ch * s_y_d
    s_r_b, s_r_t = s_r
    p_reset += i_b * s_r_b
    # this range's steps [t_lo, t_lo + L): every stream starts at t_lo, so that the loop below is
    # the one-range loop (the same code; ptxas schedules variants of it up to 2x slower)
    range_steps = range_segs * SEG_CHUNKS * BLOCK_T
    t_lo, L = _range_start(i_r, range_steps, L)
    us, dts, zs = _at_step(us, t_lo), _at_step(dts, t_lo), _at_step(zs, t_lo)
    Bs, Cs = _at_step(Bs, t_lo), _at_step(Cs, t_lo)
    p_y += t_lo * s_y_t
    p_z, _, s_z_t = zs
    resets = (p_reset + t_lo * s_r_t, s_r_t)
    # [b, n_pieces + 1, N, d]: the state entering each local range (h0 first)
    h = tl.load(p_h_in + (i_b * (n_pieces + 1) + i_r * pieces_per_range) * N * d + nn * d + ch, mask=m_s, other=0.0)
    # [b, n_seg + 1, N, d]: the states entering every SEG_CHUNKS-th chunk, for the backward
    n_seg = tl.cdiv(n_chunks, SEG_CHUNKS)
    p_h_ckpt += (i_b * (n_seg + 1) + i_r * range_segs) * N * d + nn * d + ch
    lane = tl.arange(0, BD)[None, :]
    jj = tl.arange(0, BLOCK_T)[:, None, None]
    for i_c in range(tl.cdiv(L, BLOCK_T)):
        # [BLOCK_T, 1, BD]: the chunk's outputs, stored after its last step
        y_chunk = tl.zeros([BLOCK_T, 1, BD], dtype=tl.float32)
        t_pf = (i_c + 1) * BLOCK_T
        _prefetch_chunk(dts, Bs, t_pf, L, lane, BLOCK_T, PTX)
        _prefetch_chunk(us, Cs, t_pf, L, lane, BLOCK_T, PTX)
        if HAS_Z:
            _prefetch_chunk(zs, None, t_pf, L, lane, BLOCK_T, PTX)
        for j in tl.static_range(BLOCK_T):
            t = tl.full([1, 1], 0, tl.int32) + i_c * BLOCK_T + j
            raw_dt = _raw_delta(dts, t, m_ch & (t < L), bias, HAS_BIAS)
            h, dt, u, C_t = _step(
                h, A_log2e, raw_dt, us, Bs, Cs, resets, t, m_ch, m_n, L, SOFTPLUS, HAS_RESET, PTX, FAST
            )
            y = tl.sum(h * C_t, axis=0, keep_dims=True)
            if HAS_D:
                y += D_ch * u
            if HAS_Z:
                z = tl.load(p_z + t * s_z_t, mask=m_ch & (t < L), other=0.0).to(tl.float32)
                y *= z * _sigmoid_fast(z, FAST)
            y_chunk = _put(y_chunk, jj, j, y)
        # stores after the chunk: a store between two steps would keep the next step's loads (which
        # it might alias) from issuing early
        for j in tl.static_range(BLOCK_T):
            t = tl.full([1, 1], 0, tl.int32) + i_c * BLOCK_T + j
            tl.store(p_y + t * s_y_t, _pick(y_chunk, jj, j).to(p_y.dtype.element_ty), mask=m_ch & (t < L))
        tl.store(p_h_ckpt + ((i_c + 1) // SEG_CHUNKS) * N * d, h, mask=m_s & ((i_c + 1) % SEG_CHUNKS == 0))
    # [b, ranges, N, d]: the state each range ends in (the last one's is h_last)
    tl.store(p_h_end + (i_b * tl.num_programs(2) + i_r) * N * d + nn * d + ch, h, mask=m_s)
