"""The selective scan's backward kernels: the adjoint of a time range alone, and the backward proper.

See :mod:`~mamba_rl.kernels.triton_scan` for the layout, the time ranges and how the backward
rebuilds the states from the forward's checkpoints.
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl

from mamba_rl.kernels.triton_math import _sigmoid_fast
from mamba_rl.kernels.triton_scan_common import (
    _at_step,
    _chunk_deltas,
    _decay,
    _fwd_chunk,
    _input_streams,
    _keep,
    _load_states,
    _pick,
    _prefetch,
    _prefetch_chunk,
    _program,
    _range_start,
    _raw_delta,
    _state_stream,
    _step_size,
    _store_local,
    _stream,
)


@functools.lru_cache(maxsize=None)
def lane_sum_asm(n_state: int) -> tuple[str, str]:
    """PTX that sums ``2 * n_state`` values over a warp's 32 lanes, reduce-scatter style.

    Operands (one ``inline_asm_elementwise`` call with ``pack=n_state``): ``n_state`` outputs, then
    the lane's ``n_state`` dB terms and ``n_state`` dC terms (values ``v = 0 .. 2 n_state - 1``).
    Each level pairs lane ``l`` with ``l ^ m`` (``m = 16, 8, ..``): a lane keeps the half of its
    values that its bit ``m`` selects, adds the partner's copy of that half, and sends the other
    half. After the levels lane ``l`` holds at outputs ``j < max(1, V / 32)`` the sum of value ``j
    + l V / 32`` (``V = 2 n_state``); when ``V < 32`` the last levels are plain butterfly sums.
    ``V - V / 32`` shuffles and adds in all when ``V >= 32`` (31 at ``d_state`` 16), against ``5 V``
    for a butterfly per value."""
    v = 2 * n_state
    lines = [
        "{",
        ".reg .pred %rs_p;",
        ".reg .b32 %rs_l, %rs_b;",
        f".reg .f32 %rs_v<{v}>, %rs_s, %rs_k, %rs_r;",
        "mov.u32 %rs_l, %laneid;",
    ]
    lines += [f"mov.b32 %rs_v{i}, ${n_state + i};" for i in range(v)]
    m, mask = v, 16
    while mask >= 1:
        if m > 1:
            half = m // 2
            lines += [f"and.b32 %rs_b, %rs_l, {mask};", "setp.ne.u32 %rs_p, %rs_b, 0;"]
            for j in range(half):
                lines += [
                    f"selp.f32 %rs_s, %rs_v{j}, %rs_v{j + half}, %rs_p;",
                    f"selp.f32 %rs_k, %rs_v{j + half}, %rs_v{j}, %rs_p;",
                    f"shfl.sync.bfly.b32 %rs_r, %rs_s, {mask}, 31, -1;",
                    f"add.f32 %rs_v{j}, %rs_k, %rs_r;",
                ]
            m = half
        else:
            lines += [f"shfl.sync.bfly.b32 %rs_r, %rs_v0, {mask}, 31, -1;", "add.f32 %rs_v0, %rs_v0, %rs_r;"]
        mask //= 2
    lines += [f"mov.b32 ${j}, %rs_v{min(j, m - 1)};" for j in range(n_state)]
    return "\n".join(lines + ["}"]), ",".join(["=f"] * n_state + ["f"] * v)


@triton.jit
def _store_dBC(p_part, t, L, gB, hC, nn, lane, N: tl.constexpr, LANE_SUM_ASM: tl.constexpr):
    """Store step ``t``'s channel sums of ``gB`` (the dB terms) and ``hC`` (the dC terms), each
    ``[N, BD]``, as row ``t`` of this program's ``[L, 2N]`` partial buffer, evict-first (so that
    L2 keeps the backward's scratch). With ``LANE_SUM_ASM`` (:func:`lane_sum_asm`; one warp of 32
    channels, a channel per lane) the sums are scattered over the lanes and each lane stores its
    own; else ``tl.sum`` over the lanes."""
    if LANE_SUM_ASM is None:
        tl.store(p_part + t * 2 * N + nn, tl.sum(gB, axis=1, keep_dims=True), mask=t < L, eviction_policy="evict_first")
        tl.store(
            p_part + t * 2 * N + N + nn, tl.sum(hC, axis=1, keep_dims=True), mask=t < L, eviction_policy="evict_first"
        )
    else:
        r = tl.inline_asm_elementwise(
            LANE_SUM_ASM[0], LANE_SUM_ASM[1], [gB, hC], dtype=tl.float32, is_pure=True, pack=N
        )
        for j in tl.static_range(max(1, 2 * N // 32)):
            tl.store(
                p_part + t * 2 * N + j + (lane * 2 * N) // 32,
                _pick(r, nn, j),
                mask=t < L,
                eviction_policy="evict_first",
            )


@triton.jit
def _adjoint_inputs(
    raw_dt,
    ins,
    t,
    m_ch,
    m_n,
    L,
    A_log2e,
    HAS_Z: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_RESET: tl.constexpr,
    PTX: tl.constexpr,
    FAST: tl.constexpr,
):
    """What the backward needs of step ``t`` (its raw ``delta (+ bias)`` is ``raw_dt``), as a tuple:
    the step size ``dt``, ``u``, the gradient reaching ``C_t h_t`` (``dy_gated``, through the ``z``
    gate), the factor that turns ``C_t h_t + D u_t`` into ``dz`` (``dz_factor``), ``softplus'`` of
    the raw step (``dsoftplus``), the decay ``a_t`` ``[N, BD]`` (zero at a reset), ``B_t``, ``C_t``
    ``[N, 1]``, the channels' mask ``[1, BD]`` (all zero past the end) and whether the step carries
    the state on (``keep`` ``[1, 1]``, False at a reset). ``ins`` = the streams (u, z, dy, B, C,
    resets)."""
    us, zs, dys, Bs, Cs, resets = ins
    p_u, _, s_u_t = us
    p_z, _, s_z_t = zs
    p_dy, _, s_dy_t = dys
    p_B, _, s_B_t = Bs
    p_C, _, s_C_t = Cs
    m_t = t < L
    m = m_ch & m_t
    dt = _step_size(raw_dt, m, SOFTPLUS, FAST)
    u = tl.load(p_u + t * s_u_t, mask=m, other=0.0).to(tl.float32)
    dy = tl.load(p_dy + t * s_dy_t, mask=m, other=0.0).to(tl.float32)
    t_in = tl.minimum(t, L - 1)
    B_t = _load_states(p_B + t_in * s_B_t, m_n)
    C_t = _load_states(p_C + t_in * s_C_t, m_n)
    keep = _keep(resets, t, m_t, HAS_RESET)
    a = _decay(dt, A_log2e, keep, HAS_RESET, PTX)
    dy_gated = dy
    dz_factor = dy
    if HAS_Z:
        z = tl.load(p_z + t * s_z_t, mask=m, other=0.0).to(tl.float32)
        sz = _sigmoid_fast(z, FAST)
        dy_gated = dy * z * sz
        dz_factor = dy * sz * (1.0 + z * (1.0 - sz))
    dsoftplus = dt
    if SOFTPLUS:
        dsoftplus = _sigmoid_fast(raw_dt, FAST)
    return dt, u, dy_gated, dz_factor, dsoftplus, a, B_t, C_t, m, keep


@triton.jit
def _adjoint_step(
    p_dBC,
    t,
    L,
    q,
    a_h_prev,
    step,
    A_log2e,
    D_ch,
    sums,
    nn,
    lane,
    N: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    LANE_SUM_ASM: tl.constexpr,
):
    """Step ``t`` of the adjoint, from ``q`` (the gradient reaching ``h_t`` from later steps),
    ``a_h_prev = a_t h_{t-1}`` and the step's inputs ``step`` (:func:`_adjoint_inputs`): stores the
    step's dB and dC channel sums, adds to ``sums`` = (dA, dD, d(delta_bias)), and returns the
    gradient reaching ``h_{t-1}``, the sums, and ``du_t``, ``ddelta_t`` and ``dz_t`` ``[1, BD]``."""
    dt, u, dy_gated, dz_factor, dsoftplus, a, B_t, C_t, m, _ = step
    dA, dD, dbias = sums
    dtu = dt * u
    h = a_h_prev + dtu * B_t
    g = C_t * dy_gated + q
    s = tl.sum(g * B_t, axis=0, keep_dims=True)
    w = g * a_h_prev
    dA += w * dt
    ddt = tl.sum(w * A_log2e, axis=0, keep_dims=True) * 0.6931471805599453 + u * s
    _store_dBC(p_dBC, t, L, g * dtu, h * dy_gated, nn, lane, N, LANE_SUM_ASM)
    du = dt * s
    dz = dt
    if HAS_Z:
        y_pre = tl.sum(h * C_t, axis=0, keep_dims=True)
        if HAS_D:
            y_pre += D_ch * u
        dz = y_pre * dz_factor
    if HAS_D:
        du += dy_gated * D_ch
        dD += dy_gated * u
    if SOFTPLUS:
        ddt = ddt * dsoftplus
    ddt = tl.where(m, ddt, 0.0)
    if HAS_BIAS:
        dbias += ddt
    return a * g, (dA, dD, dbias), du, ddt, dz


@triton.jit
def _store_grads(outs, t, du, ddt, dz, m, HAS_Z: tl.constexpr):
    """Store step ``t``'s ``du``, ``ddelta`` and (``HAS_Z``) ``dz`` ``[1, BD]`` where ``m``,
    evict-first (so that L2 keeps the backward's scratch); ``outs``: their streams."""
    dus, ddts, dzs = outs
    p_du, _, s_du_t = dus
    p_ddelta, _, s_ddt_t = ddts
    p_dz, _, s_dz_t = dzs
    tl.store(p_du + t * s_du_t, du.to(p_du.dtype.element_ty), mask=m, eviction_policy="evict_first")
    tl.store(p_ddelta + t * s_ddt_t, ddt.to(p_ddelta.dtype.element_ty), mask=m, eviction_policy="evict_first")
    if HAS_Z:
        tl.store(p_dz + t * s_dz_t, dz.to(p_dz.dtype.element_ty), mask=m, eviction_policy="evict_first")


@triton.jit
def _scan_bwd_local_kernel(
    p_delta,
    p_A_log2e,
    p_C,
    p_z,
    p_bias,
    p_reset,
    p_dy,
    p_loc,
    p_P,
    L,
    d,
    n,
    r_first,
    range_steps,
    s_dt,
    s_z,
    s_C,
    s_dy,
    s_r,
    N: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BD: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_RESET: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_D: tl.constexpr,
    PTX: tl.constexpr,
    FAST: tl.constexpr,
):
    """Time range ``r = r_first + program_id(2)`` (steps ``[r R, (r + 1) R)``, ``R = range_steps``)
    of the adjoint, alone: the gradient ``q`` it sends to the state entering it when none comes in
    from its right end (``loc``), and the factor ``P = prod_t a_t`` by which what does come in is
    carried through it (``[b, ranges, N, d]`` each). The adjoint ``q_{t-1} = a_t (C_t dy'_t +
    q_t)`` needs no state ``h``, only ``delta``, ``C``, ``dy`` and ``z``. ``s_*``: each stream's
    strides (batch, channel or state, step); the resets' (batch, step)."""
    i_b = tl.program_id(1).to(tl.int64)
    i_r = tl.program_id(2)
    lane = tl.arange(0, BD)[None, :]
    ch = tl.program_id(0) * BD + lane
    ch_pf, nn, m_ch, m_n, m_s, A_log2e, bias = _program(p_A_log2e, p_bias, ch, d, n, N, HAS_BIAS, EVEN_D)
    if EVEN_N:  # no padded states: B and C load unmasked
        m_n = None
    dts = _stream(p_delta, s_dt, i_b, ch, ch_pf)
    dys = _stream(p_dy, s_dy, i_b, ch, ch_pf)
    zs = _stream(p_z, s_z, i_b, ch, ch_pf)
    Cs = _state_stream(p_C, s_C, i_b, nn)
    s_r_b, s_r_t = s_r
    p_reset += i_b * s_r_b
    # every stream starts at the range's first step; L: the range's length
    t_lo, L = _range_start(r_first + i_r, range_steps, L)
    dts, dys, zs, Cs = _at_step(dts, t_lo), _at_step(dys, t_lo), _at_step(zs, t_lo), _at_step(Cs, t_lo)
    p_dy, _, s_dy_t = dys
    p_z, _, s_z_t = zs
    p_C, _, s_C_t = Cs
    resets = (p_reset + t_lo * s_r_t, s_r_t)
    n_c = tl.cdiv(L, BLOCK_T)
    q = tl.zeros([N, BD], dtype=tl.float32)
    sum_dt = tl.zeros([1, BD], dtype=tl.float32)
    kept = tl.full([1, 1], 1, tl.int1)
    for i_ci in range(n_c):
        i_c = n_c - 1 - i_ci
        t_pf = tl.maximum(i_c - 1, 0) * BLOCK_T
        _prefetch_chunk(dts, Cs, t_pf, L, lane, BLOCK_T, PTX)
        _prefetch_chunk(dys, None, t_pf, L, lane, BLOCK_T, PTX)
        if HAS_Z:
            _prefetch_chunk(zs, None, t_pf, L, lane, BLOCK_T, PTX)
        for jr in tl.static_range(BLOCK_T):
            t = tl.full([1, 1], 0, tl.int32) + i_c * BLOCK_T + (BLOCK_T - 1 - jr)
            m_t = t < L
            m = m_ch & m_t
            raw_dt = _raw_delta(dts, t, m, bias, HAS_BIAS)
            dt = _step_size(raw_dt, m, SOFTPLUS, FAST)
            dy_gated = tl.load(p_dy + t * s_dy_t, mask=m, other=0.0).to(tl.float32)
            if HAS_Z:
                z = tl.load(p_z + t * s_z_t, mask=m, other=0.0).to(tl.float32)
                dy_gated *= z * _sigmoid_fast(z, FAST)
            C_t = _load_states(p_C + tl.minimum(t, L - 1) * s_C_t, m_n)
            keep = _keep(resets, t, m_t, HAS_RESET)
            kept = kept & keep
            # past the range's end dt = 0, dy' = 0: q passes unchanged
            q = _decay(dt, A_log2e, keep, HAS_RESET, PTX) * (C_t * dy_gated + q)
            sum_dt += dt
    _store_local(p_loc, p_P, q, sum_dt, A_log2e, kept, i_b, i_r, nn, ch, m_s, d, N, HAS_RESET, PTX)


@triton.jit
def _scan_bwd_kernel(
    p_u,
    p_delta,
    p_A_log2e,
    p_B,
    p_C,
    p_D,
    p_z,
    p_bias,
    p_reset,
    p_h_ckpt,
    p_h_chunks,
    p_dy,
    p_q_in,
    p_du,
    p_ddelta,
    p_dz,
    p_dBC,
    p_part,
    p_dh,
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
    s_dy,
    s_du,
    s_ddt,
    s_dz,
    s_r,
    N: tl.constexpr,
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
    LANE_SUM_ASM: tl.constexpr,
):
    """Time range ``program_id(2)`` of the backward, one checkpoint segment at a time from its
    end, from the gradient entering the range's right end (``p_q_in``): writes ``du``,
    ``ddelta``, ``dz``, the per-step dB / dC sums of this warp's channels (``p_dBC``), the range's
    dA / dD / d(delta_bias) sums (``p_part``) and, from the first range, ``dh0`` (``p_dh``). A
    chunk is two steps: the adjoint reruns the first step from the state entering the chunk
    (read back from the segment's scratch ``p_h_chunks``) and takes the second's state as
    ``a_t h_{t-1} + dt_t u_t B_t``."""
    BLOCK_T: tl.constexpr = 2
    i_d = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    i_r = tl.program_id(2)
    nb = tl.num_programs(1)
    lane = tl.arange(0, BD)[None, :]
    ch = i_d * BD + lane
    ch_pf, nn, m_ch, m_n, m_s, A_log2e, bias = _program(p_A_log2e, p_bias, ch, d, n, N, HAS_BIAS, EVEN_D)
    if EVEN_N:  # no padded states: B and C load unmasked
        m_n = None
    D_ch = tl.load(p_D + ch, mask=m_ch & HAS_D, other=0.0).to(tl.float32)
    us, dts, zs, Bs, Cs = _input_streams(p_u, p_delta, p_z, p_B, p_C, s_u, s_dt, s_z, s_B, s_C, i_b, ch, ch_pf, nn)
    dys = _stream(p_dy, s_dy, i_b, ch, ch_pf)
    outs = (_stream(p_du, s_du, i_b, ch, ch), _stream(p_ddelta, s_ddt, i_b, ch, ch), _stream(p_dz, s_dz, i_b, ch, ch))
    s_r_b, s_r_t = s_r
    resets = (p_reset + i_b * s_r_b, s_r_t)
    ins = (us, zs, dys, Bs, Cs, resets)
    # the rebuild of a segment's chunk states: no sum_dt or kept to keep (acc: any values)
    prog = (A_log2e, bias, m_ch, lane)
    rebuild_ins = (dts, us, Bs, resets)
    acc = (bias, m_ch)
    # [d / BD, b, L, 2N]: this warp's sums of the dB and dC terms over its channels
    p_dBC += (i_d * nb + i_b) * L * 2 * N
    n_seg = tl.cdiv(n_chunks, SEG_CHUNKS)
    p_h_ckpt += i_b * (n_seg + 1) * N * d + nn * d + ch
    # [ranges, b, SEG_CHUNKS, N, d]: the states entering each chunk of the current segment
    p_h_chunks += (i_r * nb + i_b) * SEG_CHUNKS * N * d + nn * d + ch
    pf_h_chunks = p_h_chunks + (ch_pf - ch)
    # [b, N, d]: dh0 out (from the first range)
    p_dh += i_b * N * d + nn * d + ch
    # q: the gradient reaching h_{t-1} through step t (for the chunk after the current one); at the
    # range's right end, from the chained local adjoints ([b, n_pieces + 1, N, d])
    q = tl.load(
        p_q_in + (i_b * (n_pieces + 1) + tl.minimum((i_r + 1) * pieces_per_range, n_pieces)) * N * d + nn * d + ch,
        mask=m_s,
        other=0.0,
    )
    # the range's sums of the dA, dD and d(delta_bias) terms
    sums = (
        tl.zeros([N, BD], dtype=tl.float32),
        tl.zeros([1, BD], dtype=tl.float32),
        tl.zeros([1, BD], dtype=tl.float32),
    )
    s_lo = i_r * range_segs
    s_hi = tl.minimum(s_lo + range_segs, n_seg)
    for i_si in range(s_lo, s_hi):
        i_s = s_hi - 1 - (i_si - s_lo)
        c_lo = i_s * SEG_CHUNKS
        c_hi = tl.minimum(c_lo + SEG_CHUNKS, n_chunks)
        # 1. the states entering each chunk of the segment, into the scratch (evict-last: it is
        # read back right after, from L2 rather than from DRAM); each chunk's deltas are loaded a
        # chunk ahead (_chunk_deltas)
        h = tl.load(p_h_ckpt + i_s * N * d, mask=m_s, other=0.0)
        tl.store(p_h_chunks, h, mask=m_s, eviction_policy="evict_last")
        raws = _chunk_deltas(dts, c_lo, m_ch, L, bias, BLOCK_T, HAS_BIAS)
        for i_c in range(c_lo, c_hi - 1):
            h, _, raws = _fwd_chunk(
                h, acc, i_c, raws, prog, m_n, rebuild_ins, L, BLOCK_T, HAS_BIAS, SOFTPLUS, HAS_RESET, PTX, FAST
            )
            tl.store(p_h_chunks + (i_c + 1 - c_lo) * N * d, h, mask=m_s, eviction_policy="evict_last")
        # 2. the segment's chunks (two steps t0, t1), last first: the chunk's states from the one
        # entering it, then the adjoint backwards through t1 and t0
        for i_ci in range(c_lo, c_hi):
            i_c = c_hi - 1 - (i_ci - c_lo)
            h_prev = tl.load(p_h_chunks + (i_c - c_lo) * N * d, mask=m_s, other=0.0)
            # the chunk processed next is the previous one: prefetch its entering state and inputs
            _prefetch(pf_h_chunks + (tl.maximum(i_c - 1, c_lo) - c_lo) * N * d, PTX)
            t_pf = tl.maximum(i_c - 1, 0) * BLOCK_T
            _prefetch_chunk(dts, Bs, t_pf, L, lane, BLOCK_T, PTX)
            _prefetch_chunk(us, Cs, t_pf, L, lane, BLOCK_T, PTX)
            _prefetch_chunk(dys, None, t_pf, L, lane, BLOCK_T, PTX)
            if HAS_Z:
                _prefetch_chunk(zs, None, t_pf, L, lane, BLOCK_T, PTX)
            t0 = tl.full([1, 1], 0, tl.int32) + i_c * BLOCK_T
            raw_dt0 = _raw_delta(dts, t0, m_ch & (t0 < L), bias, HAS_BIAS)
            raw_dt1 = _raw_delta(dts, t0 + 1, m_ch & (t0 + 1 < L), bias, HAS_BIAS)
            step0 = _adjoint_inputs(raw_dt0, ins, t0, m_ch, m_n, L, A_log2e, HAS_Z, SOFTPLUS, HAS_RESET, PTX, FAST)
            dt0, u0, _, _, _, a0, B0, _, m0, keep0 = step0
            if HAS_RESET:  # a select: a non-finite state before a reset must not reach its gradients
                h_prev = tl.where(keep0, h_prev, 0.0)
            a_h0 = a0 * h_prev
            t1 = t0 + 1
            step1 = _adjoint_inputs(raw_dt1, ins, t1, m_ch, m_n, L, A_log2e, HAS_Z, SOFTPLUS, HAS_RESET, PTX, FAST)
            _, _, _, _, _, a1, _, _, m1, keep1 = step1
            h0 = a_h0 + (dt0 * u0) * B0
            if HAS_RESET:
                h0 = tl.where(keep1, h0, 0.0)
            a_h1 = a1 * h0
            # the adjoint through t1, then t0; the chunk's stores after its last step (a store
            # between steps would hold back loads)
            ts, steps, a_hs, ms = (t0, t1), (step0, step1), (a_h0, a_h1), (m0, m1)
            grads = ()
            for j in tl.static_range(BLOCK_T - 1, -1, -1):
                q, sums, du, ddt, dz = _adjoint_step(
                    p_dBC,
                    ts[j],
                    L,
                    q,
                    a_hs[j],
                    steps[j],
                    A_log2e,
                    D_ch,
                    sums,
                    nn,
                    lane,
                    N,
                    HAS_D,
                    HAS_Z,
                    HAS_BIAS,
                    SOFTPLUS,
                    LANE_SUM_ASM,
                )
                grads = ((du, ddt, dz),) + grads
            for j in tl.static_range(BLOCK_T):
                du, ddt, dz = grads[j]
                _store_grads(outs, ts[j], du, ddt, dz, ms[j], HAS_Z)
    dA, dD, dbias = sums
    if i_r == 0:
        tl.store(p_dh, q, mask=m_s)
    # [ranges, b, N + 2, d]: this range's sums over its steps of the dA, dD and d(delta_bias) terms
    p_part += (i_r * nb + i_b) * (N + 2) * d + ch
    tl.store(p_part + nn * d, dA, mask=m_s)
    if HAS_D:
        tl.store(p_part + N * d, dD, mask=m_ch)
    if HAS_BIAS:
        tl.store(p_part + (N + 1) * d, dbias, mask=m_ch)
