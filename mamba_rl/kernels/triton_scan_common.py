"""Device code that the selective scan's forward and backward kernels share.

Loading a step's inputs, one step of the recurrence, a chunk of steps (with the next chunk's
inputs prefetched and its deltas loaded a chunk ahead), the pointers and masks of a program, the
time ranges, and the kernel that chains the time ranges. The layout they assume is described in
:mod:`~mamba_rl.kernels.triton_scan`: one program is one warp, a batch row and ``BD`` channels;
a state tile is ``[N, BD]`` (states inside each thread, channels across the lanes).
"""

from __future__ import annotations

import triton
import triton.language as tl

from mamba_rl.kernels.triton_math import _exp2, _softplus_fast


@triton.jit
def _prefetch(ptrs, PTX: tl.constexpr):
    """Ask for the lines at ``ptrs`` in L1 without waiting for them (no-op in the interpreter)."""
    if PTX:
        tl.inline_asm_elementwise(
            "prefetch.global.L1 [$1]; mov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1
        )


@triton.jit
def _prefetch_chunk(row, bc, t0, L, lane, BLOCK_T: tl.constexpr, PTX: tl.constexpr):
    """Prefetch steps ``[t0, t0 + BLOCK_T)`` (clamped to the sequence) of a per-channel stream
    ``row`` (its prefetch pointers ``[1, BD]``) and, when ``bc`` is given, of a ``[L, n]`` stream
    whose chunk rows are spread over the lanes (streams as :func:`_stream` and
    :func:`_state_stream` give them). A chunk's loads sit behind the previous step's store, so
    without this every step would wait for memory."""
    if PTX:
        _, pf_row, s_t = row
        for j in tl.static_range(BLOCK_T):
            _prefetch(pf_row + tl.minimum(t0 + j, L - 1) * s_t, PTX)
        if bc is not None:
            _, pf_bc, s_bc_t = bc
            _prefetch(pf_bc + tl.minimum(t0 + lane % BLOCK_T, L - 1) * s_bc_t, PTX)


@triton.jit
def _pick(arr, jj, j: tl.constexpr):
    """Row ``j`` of ``arr [BT, ...]`` whose first axis lies inside each thread (a register read)."""
    return tl.sum(tl.where(jj == j, arr, -0.0), axis=0)


@triton.jit
def _put(arr, jj, j: tl.constexpr, v):
    """``arr`` with row ``j`` (an axis inside each thread) replaced by ``v``."""
    return tl.where(jj == j, v[None], arr)


@triton.jit
def _load_states(ptrs, m_n):
    """A ``[N, 1]`` row of B or C as fp32; ``m_n`` masks the padded states (None: there are none).
    Callers clamp the step into the sequence: past its end the step size is zero, so the row read
    there does not matter."""
    if m_n is None:
        return tl.load(ptrs).to(tl.float32)
    else:
        return tl.load(ptrs, mask=m_n, other=0.0).to(tl.float32)


@triton.jit
def _decay(dt, A_log2e, keep, HAS_RESET: tl.constexpr, PTX: tl.constexpr):
    """``a = exp2(dt A log2(e))`` ``[N, BD]``, zero where ``keep`` ``[1, 1]`` is off: what the
    adjoint, whose values are finite, is carried back through. The reset enters the exponent as
    ``-inf`` (``exp2(-inf) = +0``; ``+ 0`` leaves it bit for bit): one select per step and an FFMA
    per state instead of an FMUL and a select per state. States are cut at a reset by a select on
    the state instead (``0 * NaN`` is NaN)."""
    if HAS_RESET:
        return _exp2(dt * A_log2e + tl.where(keep, 0.0, float("-inf")), PTX)
    else:
        return _exp2(dt * A_log2e, PTX)


@triton.jit
def _raw_delta(dts, t, m, bias, HAS_BIAS: tl.constexpr):
    """Step ``t``'s raw ``delta (+ bias)`` ``[1, BD]`` (``delta`` read as 0 where ``m`` is off);
    ``dts``: the delta stream (:func:`_stream`)."""
    p_delta, _, s_dt_t = dts
    raw_dt = tl.load(p_delta + t * s_dt_t, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw_dt += bias
    return raw_dt


@triton.jit
def _step_size(raw_dt, m, SOFTPLUS: tl.constexpr, FAST: tl.constexpr):
    """The step size ``dt`` of a raw ``delta (+ bias)``: softplus of it when asked; 0 where ``m``
    is off."""
    dt = raw_dt
    if SOFTPLUS:
        dt = _softplus_fast(raw_dt, FAST)
    return tl.where(m, dt, 0.0)


@triton.jit
def _chunk_deltas(dts, i_c, m_ch, L, bias, BLOCK_T: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The raw ``delta (+ bias)`` ``[1, BD]`` of chunk ``i_c``'s steps ``i_c BLOCK_T + j``, ``j <
    BLOCK_T <= 4``, as a tuple of four values (zeros past ``BLOCK_T``; ``delta`` reads as 0 past the end),
    loaded a chunk before their use: otherwise the first use of each step's delta waits on its
    load at the start of every chunk (the most stalled instruction of the loops that use this).
    Four named values, not a ``[BLOCK_T, 1, BD]`` tile: Triton gives such a tile a layout of its
    own and converts it through shared memory."""
    tl.static_assert(BLOCK_T <= 4, "deltas are loaded a chunk ahead for chunks of up to 4 steps")
    t = tl.full([1, 1], 0, tl.int32) + i_c * BLOCK_T
    d0 = _raw_delta(dts, t, m_ch & (t < L), bias, HAS_BIAS)
    d1 = d0 * 0.0
    d2 = d1
    d3 = d1
    if BLOCK_T > 1:
        d1 = _raw_delta(dts, t + 1, m_ch & (t + 1 < L), bias, HAS_BIAS)
    if BLOCK_T > 2:
        d2 = _raw_delta(dts, t + 2, m_ch & (t + 2 < L), bias, HAS_BIAS)
    if BLOCK_T > 3:
        d3 = _raw_delta(dts, t + 3, m_ch & (t + 3 < L), bias, HAS_BIAS)
    return d0, d1, d2, d3


@triton.jit
def _keep(resets, t, m_t, HAS_RESET: tl.constexpr):
    """True where step ``t`` carries the state on (no reset there, or no resets at all);
    ``resets`` = (pointer, step stride)."""
    if HAS_RESET:
        p_reset, s_r_t = resets
        return tl.load(p_reset + t * s_r_t, mask=m_t, other=0) == 0
    else:
        return t >= 0


@triton.jit
def _step(
    h,
    A_log2e,
    raw_dt,
    us,
    Bs,
    Cs,
    resets,
    t,
    m_ch,
    m_n,
    L,
    SOFTPLUS: tl.constexpr,
    HAS_RESET: tl.constexpr,
    PTX: tl.constexpr,
    FAST: tl.constexpr,
):
    """Step ``t`` of the recurrence from ``h = h_{t-1}`` ``[N, BD]`` and the step's raw ``delta (+
    bias)`` ``raw_dt``: returns ``h_t``, the step size ``dt`` ``[1, BD]`` (0 past the end), ``u``
    ``[1, BD]`` and ``C_t`` ``[N, 1]``. ``us``, ``Bs``, ``Cs``: each stream's (pointer, prefetch
    pointer, step stride); ``resets``: (pointer, step stride)."""
    p_u, _, s_u_t = us
    p_B, _, s_B_t = Bs
    p_C, _, s_C_t = Cs
    m_t = t < L
    m = m_ch & m_t
    dt = _step_size(raw_dt, m, SOFTPLUS, FAST)
    u = tl.load(p_u + t * s_u_t, mask=m, other=0.0).to(tl.float32)
    t_in = tl.minimum(t, L - 1)
    B_t = _load_states(p_B + t_in * s_B_t, m_n)
    C_t = _load_states(p_C + t_in * s_C_t, m_n)
    if HAS_RESET:
        # a select, not a zero decay: a non-finite state before a reset must not survive it
        h = tl.where(_keep(resets, t, m_t, HAS_RESET), h, 0.0)
    h = _exp2(dt * A_log2e, PTX) * h + (dt * u) * B_t
    return h, dt, u, C_t


@triton.jit
def _fwd_chunk(
    h,
    acc,
    i_c,
    raws,
    prog,
    m_n,
    ins,
    L,
    BLOCK_T: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_RESET: tl.constexpr,
    PTX: tl.constexpr,
    FAST: tl.constexpr,
):
    """Chunk ``i_c`` (``BLOCK_T`` steps) of the recurrence from ``h``, prefetching the next chunk:
    returns ``h`` after it, ``acc`` = (``sum_dt`` plus its step sizes, ``kept`` and-ed with "no
    reset in it"; callers that need neither pass anything and drop them; C is not read) and the
    next chunk's raw deltas (this chunk's are ``raws``, :func:`_chunk_deltas`). ``prog`` = the
    program's (``A log2(e)``, ``delta_bias``, channel mask, lanes); ``m_n``: the state mask (None:
    no padded states); ``ins`` = the streams (delta, u, B, resets) as :func:`_step` takes them."""
    A_log2e, bias, m_ch, lane = prog
    dts, us, Bs, resets = ins
    sum_dt, kept = acc
    t_pf = (i_c + 1) * BLOCK_T
    _prefetch_chunk(dts, Bs, t_pf, L, lane, BLOCK_T, PTX)
    _prefetch_chunk(us, None, t_pf, L, lane, BLOCK_T, PTX)
    raws_next = _chunk_deltas(dts, i_c + 1, m_ch, L, bias, BLOCK_T, HAS_BIAS)
    for j in tl.static_range(BLOCK_T):
        t = tl.full([1, 1], 0, tl.int32) + i_c * BLOCK_T + j
        h, dt, u, B_t = _step(h, A_log2e, raws[j], us, Bs, Bs, resets, t, m_ch, m_n, L, SOFTPLUS, HAS_RESET, PTX, FAST)
        sum_dt += dt
        kept = kept & _keep(resets, t, t < L, HAS_RESET)
    return h, (sum_dt, kept), raws_next


@triton.jit
def _range_start(r, range_steps, L):
    """Range ``r``'s first step ``t_lo`` (int64) and its length (at most ``range_steps``)."""
    t_lo = (r * range_steps).to(tl.int64)
    return t_lo, tl.minimum(L - t_lo, range_steps).to(tl.int32)


@triton.jit
def _clamp_channels(ch, d, EVEN_D: tl.constexpr):
    """The channels ``ch`` clamped into the tensor (``d`` channels), for prefetching: nothing to
    clamp when ``EVEN_D`` (the programs' channels tile ``d``), and then the prefetch pointers are the
    load pointers (no registers of their own)."""
    if EVEN_D:
        return ch
    else:
        return tl.minimum(ch, d - 1)


@triton.jit
def _stream(p, strides, i_b, ch, ch_pf):
    """A per-channel ``[b, d, L]`` stream (``strides`` its three) of batch row ``i_b`` as (the
    channels' row ``[1, BD]`` at step 0, the same row with the channels clamped into the tensor
    for prefetching, the step stride)."""
    s_b, s_d, s_t = strides
    pf = p + i_b * s_b + ch_pf * s_d
    return p + (i_b * s_b + ch * s_d), pf, s_t


@triton.jit
def _state_stream(p, strides, i_b, nn):
    """A ``[b, n, L]`` stream (B or C; ``strides`` its three) of batch row ``i_b`` as (the states'
    column ``[N, 1]`` at step 0, state 0 for prefetching, the step stride)."""
    s_b, s_n, s_t = strides
    pf = p + i_b * s_b
    return p + (i_b * s_b + nn * s_n), pf, s_t


@triton.jit
def _input_streams(p_u, p_delta, p_z, p_B, p_C, s_u, s_dt, s_z, s_B, s_C, i_b, ch, ch_pf, nn):
    """The streams of u, delta, z (:func:`_stream`) and B, C (:func:`_state_stream`) of batch row
    ``i_b``; the load pointers first, then the prefetch pointers (the order ptxas is given them
    changes its register allocation of the scan kernels)."""
    s_u_b, s_u_d, s_u_t = s_u
    s_dt_b, s_dt_d, s_dt_t = s_dt
    s_z_b, s_z_d, s_z_t = s_z
    s_B_b, s_B_n, s_B_t = s_B
    s_C_b, s_C_n, s_C_t = s_C
    u = p_u + i_b * s_u_b + ch * s_u_d
    dt = p_delta + i_b * s_dt_b + ch * s_dt_d
    z = p_z + i_b * s_z_b + ch * s_z_d
    B = p_B + i_b * s_B_b + nn * s_B_n
    C = p_C + i_b * s_C_b + nn * s_C_n
    pf_u = p_u + i_b * s_u_b + ch_pf * s_u_d
    pf_dt = p_delta + i_b * s_dt_b + ch_pf * s_dt_d
    pf_z = p_z + i_b * s_z_b + ch_pf * s_z_d
    return (
        (u, pf_u, s_u_t),
        (dt, pf_dt, s_dt_t),
        (z, pf_z, s_z_t),
        (B, p_B + i_b * s_B_b, s_B_t),
        (C, p_C + i_b * s_C_b, s_C_t),
    )


@triton.jit
def _at_step(stream, t_lo):
    """A stream (pointer, prefetch pointer, step stride) moved to step ``t_lo``."""
    p, pf, s_t = stream
    return p + t_lo * s_t, pf + t_lo * s_t, s_t


@triton.jit
def _program(p_A_log2e, p_bias, ch, d, n, N: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_D: tl.constexpr):
    """What a program of channels ``ch`` ``[1, BD]`` works with: those channels clamped into the
    tensor (for prefetching), the states ``[N, 1]``, the channel, state and state-tile masks,
    ``A log2(e)`` ``[N, BD]`` and ``delta_bias`` ``[1, BD]``."""
    nn = tl.arange(0, N)[:, None]
    m_ch = ch < d
    m_n = nn < n
    m_s = m_ch & m_n
    A_log2e = tl.load(p_A_log2e + nn * d + ch, mask=m_s, other=0.0)
    bias = tl.load(p_bias + ch, mask=m_ch & HAS_BIAS, other=0.0).to(tl.float32)
    return _clamp_channels(ch, d, EVEN_D), nn, m_ch, m_n, m_s, A_log2e, bias


@triton.jit
def _store_local(
    p_loc,
    p_P,
    x,
    sum_dt,
    A_log2e,
    kept,
    i_b,
    i_r,
    nn,
    ch,
    m_s,
    d,
    N: tl.constexpr,
    HAS_RESET: tl.constexpr,
    PTX: tl.constexpr,
):
    """Store a local range's result ``x`` (its end state, or the gradient it sends back) and its
    carry factor ``P = exp2(A log2(e) sum_t delta_t)``, zero if it holds a reset, at row ``i_r``
    of ``[b, ranges, N, d]``."""
    P = _exp2(sum_dt * A_log2e, PTX)
    if HAS_RESET:
        P = tl.where(kept, P, 0.0)
    p_out = (i_b * tl.num_programs(2) + i_r) * N * d + nn * d + ch
    tl.store(p_loc + p_out, x, mask=m_s)
    tl.store(p_P + p_out, P, mask=m_s)


@triton.jit
def _scan_carry_kernel(p_loc, p_P, p_x, nd, n_x, r_first, REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    """Chain the local ranges: ``x`` ``[b, n_x + 1, nd]`` holds a value at each range boundary,
    ``loc, P`` ``[b, ranges, nd]`` what each range adds alone and the factor it carries its input
    by. Forward (states): ``x[r + 1] = loc[r] + P[r] x[r]`` for ranges ``0 ... r_first - 1`` from
    ``x[0]`` (h0); reverse (the adjoint): ``x[r] = loc[r - r_first] + P[r - r_first] x[r + 1]`` for
    ``r = n_x - 1 ... r_first`` from ``x[n_x]`` (the gradient of the final state)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    i_b = tl.program_id(1).to(tl.int64)
    m = i < nd
    p_x += i_b * (n_x + 1) * nd + i
    n_loc = n_x - r_first if REVERSE else r_first
    p_loc += i_b * n_loc * nd + i
    p_P += i_b * n_loc * nd + i
    if REVERSE:
        x = tl.load(p_x + n_x * nd, mask=m, other=0.0)
    else:
        x = tl.load(p_x, mask=m, other=0.0)
    for k in range(n_loc):
        r = n_loc - 1 - k if REVERSE else k
        P = tl.load(p_P + r * nd, mask=m, other=0.0)
        # a range with a reset carries nothing through (P = 0): a select, since 0 * NaN is NaN
        x = tl.load(p_loc + r * nd, mask=m, other=0.0) + tl.where(P == 0.0, 0.0, P * x)
        if REVERSE:
            tl.store(p_x + (r + r_first) * nd, x, mask=m)
        else:
            tl.store(p_x + (r + 1) * nd, x, mask=m)
