"""Fused Triton depthwise causal conv with initial state, resets and final state, forward and backward.

Twin of :func:`mamba_rl.kernels.naive.causal_conv1d_ref`. The conv is a stencil of width ``W``
(4 in Mamba), so every output is independent: programs tile ``[BLOCK_D, BLOCK_T]`` over
(batch, channels, time) and read their few neighbours' inputs from cache. An input ``x_s`` counts
for output ``t`` only if no reset lies in ``(s, t]``; ``initial_state`` holds ``x_{-W+1..-1}``.
Where a reset cuts it off, the output reads zero or, with ``reset_state``, the slot of the
history entering the last reset ``r`` at or before ``t`` (``s - r + W - 1``; its row in
``reset_state`` from a per-step int32 index), always through selects: a non-finite input before a
reset does not reach outputs after it. The program of the last time tile also writes the final
conv state: the last ``W - 1`` inputs, zero (or the restart history's) before the last reset.

The backward is two kernels. The first walks a range of time tiles per program: it recomputes
each output's pre-activation and writes ``dy'``, the gradient at it (fp32, a ``b * d * L``
buffer), and adds up the ``dweight`` and ``dbias`` terms in registers, one partial sum per
(batch, range) that the host adds up (deterministic, no atomics). The second reads ``dy'`` at
the ``W`` later times of each input for ``dx``, adds the final state's gradient to the last
``W - 1`` inputs, writes ``d initial_state`` from the first time tile and, at each reset step,
the gradient of the history entering it (from the ``dy'`` of the ``W - 1`` outputs that read it
and the final state's gradient). Without ``reset_state`` those code paths are compiled out. Storing
``dy'`` costs ``2 b d L`` fp32 of traffic and saves the ``W * W`` input loads and ``W`` sigmoids
per output that recomputing it at every shift would take (``benchmarks/NOTES_scan.md``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mamba_rl.kernels.naive import is_silu
from mamba_rl.kernels.triton_host import empty_same_order, next_pow2
from mamba_rl.kernels.triton_launch import DirectLauncher

__all__ = ["causal_conv1d_triton", "CONV_CONFIG"]


@triton.jit
def _load_tile(src, o_d, m_d, o_c, m_c):
    """The ``[BD, BC]`` tile at channels ``o_d`` and columns ``o_c`` of ``src`` = (a ``[d, ...]``
    tensor's pointer, channel stride, column stride), zero where ``m_d`` or ``m_c`` is off."""
    p, s_d, s_c = src
    return tl.load(p + o_d[:, None] * s_d + o_c[None, :] * s_c, mask=m_d[:, None] & m_c[None, :], other=0.0)


@triton.jit
def _load_seq(seq, o_d, m_d, t, L):
    """A ``[d, L]`` sequence ``seq`` = (pointer, channel stride, time stride) at channels ``o_d``
    and times ``t`` ``[BT]``: ``[BD, BT]``, zero outside ``[0, L)``."""
    return _load_tile(seq, o_d, m_d, t, (t >= 0) & (t < L))


@triton.jit
def _weight(p_w, o_d, m_d, k, W: tl.constexpr):
    """Tap ``k`` of the ``[d, W]`` weight at channels ``o_d``, fp32 ``[BD]``."""
    return tl.load(p_w + o_d * W + k, mask=m_d, other=0.0).to(tl.float32)


@triton.jit
def _load_x(xs, o_d, m_d, s, L, init_here, W: tl.constexpr, HAS_INIT: tl.constexpr):
    """Inputs at times ``s`` ``[BT]`` (negative: from the initial state) for channels ``o_d``.
    ``xs`` = (x, initial_state), each (pointer, channel stride, time stride). ``init_here`` (a
    scalar) says whether any of the program's times can be negative: the other programs skip the
    initial state's loads."""
    x, init = xs
    b_x = _load_seq(x, o_d, m_d, s, L).to(tl.float32)
    if HAS_INIT:
        if init_here:
            m_i = (s < 0) & (s >= 1 - W)
            b_x += _load_tile(init, o_d, m_d, s + W - 1, m_i).to(tl.float32)
    return b_x


@triton.jit
def _not_reset(p_reset, s, L):
    """True where there is no reset at time ``s`` (times outside ``[0, L)`` have none)."""
    return tl.load(p_reset + s, mask=(s >= 0) & (s < L), other=0) == 0


@triton.jit
def _step_back(p_reset, t, j: tl.constexpr, L, b_valid, b_last, HAS_RESET: tl.constexpr, HAS_RS: tl.constexpr):
    """Tap ``j`` of outputs ``t`` ``[BT]``: ``b_valid`` (no reset in ``(t - j, t]``) and, with
    ``HAS_RS``, ``b_last`` (the latest reset in it, where there is one), from tap ``j - 1``'s."""
    if HAS_RESET and j > 0:
        b_keep = _not_reset(p_reset, t - j + 1, L)
        if HAS_RS:
            b_last = tl.where(b_valid & ~b_keep, t - j + 1, b_last)
        b_valid = b_valid & b_keep
    return b_valid, b_last


@triton.jit
def _restart_x(rs, o_d, m_d, t, j: tl.constexpr, b_valid, b_last, W: tl.constexpr):
    """The inputs ``x_{t-j}`` that outputs ``t`` ``[BT]`` read from the restart history entering
    ``s = b_last``, the last reset in ``(t - j, t]`` (``b_valid`` off): its slot ``t - j - s + W -
    1``, zero below 0; zero where ``b_valid`` (the input itself counts there). ``rs`` = (reset_state
    ``[R, d, W - 1]``, each step's row in it ``[L]`` int32, reset_state's three strides)."""
    p_rs, p_ridx, s_rs_k, s_rs_d, s_rs_j = rs
    slot = t - j - b_last + (W - 1)
    m = ~b_valid & (slot >= 0)
    k = tl.load(p_ridx + b_last, mask=m, other=0)
    return tl.load(
        p_rs + k[None, :] * s_rs_k + o_d[:, None] * s_rs_d + slot[None, :] * s_rs_j,
        mask=m_d[:, None] & m[None, :],
        other=0.0,
    ).to(tl.float32)


@triton.jit
def _conv_pre(
    xs,
    cv,
    o_d,
    m_d,
    t,
    L,
    init_here,
    W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_INIT: tl.constexpr,
    HAS_RESET: tl.constexpr,
    HAS_RS: tl.constexpr,
):
    """Pre-activation ``bias + sum_j w[W-1-j] x_{t-j}`` over inputs after the last reset (and,
    with ``HAS_RS``, the restart history's before it): ``[BD, BT]``. Selects, not products, so
    that a non-finite input before a reset does not reach outputs after it. ``cv`` = (weight,
    bias, resets, restart histories ``rs``, :func:`_restart_x`)."""
    p_w, p_bias, p_reset, rs = cv
    b_acc = tl.zeros([o_d.shape[0], t.shape[0]], dtype=tl.float32)
    if HAS_BIAS:
        b_acc += tl.load(p_bias + o_d, mask=m_d, other=0.0).to(tl.float32)[:, None]
    b_valid = t >= -W
    b_last = t
    for j in tl.static_range(W):
        b_valid, b_last = _step_back(p_reset, t, j, L, b_valid, b_last, HAS_RESET, HAS_RS)
        b_w = _weight(p_w, o_d, m_d, W - 1 - j, W)
        b_x = _load_x(xs, o_d, m_d, t - j, L, init_here, W, HAS_INIT)
        b_x = tl.where(b_valid[None, :], b_x, 0.0)
        if HAS_RS and j > 0:
            b_x += _restart_x(rs, o_d, m_d, t, j, b_valid, b_last, W)
        b_acc += b_w[:, None] * b_x
    return b_acc


@triton.jit
def _tail_kept(p_reset, s, L, W: tl.constexpr, HAS_RESET: tl.constexpr):
    """True where input ``s`` ``[BT]`` survives into the final conv state: no reset in ``(s, L - 1]``."""
    b_kept = s >= -W
    if HAS_RESET:
        for j in tl.static_range(1, W - 1):
            b_kept = b_kept & _not_reset(p_reset, s + j, L)
    return b_kept


@triton.jit
def _tail_restart(p_reset, rs, o_d, m_d, s, L, W: tl.constexpr):
    """The final state's inputs ``s`` ``[BT]`` that a reset in ``(s, L - 1]`` cut off, from the
    restart history entering the last one ``r`` (its slot ``s - r + W - 1``): ``[BD, BT]``, zero
    where no reset cut them."""
    b_last = s
    for j in tl.static_range(1, W - 1):
        b_last = tl.where(_not_reset(p_reset, s + j, L), b_last, s + j)
    return _restart_x(rs, o_d, m_d, s, 0, b_last == s, b_last, W)


@triton.jit
def _final_grad(dfin, p_reset, o_d, m_d, s, L, W: tl.constexpr, HAS_RESET: tl.constexpr):
    """What the final state's gradient ``dfin`` (pointer, strides) adds to the gradient of inputs
    ``s`` ``[BT]``: ``[BD, BT]`` (zero outside the last ``W - 1`` times)."""
    k = s - (L - W + 1)
    b_df = _load_tile(dfin, o_d, m_d, k, (k >= 0) & (k < W - 1)).to(tl.float32)
    return tl.where(_tail_kept(p_reset, s, L, W, HAS_RESET)[None, :], b_df, 0.0)


@triton.jit
def _conv_dx(cv, dyps, o_d, m_d, s, L, W: tl.constexpr, HAS_RESET: tl.constexpr):
    """``dx_s = sum_j w[W-1-j] dy'_{s+j}`` over outputs with no reset in ``(s, s+j]``: ``[BD, BT]``,
    ``dy'`` read from ``dyps`` (pointer, strides; written by the first pass)."""
    p_w, _, p_reset, _ = cv
    b_dx = tl.zeros([o_d.shape[0], s.shape[0]], dtype=tl.float32)
    b_valid = s >= -W
    for j in tl.static_range(W):
        if HAS_RESET and j > 0:
            b_valid = b_valid & _not_reset(p_reset, s + j, L)
        b_w = _weight(p_w, o_d, m_d, W - 1 - j, W)
        b_dyp = _load_seq(dyps, o_d, m_d, s + j, L)
        b_dx += b_w[:, None] * tl.where(b_valid[None, :], b_dyp, 0.0)
    return b_dx


@triton.jit
def _restart_grad(cv, dyps, dfin, p_drs, o_d, m_d, s, L, d, W: tl.constexpr, HAS_DFIN: tl.constexpr):
    """At each reset ``s`` ``[BT]`` of the tile (its row ``k`` in ``reset_state``), the gradient of
    the history entering it, ``d reset_state[k, :, m]`` (``[R, d, W - 1]``, contiguous): slot ``m``
    stands for time ``s - (W - 1) + m``, read by outputs ``s + i``, ``i <= m``, through weight ``m -
    i`` while no reset lies in ``(s, s + i]``; and by the final state when ``s`` is the row's last
    reset and ``s + m >= L``."""
    p_w, _, p_reset, rs = cv
    _, p_ridx, _, _, _ = rs
    m_s = (s >= 0) & (s < L)
    b_here = ~_not_reset(p_reset, s, L) & m_s
    k = tl.load(p_ridx + s, mask=b_here, other=0)
    b_valid = m_s
    dyps_ = ()
    for i in tl.static_range(W - 1):
        if i > 0:
            b_valid = b_valid & _not_reset(p_reset, s + i, L)
        b_dyp = _load_seq(dyps, o_d, m_d, s + i, L)
        dyps_ = dyps_ + (tl.where(b_valid[None, :], b_dyp, 0.0),)
    for m in tl.static_range(W - 1):
        b_g = tl.zeros([o_d.shape[0], s.shape[0]], dtype=tl.float32)
        for i in tl.static_range(m + 1):
            b_g += _weight(p_w, o_d, m_d, m - i, W)[:, None] * dyps_[i]
        if HAS_DFIN:
            # b_valid: no reset in (s, s + W - 2], which holds (s, L - 1] when s + m >= L
            o_f = s + m - L
            b_g += _load_tile(dfin, o_d, m_d, o_f, b_valid & (o_f >= 0)).to(tl.float32)
        tl.store(p_drs + (k[None, :] * d + o_d[:, None]) * (W - 1) + m, b_g, mask=m_d[:, None] & b_here[None, :])


@triton.jit
def _tile(d, L, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """A program's time tile or range ``program_id(0)``, batch row (int64), channels ``[BD]``,
    times ``[BT]`` (of time tile ``program_id(0)``) and their masks."""
    i_t, i_d = tl.program_id(0), tl.program_id(1)
    i_b = tl.program_id(2).to(tl.int64)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    o_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    return i_t, i_b, o_d, o_t, o_d < d, o_t < L


@triton.jit
def _restarts(p_rs, p_ridx, i_b, L, s_rs):
    """Batch row ``i_b``'s ``rs`` for :func:`_restart_x`: the restart histories ``[R, d, W - 1]``,
    the row's part of each step's row in them ``[b, L]``, and the histories' strides."""
    s_rs_k, s_rs_d, s_rs_j = s_rs
    return (p_rs, p_ridx + i_b * L, s_rs_k, s_rs_d, s_rs_j)


@triton.jit
def _conv_fwd_kernel(
    p_x,
    p_w,
    p_bias,
    p_init,
    p_reset,
    p_rs,
    p_ridx,
    p_y,
    p_fin,
    L,
    d,
    s_x,
    s_i,
    s_y,
    s_r_b,
    s_rs,
    W: tl.constexpr,
    WP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_INIT: tl.constexpr,
    HAS_RESET: tl.constexpr,
    HAS_RS: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """The conv's outputs ``y`` of a ``[BLOCK_D, BLOCK_T]`` tile and, from the last time tile, the
    final state. ``s_*``: each tensor's strides, in its dims' order (``s_r_b``: the resets' batch
    stride)."""
    s_x_b, s_x_d, s_x_t = s_x
    s_i_b, s_i_d, s_i_t = s_i
    s_y_b, s_y_d, s_y_t = s_y
    i_t, i_b, o_d, o_t, m_d, m_t = _tile(d, L, BLOCK_D, BLOCK_T)
    xs = ((p_x + i_b * s_x_b, s_x_d, s_x_t), (p_init + i_b * s_i_b, s_i_d, s_i_t))
    p_reset += i_b * s_r_b
    rs = _restarts(p_rs, p_ridx, i_b, L, s_rs)
    cv = (p_w, p_bias, p_reset, rs)
    # only the first tile reads the initial state (times -W+1 .. -1)
    init_here = i_t * BLOCK_T < W - 1
    b_pre = _conv_pre(xs, cv, o_d, m_d, o_t, L, init_here, W, HAS_BIAS, HAS_INIT, HAS_RESET, HAS_RS)
    if SILU:
        b_pre = b_pre * tl.sigmoid(b_pre)
    tl.store(
        p_y + i_b * s_y_b + o_d[:, None] * s_y_d + o_t[None, :] * s_y_t,
        b_pre.to(p_y.dtype.element_ty),
        mask=m_d[:, None] & m_t[None, :],
    )
    # the last time tile writes the final state [b, d, W - 1]: inputs L-W+1 .. L-1 (the initial
    # state's where negative), zero (or the restart history's) where a later reset cut them off
    if i_t == tl.num_programs(0) - 1:
        o_k = tl.arange(0, WP)
        s = L - (W - 1) + o_k
        b_fin = _load_x(xs, o_d, m_d, s, L, L < W - 1, W, HAS_INIT)
        b_fin = tl.where(_tail_kept(p_reset, s, L, W, HAS_RESET)[None, :], b_fin, 0.0)
        if HAS_RS:
            b_fin += _tail_restart(p_reset, rs, o_d, m_d, s, L, W)
        tl.store(
            p_fin + (i_b * d + o_d[:, None]) * (W - 1) + o_k[None, :],
            b_fin.to(p_fin.dtype.element_ty),
            mask=m_d[:, None] & (o_k < W - 1)[None, :],
        )


@triton.jit
def _dyp_tile(
    xs,
    cv,
    dys,
    dyps,
    b_dw,
    b_db,
    o_d,
    m_d,
    i_t,
    L,
    W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_INIT: tl.constexpr,
    HAS_RESET: tl.constexpr,
    HAS_RS: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """Time tile ``i_t``: its ``dy'``, the gradient at the pre-activation (read from ``dys``
    through the silu, stored to ``dyps`` for the second pass), added with its dweight terms to
    the running ``[BD, BT]`` sums ``b_dw`` (a tuple, one per weight) and ``b_db``."""
    _, _, p_reset, rs = cv
    o_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    m_t = o_t < L
    b_dyp = _load_seq(dys, o_d, m_d, o_t, L).to(tl.float32)
    if SILU:
        b_pre = _conv_pre(xs, cv, o_d, m_d, o_t, L, HAS_INIT, W, HAS_BIAS, HAS_INIT, HAS_RESET, HAS_RS)
        b_sig = tl.sigmoid(b_pre)
        b_dyp = b_dyp * b_sig * (1.0 + b_pre * (1.0 - b_sig))
    p_dyp, s_p_d, s_p_t = dyps
    tl.store(p_dyp + o_d[:, None] * s_p_d + o_t[None, :] * s_p_t, b_dyp, mask=m_d[:, None] & m_t[None, :])
    b_valid = m_t
    b_last = o_t
    terms = ()
    for j in tl.static_range(W):
        b_valid, b_last = _step_back(p_reset, o_t, j, L, b_valid, b_last, HAS_RESET, HAS_RS)
        b_x = _load_x(xs, o_d, m_d, o_t - j, L, HAS_INIT, W, HAS_INIT)
        b_term = tl.where(b_valid[None, :], b_x * b_dyp, 0.0)
        if HAS_RS and j > 0:
            # past the tile's end b_dyp is zero, whatever the restart history read there
            b_term += _restart_x(rs, o_d, m_d, o_t, j, b_valid | ~m_t, b_last, W) * b_dyp
        terms = terms + (b_dw[j] + b_term,)
    return terms, b_db + b_dyp


@triton.jit
def _conv_bwd_dyp_kernel(
    p_x,
    p_w,
    p_bias,
    p_init,
    p_reset,
    p_rs,
    p_ridx,
    p_dy,
    p_dyp,
    p_dw,
    p_dbias,
    L,
    d,
    n_tblocks,
    range_tiles,
    s_x,
    s_i,
    s_dy,
    s_p,
    s_r_b,
    s_rs,
    W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_INIT: tl.constexpr,
    HAS_RESET: tl.constexpr,
    HAS_RS: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """``dy'`` (the gradient at the pre-activation) of ``range_tiles`` time tiles, written to
    ``p_dyp``, and their sums of the dweight and dbias terms, one partial row
    per (batch, range): the terms add up in registers over the tiles, and are summed over the
    tile's lanes once at the end. The first tile, the only one that reads the initial state
    (``BLOCK_T >= W - 1``), runs before the loop. ``s_*``: each tensor's strides, in its dims'
    order (``s_r_b``: the resets' batch stride)."""
    s_x_b, s_x_d, s_x_t = s_x
    s_i_b, s_i_d, s_i_t = s_i
    s_dy_b, s_dy_d, s_dy_t = s_dy
    s_p_b, s_p_d, s_p_t = s_p
    i_r, i_b, o_d, _, m_d, _ = _tile(d, L, BLOCK_D, BLOCK_T)
    xs = ((p_x + i_b * s_x_b, s_x_d, s_x_t), (p_init + i_b * s_i_b, s_i_d, s_i_t))
    p_reset += i_b * s_r_b
    dys = (p_dy + i_b * s_dy_b, s_dy_d, s_dy_t)
    dyps = (p_dyp + i_b * s_p_b, s_p_d, s_p_t)
    cv = (p_w, p_bias, p_reset, _restarts(p_rs, p_ridx, i_b, L, s_rs))
    b_dw = ()
    for _ in tl.static_range(W):
        b_dw = b_dw + (tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32),)
    b_db = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
    t_lo = i_r * range_tiles
    if t_lo == 0:
        b_dw, b_db = _dyp_tile(
            xs, cv, dys, dyps, b_dw, b_db, o_d, m_d, 0, L, W, HAS_BIAS, HAS_INIT, HAS_RESET, HAS_RS, SILU, BLOCK_T
        )
        t_lo = 1
    for i_t in range(t_lo, tl.minimum((i_r + 1) * range_tiles, n_tblocks)):
        b_dw, b_db = _dyp_tile(
            xs, cv, dys, dyps, b_dw, b_db, o_d, m_d, i_t, L, W, HAS_BIAS, False, HAS_RESET, HAS_RS, SILU, BLOCK_T
        )
    p_dw += ((i_b * tl.num_programs(0) + i_r) * d + o_d) * W
    for j in tl.static_range(W):
        tl.store(p_dw + (W - 1 - j), tl.sum(b_dw[j], axis=1), mask=m_d)
    if HAS_BIAS:
        tl.store(p_dbias + (i_b * tl.num_programs(0) + i_r) * d + o_d, tl.sum(b_db, axis=1), mask=m_d)


@triton.jit
def _conv_bwd_dx_kernel(
    p_w,
    p_reset,
    p_rs,
    p_ridx,
    p_dfin,
    p_dyp,
    p_dx,
    p_dinit,
    p_drs,
    L,
    d,
    s_df,
    s_p,
    s_dx,
    s_r_b,
    s_rs,
    W: tl.constexpr,
    WP: tl.constexpr,
    HAS_INIT: tl.constexpr,
    HAS_RESET: tl.constexpr,
    HAS_RS: tl.constexpr,
    HAS_DFIN: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """``dx`` of a tile from ``dy'`` (``p_dyp``, written by the first pass), with the final
    state's gradient, ``d reset_state`` at the tile's resets and ``d initial_state`` from the
    first tile. ``s_*``: each tensor's strides, in its dims' order (``s_r_b``: the resets' batch
    stride)."""
    s_df_b, s_df_d, s_df_k = s_df
    s_p_b, s_p_d, s_p_t = s_p
    s_dx_b, s_dx_d, s_dx_t = s_dx
    i_t, i_b, o_d, o_t, m_d, m_t = _tile(d, L, BLOCK_D, BLOCK_T)
    p_reset += i_b * s_r_b
    dfin = (p_dfin + i_b * s_df_b, s_df_d, s_df_k)
    dyps = (p_dyp + i_b * s_p_b, s_p_d, s_p_t)
    cv = (p_w, None, p_reset, _restarts(p_rs, p_ridx, i_b, L, s_rs))
    b_dx = _conv_dx(cv, dyps, o_d, m_d, o_t, L, W, HAS_RESET)
    if HAS_DFIN:  # the tiles that hold some of the last W - 1 inputs
        if (i_t + 1) * BLOCK_T > L - W + 1:
            b_dx += _final_grad(dfin, p_reset, o_d, m_d, o_t, L, W, HAS_RESET)
    tl.store(
        p_dx + i_b * s_dx_b + o_d[:, None] * s_dx_d + o_t[None, :] * s_dx_t,
        b_dx.to(p_dx.dtype.element_ty),
        mask=m_d[:, None] & m_t[None, :],
    )
    if HAS_RS:
        _restart_grad(cv, dyps, dfin, p_drs, o_d, m_d, o_t, L, d, W, HAS_DFIN)
    # the first time tile also gives the initial state's gradient (times -W+1 .. -1)
    if HAS_INIT:
        if i_t == 0:
            o_s = tl.arange(0, WP) - (W - 1)
            m_s = o_s < 0
            b_dinit = _conv_dx(cv, dyps, o_d, m_d, o_s, L, W, HAS_RESET)
            if HAS_DFIN:  # a sequence shorter than W - 1 leaves some of them in the final state
                b_dinit += _final_grad(dfin, p_reset, o_d, m_d, o_s, L, W, HAS_RESET)
            tl.store(
                p_dinit + (i_b * d + o_d[:, None]) * (W - 1) + (o_s + W - 1)[None, :],
                b_dinit.to(p_dinit.dtype.element_ty),
                mask=m_d[:, None] & m_s[None, :],
            )


# launched through their compiled binaries after the first call (see triton_launch)
_CONV_FWD, _CONV_BWD_DYP, _CONV_BWD_DX = (
    DirectLauncher(k) for k in (_conv_fwd_kernel, _conv_bwd_dyp_kernel, _conv_bwd_dx_kernel)
)

# Tile sizes, set by hand from H100 sweeps (no autotuning). bwd_range_tiles: time tiles per
# program of the dy' / dweight kernel (its dweight terms are summed over the tile's lanes once per
# program).
CONV_CONFIG = {
    "fwd_block_d": 16,
    "fwd_block_t": 64,
    "fwd_warps": 4,
    "bwd_range_tiles": 32,
    "bwd_block_d": 16,
    "bwd_block_t": 32,
    "bwd_warps": 4,
}


def _tail_block(width: int) -> int:
    """Power-of-two tile width that holds the ``width - 1`` times of a conv state."""
    return max(2, next_pow2(width - 1))


def _blocks(kind: str, d: int, L: int, width: int) -> tuple[int, int]:
    """Channels and steps per tile; a tile spans at least ``width - 1`` steps, so that only the
    first one reads the initial state."""
    block_d = min(CONV_CONFIG[f"{kind}_block_d"], next_pow2(d))
    block_t = max(min(CONV_CONFIG[f"{kind}_block_t"], max(16, next_pow2(L))), next_pow2(width - 1))
    return block_d, block_t


def _restart_rows(reset: torch.Tensor | None, reset_state: torch.Tensor | None, width: int):
    """``[b, L]`` int32: at each reset step its row in ``reset_state`` (``reset.nonzero()``
    order); None when nothing restarts from a history (no ``reset_state``, no rows of it, or
    ``width`` 1: no history)."""
    if reset is None or reset_state is None or reset_state.shape[0] == 0 or width == 1:
        return None
    return (reset.reshape(-1).cumsum(0, dtype=torch.int32) - 1).view(reset.shape)


def _launch_args(x, bias, init, reset_u8, ridx, reset_state):
    """What the kernels of both passes take for the optional tensors: the initial state, the resets
    and their batch stride, the restart histories and each step's row in them (``x`` or the resets
    stand in for an absent one, unread), and the constexpr flags that say which are there."""
    init_ = x if init is None else init
    r_ = x if reset_u8 is None else reset_u8
    rs_, ridx_ = (x, r_) if ridx is None else (reset_state, ridx)
    flags = dict(
        HAS_BIAS=bias is not None, HAS_INIT=init is not None, HAS_RESET=reset_u8 is not None, HAS_RS=ridx is not None
    )
    return init_, r_, 0 if reset_u8 is None else reset_u8.stride(0), rs_, ridx_, flags


class _CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, reset, reset_state, silu):
        b, d, L = x.shape
        width = weight.shape[1]
        weight = weight.contiguous()
        init = None if initial_state is None else initial_state.contiguous()
        reset_u8 = None if reset is None else reset.contiguous().view(torch.uint8)
        ridx = _restart_rows(reset, reset_state, width)
        y = empty_same_order(x)
        init_, r_, r_stride, rs_, ridx_, flags = _launch_args(x, bias, init, reset_u8, ridx, reset_state)
        if L > 0:
            final = torch.empty(b, d, width - 1, device=x.device, dtype=x.dtype)
            block_d, block_t = _blocks("fwd", d, L, width)
            _CONV_FWD[(triton.cdiv(L, block_t), triton.cdiv(d, block_d), b)](
                x,
                weight,
                weight if bias is None else bias,
                init_,
                r_,
                rs_,
                ridx_,
                y,
                final,
                L,
                d,
                x.stride(),
                init_.stride(),
                y.stride(),
                r_stride,
                rs_.stride(),
                W=width,
                WP=_tail_block(width),
                **flags,
                SILU=silu,
                BLOCK_D=block_d,
                BLOCK_T=block_t,
                num_warps=CONV_CONFIG["fwd_warps"],
            )
        else:  # no input: the state is the initial one
            final = x.new_zeros(b, d, width - 1) if init is None else init.to(x.dtype, copy=True)
        ctx.save_for_backward(x, weight, bias, init, reset_u8, reset_state, ridx)
        ctx.silu = silu
        ctx.set_materialize_grads(False)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, weight, bias, init, reset_u8, reset_state, ridx = ctx.saved_tensors
        b, d, L = x.shape
        width = weight.shape[1]
        if dy is None and dfinal is None:
            return None, None, None, None, None, None, None
        drs = None if reset_state is None else torch.zeros_like(reset_state, dtype=torch.float32)
        if L == 0:  # the final state is the initial one
            dinit = None if init is None or dfinal is None else dfinal.to(init.dtype)
            return (
                torch.zeros_like(x),
                torch.zeros_like(weight),
                None if bias is None else torch.zeros_like(bias),
                dinit,
                None,
                None if drs is None else drs.to(reset_state.dtype),
                None,
            )
        if dy is None:
            dy = x.new_zeros(()).expand(b, d, L)
        block_d, block_t = _blocks("bwd", d, L, width)
        n_tblocks = triton.cdiv(L, block_t)
        range_tiles = CONV_CONFIG["bwd_range_tiles"]
        n_ranges = triton.cdiv(n_tblocks, range_tiles)
        dx = empty_same_order(x)
        dinit = None if init is None else torch.empty(b, d, width - 1, device=x.device, dtype=init.dtype)
        # per (batch, time range) partial sums of dweight and dbias, added up below (deterministic)
        dw = torch.empty(b * n_ranges, d, width, device=x.device, dtype=torch.float32)
        dbias = None if bias is None else torch.empty(b * n_ranges, d, device=x.device, dtype=torch.float32)
        # dy' (fp32) between the two kernels
        dyp = empty_same_order(x, torch.float32)
        init_, r_, r_stride, rs_, ridx_, flags = _launch_args(x, bias, init, reset_u8, ridx, reset_state)
        df_ = x if dfinal is None else dfinal
        n_dgroups = triton.cdiv(d, block_d)
        _CONV_BWD_DYP[(n_ranges, n_dgroups, b)](
            x,
            weight,
            weight if bias is None else bias,
            init_,
            r_,
            rs_,
            ridx_,
            dy,
            dyp,
            dw,
            dw if dbias is None else dbias,
            L,
            d,
            n_tblocks,
            range_tiles,
            x.stride(),
            init_.stride(),
            dy.stride(),
            dyp.stride(),
            r_stride,
            rs_.stride(),
            W=width,
            **flags,
            SILU=ctx.silu,
            BLOCK_D=block_d,
            BLOCK_T=block_t,
            num_warps=CONV_CONFIG["bwd_warps"],
        )
        _CONV_BWD_DX[(n_tblocks, n_dgroups, b)](
            weight,
            r_,
            rs_,
            ridx_,
            df_,
            dyp,
            dx,
            dx if dinit is None else dinit,
            dx if ridx is None else drs,
            L,
            d,
            df_.stride(),
            dyp.stride(),
            dx.stride(),
            r_stride,
            rs_.stride(),
            W=width,
            WP=_tail_block(width),
            HAS_INIT=flags["HAS_INIT"],
            HAS_RESET=flags["HAS_RESET"],
            HAS_RS=flags["HAS_RS"],
            HAS_DFIN=dfinal is not None,
            BLOCK_D=block_d,
            BLOCK_T=block_t,
            num_warps=CONV_CONFIG["bwd_warps"],
        )
        return (
            dx,
            dw.sum(0).to(weight.dtype),
            None if dbias is None else dbias.sum(0).to(bias.dtype),
            dinit,
            None,
            None if drs is None else drs.to(reset_state.dtype),
            None,
        )


def causal_conv1d_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    reset: torch.Tensor | None = None,
    activation: str | None = None,
    reset_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused causal conv; same contract as :func:`mamba_rl.kernels.naive.causal_conv1d_ref`.

    ``x`` ``[b, d, L]`` (any strides; ``y`` and ``dx`` get ``x``'s memory order), ``weight``
    ``[d, w]``, ``bias`` ``[d]``, ``initial_state`` ``[b, d, w - 1]``, ``reset`` ``[b, L]`` bool,
    ``activation`` None or ``"silu"``, ``reset_state`` ``[R, d, w - 1]``: the history entering
    each of the ``R = reset.sum()`` reset steps, oldest first, in ``reset.nonzero()`` order (None:
    zeros). Returns ``(y [b, d, L], final_state [b, d, w - 1])``, both differentiable in ``x``,
    ``weight``, ``bias``, ``initial_state`` and ``reset_state``.
    """
    silu = is_silu(activation)
    return _CausalConv1dFn.apply(x, weight, bias, initial_state, reset, reset_state, silu)
