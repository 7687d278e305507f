"""Fused Triton selective scan (Mamba-1) with initial state, resets and final state, forward and backward.

Twin of :func:`mamba_rl.kernels.naive.selective_scan_ref` (same signature, same semantics).

Layout. One program is one warp: a batch row and 32 channels. A thread owns one channel and all of
its ``d_state`` states (a ``[N, 32]`` tile, states in registers, channels across lanes), so the
recurrence ``h_t = a_t h_{t-1} + x_t`` (``a_t = exp(delta_t A)``, zero at a reset) runs step by
step inside the thread: no shuffles, and ``y_t = C_t . h_t`` is a sum inside the thread. Time is
walked in chunks of ``BLOCK_T`` steps that are unrolled, so the loads of a chunk issue together.

Memory. The forward keeps the fp32 state at every ``BLOCK_T * CK``-th step (``[b, segments + 1, N,
d]``): ``d_state / (BLOCK_T * CK)`` of ``b * d * L`` floats, the only tensor saved besides the
inputs. The per-step states ``[b, d, n, L]`` are never stored. The backward's scratch of chunk
states (one segment per warp) is stored evict-last in L2 and the gradients evict-first, so that it
is read back from L2 rather than from DRAM.

Backward, one segment at a time from the end: (1) rebuild the states entering each chunk of the
segment from its checkpoint (a ``[b, CK, N, d]`` scratch); (2) walk the chunks backwards: rerun the
chunk forward keeping ``h_{t-1}`` in registers, then run the adjoint ``g_t = C_t dy'_t + a_{t+1}
g_{t+1}`` backwards through it. The gradients of ``B`` and ``C`` are sums over channels, i.e. over
the warp's lanes; each warp writes its sums for every step into a partial buffer
``[d / BD, b, L, 2 N]`` that is summed afterwards in a fixed order, so the gradients are
deterministic (no atomics). Those lane sums are a reduce-scatter in inline PTX
(:func:`_reduce_scatter_asm`: 31 shuffles per step at ``d_state`` 16 instead of 160 for a
butterfly per value); a chunk is two steps, whose first step alone is rerun (the second's state is the
adjoint's ``a_t h_{t-1} + dt_t u_t B_t``), so each state-step costs two ``exp2`` in the backward.

Time ranges. ``b * d / 32`` warps (512 at B=64, d=256) are one per SM sub-partition, too few to hide
each step's latency, so time is cut into ranges that run in parallel (``fwd_ranges``,
``bwd_ranges``). The recurrence is linear: over a piece of the sequence, ``h_end = P h_start +
loc`` with ``P = prod_t a_t`` (``exp2(A sum_t delta_t)``, zero if the piece has a reset) and
``loc`` the end state from zero; the adjoint likewise, ``q_start = P q_end + loc``, and it needs no
state. So every piece first runs alone (many in parallel, ``_scan_fwd_local_kernel`` /
``_scan_bwd_local_kernel``), a short sequential pass over the pieces chains them
(``_scan_carry_kernel``), and each range then runs from the state (or gradient) that enters it.
The extra pass reads ``u, delta, B`` (forward) or ``delta, C, dy, z`` (backward) once more.

Latency. A warp holds few steps in flight, so the inputs of the next chunk are prefetched into L1
(``prefetch.global.L1``) while the current one is computed, and a chunk's outputs are stored after
its last step (a store between steps would keep the next step's loads, which it might alias, from
issuing early); the backward also prefetches the state entering its next chunk (read back from
its scratch). ``exp2`` is ``ex2.approx.ftz``, and softplus and sigmoid are built from
``ex2.approx`` / ``rcp.approx`` and a series for ``log1p`` (``fast_math``: ~15 instructions
instead of ~40, within 5e-6 relative). Under ``TRITON_INTERPRET=1`` (no inline PTX) the prefetches
are skipped, ``exp2`` is ``tl.exp2``, softplus and sigmoid the accurate ones, and the lane sums are
``tl.sum``.

Launches. The compiled kernels are launched directly after their first call
(:class:`~mamba_rl.kernels.triton_launch.DirectLauncher`): the JIT's binding of ~60 arguments was
most of the host's time per launch, and at T=1024 the host's time per forward+backward is about
the GPU's.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from mamba_rl.kernels.triton_host import next_pow2, time_major_like
from mamba_rl.kernels.triton_launch import DirectLauncher
from mamba_rl.kernels.triton_launch import interpreted as _interpreted

__all__ = ["selective_scan_triton", "SCAN_CONFIG"]

LOG2E = 1.4426950408889634
# steps per backward chunk (SCAN_CONFIG["bwd_chunk_steps"]): one step, whose entering state the
# kernel reads back from the segment's scratch, or two written out, whose first step it reruns
BWD_CHUNK_STEPS = (1, 2)


@triton.jit
def _rcp_approx(x):
    """``1 / x`` by ``rcp.approx.ftz.f32``: one MUFU instruction, ~1 ulp."""
    return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                     pack=1)


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


@triton.jit
def _softplus(x):
    # max(x, 0) + log1p(exp(-|x|)), with log1p(y) = log(w) * y / (w - 1), w = 1 + y (exact for
    # small y, where log(1 + y) alone would round to zero)
    y = tl.exp(-tl.abs(x))
    w = 1.0 + y
    log1p_y = tl.where(w == 1.0, y, tl.log(w) * y / (w - 1.0))
    return tl.maximum(x, 0.0) + log1p_y


@triton.jit
def _exp2(x, PTX: tl.constexpr):
    if PTX:
        # no denormal range fix-up: decays below 2^-126 are zero
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.exp2(x)


@triton.jit
def _prefetch(ptrs, PTX: tl.constexpr):
    """Ask for the lines at ``ptrs`` in L1 without waiting for them (no-op in the interpreter)."""
    if PTX:
        tl.inline_asm_elementwise("prefetch.global.L1 [$1]; mov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                                  is_pure=False, pack=1)


@triton.jit
def _prefetch_l2(ptrs, PTX: tl.constexpr):
    """Ask for the lines at ``ptrs`` in L2 only (no-op in the interpreter)."""
    if PTX:
        tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                                  is_pure=False, pack=1)


@triton.jit
def _discard_l2(ptrs, PTX: tl.constexpr):
    """Drop the L2 lines at ``ptrs`` (128-byte aligned) without writing them back: their contents
    become undefined (``discard.global.L2``; no-op in the interpreter). For scratch that is dead."""
    if PTX:
        tl.inline_asm_elementwise("discard.global.L2 [$1], 128; mov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                                  is_pure=False, pack=1)


@triton.jit
def _prefetch_chunk(p_row, p_bc, t0, L, s_t, s_bc_t, lane, BLOCK_T: tl.constexpr, PTX: tl.constexpr):
    """Prefetch steps ``[t0, t0 + BLOCK_T)`` (clamped to the sequence) of a per-channel stream
    (``p_row [1, BD]``, step stride ``s_t``) and, when ``p_bc`` is given, of a ``[L, n]`` stream whose
    chunk rows are spread over the lanes. A chunk's loads sit behind the previous step's store, so
    without this every step would wait for memory."""
    if PTX:
        for j in tl.static_range(BLOCK_T):
            _prefetch(p_row + tl.minimum(t0 + j, L - 1) * s_t, PTX)
        if p_bc is not None:
            _prefetch(p_bc + tl.minimum(t0 + lane % BLOCK_T, L - 1) * s_bc_t, PTX)


@triton.jit
def _pick(arr, jj, j: tl.constexpr):
    """Row ``j`` of ``arr [BT, ...]`` whose first axis lies inside each thread (a register read)."""
    return tl.sum(tl.where(jj == j, arr, -0.0), axis=0)


@triton.jit
def _put(arr, jj, j: tl.constexpr, v):
    return tl.where(jj == j, v[None], arr)


@functools.lru_cache(maxsize=None)
def _reduce_scatter_asm(n_state: int) -> tuple[str, str]:
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
    lines = ["{", ".reg .pred %rs_p;", ".reg .b32 %rs_l, %rs_b;", f".reg .f32 %rs_v<{v}>, %rs_s, %rs_k, %rs_r;",
             "mov.u32 %rs_l, %laneid;"]
    lines += [f"mov.b32 %rs_v{i}, ${n_state + i};" for i in range(v)]
    m, mask = v, 16
    while mask >= 1:
        if m > 1:
            half = m // 2
            lines += [f"and.b32 %rs_b, %rs_l, {mask};", "setp.ne.u32 %rs_p, %rs_b, 0;"]
            for j in range(half):
                lines += [f"selp.f32 %rs_s, %rs_v{j}, %rs_v{j + half}, %rs_p;",
                          f"selp.f32 %rs_k, %rs_v{j + half}, %rs_v{j}, %rs_p;",
                          f"shfl.sync.bfly.b32 %rs_r, %rs_s, {mask}, 31, -1;",
                          f"add.f32 %rs_v{j}, %rs_k, %rs_r;"]
            m = half
        else:
            lines += [f"shfl.sync.bfly.b32 %rs_r, %rs_v0, {mask}, 31, -1;", "add.f32 %rs_v0, %rs_v0, %rs_r;"]
        mask //= 2
    lines += [f"mov.b32 ${j}, %rs_v{min(j, m - 1)};" for j in range(n_state)]
    return "\n".join(lines + ["}"]), ",".join(["=f"] * n_state + ["f"] * v)


@triton.jit
def _store_dBC(p_part, t, L, gB, hC, nn, lane, N: tl.constexpr, RS_ASM: tl.constexpr, EF: tl.constexpr):
    """Store step ``t``'s channel sums of ``gB`` (the dB terms) and ``hC`` (the dC terms), each
    ``[N, BD]``, as row ``t`` of this program's ``[L, 2N]`` partial buffer. With ``RS_ASM`` (see
    :func:`_reduce_scatter_asm`; one warp of 32 channels, a channel per lane) the sums are
    scattered over the lanes and each lane stores its own; else ``tl.sum`` over the lanes."""
    if RS_ASM is None:
        _store_hint(p_part + t * 2 * N + nn, tl.sum(gB, axis=1, keep_dims=True), t < L, EF * 1)
        _store_hint(p_part + t * 2 * N + N + nn, tl.sum(hC, axis=1, keep_dims=True), t < L, EF * 1)
    else:
        r = tl.inline_asm_elementwise(RS_ASM[0], RS_ASM[1], [gB, hC], dtype=tl.float32, is_pure=True, pack=N)
        for j in tl.static_range(max(1, 2 * N // 32)):
            _store_hint(p_part + t * 2 * N + j + (lane * 2 * N) // 32, _pick(r, nn, j), t < L, EF * 1)


@triton.jit
def _store_hint(ptrs, x, m, HINT: tl.constexpr):
    """``tl.store`` with an L2 eviction hint: ``HINT`` 0 none, 1 evict-first (the gradients, so
    that L2 keeps room for the backward's scratch), 2 evict-last (that scratch)."""
    if HINT == 1:
        tl.store(ptrs, x, mask=m, eviction_policy="evict_first")
    elif HINT == 2:
        tl.store(ptrs, x, mask=m, eviction_policy="evict_last")
    else:
        tl.store(ptrs, x, mask=m)


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
def _decay(dt, A2, keep, HAS_RESET: tl.constexpr, PTX: tl.constexpr):
    """``a = exp2(dt A2)`` ``[N, BD]``, zero where ``keep`` ``[1, 1]`` is off: what the adjoint,
    whose values are finite, is carried back through. The reset enters the exponent as ``-inf``
    (``exp2(-inf) = +0``; ``+ 0`` leaves it bit for bit): one select per step and an FFMA per state
    instead of an FMUL and a select per state. States are cut at a reset by a select on the state
    instead (``0 * NaN`` is NaN)."""
    if HAS_RESET:
        return _exp2(dt * A2 + tl.where(keep, 0.0, float("-inf")), PTX)
    else:
        return _exp2(dt * A2, PTX)


@triton.jit
def _raw_delta(p_delta, t, m, s_dt_t, bias, HAS_BIAS: tl.constexpr):
    """Step ``t``'s raw ``delta (+ bias)`` ``[1, BD]`` (``delta`` read as 0 where ``m`` is off)."""
    draw = tl.load(p_delta + t * s_dt_t, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        draw += bias
    return draw


@triton.jit
def _step_size(draw, m, SOFTPLUS: tl.constexpr, FAST: tl.constexpr):
    """The step size ``dt`` of a raw ``delta (+ bias)``: softplus of it when asked; 0 where ``m``
    is off."""
    dt = draw
    if SOFTPLUS:
        dt = _softplus_fast(draw, FAST)
    return tl.where(m, dt, 0.0)


@triton.jit
def _chunk_deltas(p_delta, i_c, m_ch, L, s_dt_t, bias, BLOCK_T: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The raw ``delta (+ bias)`` ``[1, BD]`` of chunk ``i_c``'s steps ``i_c BLOCK_T + j``, ``j <
    BLOCK_T <= 4``, as four values (zeros past ``BLOCK_T``; ``delta`` reads as 0 past the end),
    loaded a chunk before their use (``PIPE``): the first use of each step's delta waited on its
    load at the start of every chunk (ncu: the most stalled instruction of the scan kernels). Four
    named values, not a ``[BLOCK_T, 1, BD]`` tile: Triton gives such a tile a layout of its own and
    converts it through shared memory."""
    tl.static_assert(BLOCK_T <= 4, "deltas are loaded a chunk ahead for chunks of up to 4 steps")
    t = tl.full([1, 1], 0, tl.int32) + i_c * BLOCK_T
    d0 = _raw_delta(p_delta, t, m_ch & (t < L), s_dt_t, bias, HAS_BIAS)
    d1 = d0 * 0.0
    d2 = d1
    d3 = d1
    if BLOCK_T > 1:
        d1 = _raw_delta(p_delta, t + 1, m_ch & (t + 1 < L), s_dt_t, bias, HAS_BIAS)
    if BLOCK_T > 2:
        d2 = _raw_delta(p_delta, t + 2, m_ch & (t + 2 < L), s_dt_t, bias, HAS_BIAS)
    if BLOCK_T > 3:
        d3 = _raw_delta(p_delta, t + 3, m_ch & (t + 3 < L), s_dt_t, bias, HAS_BIAS)
    return d0, d1, d2, d3


@triton.jit
def _delta_at(e0, e1, e2, e3, j: tl.constexpr, p_delta, t, m, s_dt_t, bias, PIPE: tl.constexpr,
              HAS_BIAS: tl.constexpr):
    """Step ``t``'s (row ``j`` of its chunk) raw ``delta (+ bias)``: with ``PIPE`` the value
    :func:`_chunk_deltas` loaded a chunk ahead (``(e0, e1, e2, e3)[j]``), else loaded here."""
    if not PIPE:
        return _raw_delta(p_delta, t, m, s_dt_t, bias, HAS_BIAS)
    elif j == 0:
        return e0
    elif j == 1:
        return e1
    elif j == 2:
        return e2
    else:
        return e3


@triton.jit
def _keep(p_reset, t, m_t, s_r_t, HAS_RESET: tl.constexpr):
    """True where step ``t`` carries the state on (no reset there, or no resets at all)."""
    if HAS_RESET:
        return tl.load(p_reset + t * s_r_t, mask=m_t, other=0) == 0
    else:
        return t >= 0


@triton.jit
def _step(h, A2, draw, p_u, p_B, p_C, p_reset, t, m_ch, m_n, L, s_u_t, s_B_t, s_C_t, s_r_t,
          SOFTPLUS: tl.constexpr, HAS_RESET: tl.constexpr, PTX: tl.constexpr, FAST: tl.constexpr):
    """Step ``t`` of the recurrence from ``h = h_{t-1}`` ``[N, BD]`` and the step's raw ``delta (+
    bias)`` ``draw``: returns ``h_t``, the step size ``dt`` ``[1, BD]`` (0 past the end), ``u``
    ``[1, BD]`` and ``C_t`` ``[N, 1]``."""
    m_t = t < L
    m = m_ch & m_t
    dt = _step_size(draw, m, SOFTPLUS, FAST)
    u = tl.load(p_u + t * s_u_t, mask=m, other=0.0).to(tl.float32)
    t_in = tl.minimum(t, L - 1)
    Bv = _load_states(p_B + t_in * s_B_t, m_n)
    Cv = _load_states(p_C + t_in * s_C_t, m_n)
    if HAS_RESET:
        # a select, not a zero decay: a non-finite state before a reset must not survive it
        h = tl.where(_keep(p_reset, t, m_t, s_r_t, HAS_RESET), h, 0.0)
    h = _exp2(dt * A2, PTX) * h + (dt * u) * Bv
    return h, dt, u, Cv


@triton.jit
def _adjoint_inputs(draw, p_u, p_z, p_dy, p_B, p_C, p_reset, t, m_ch, m_n, L, s_u_t, s_z_t, s_dy_t,
                    s_B_t, s_C_t, s_r_t, A2, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr,
                    HAS_RESET: tl.constexpr, PTX: tl.constexpr, FAST: tl.constexpr):
    """What the backward needs of step ``t`` (its raw ``delta (+ bias)`` is ``draw``): the step size
    ``dt``, ``u``, the gradient reaching
    ``C_t h_t`` (``dy'``, through the ``z`` gate), the factor that turns ``C_t h_t + D u_t`` into
    ``dz`` (``zg``), ``softplus'`` of the raw step (``sg``), the decay ``a_t`` ``[N, BD]`` (zero at a
    reset), ``B_t``, ``C_t`` ``[N, 1]``, the channels' mask ``[1, BD]`` (all zero past the end) and
    whether the step carries the state on (``keep`` ``[1, 1]``, False at a reset)."""
    m_t = t < L
    m = m_ch & m_t
    dt = _step_size(draw, m, SOFTPLUS, FAST)
    u = tl.load(p_u + t * s_u_t, mask=m, other=0.0).to(tl.float32)
    dy = tl.load(p_dy + t * s_dy_t, mask=m, other=0.0).to(tl.float32)
    t_in = tl.minimum(t, L - 1)
    Bv = _load_states(p_B + t_in * s_B_t, m_n)
    Cv = _load_states(p_C + t_in * s_C_t, m_n)
    keep = _keep(p_reset, t, m_t, s_r_t, HAS_RESET)
    a = _decay(dt, A2, keep, HAS_RESET, PTX)
    dyp = dy
    zg = dy
    if HAS_Z:
        z = tl.load(p_z + t * s_z_t, mask=m, other=0.0).to(tl.float32)
        sz = _sigmoid_fast(z, FAST)
        dyp = dy * z * sz
        zg = dy * sz * (1.0 + z * (1.0 - sz))
    sg = dt
    if SOFTPLUS:
        sg = _sigmoid_fast(draw, FAST)
    return dt, u, dyp, zg, sg, a, Bv, Cv, m, keep


@triton.jit
def _adjoint_step(p_dBC, t, L, q, ah, a, A2, dt, u, dyp, zg, sg, Bv, Cv, m, Dv, dA, dD, dbias, nn, lane,
                  N: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                  SOFTPLUS: tl.constexpr, RS_ASM: tl.constexpr, EF: tl.constexpr):
    """Step ``t`` of the adjoint, from ``q`` (the gradient reaching ``h_t`` from later steps) and
    ``ah = a_t h_{t-1}``: stores the step's dB and dC channel sums, adds to dA, dD, d(delta_bias),
    and returns the gradient reaching ``h_{t-1}`` with ``du_t``, ``ddelta_t`` and ``dz_t``
    ``[1, BD]``."""
    dtu = dt * u
    h = ah + dtu * Bv
    g = Cv * dyp + q
    s = tl.sum(g * Bv, axis=0, keep_dims=True)
    w = g * ah
    dA += w * dt
    ddt = tl.sum(w * A2, axis=0, keep_dims=True) * 0.6931471805599453 + u * s
    _store_dBC(p_dBC, t, L, g * dtu, h * dyp, nn, lane, N, RS_ASM, EF)
    du = dt * s
    dz = dt
    if HAS_Z:
        ypre = tl.sum(h * Cv, axis=0, keep_dims=True)
        if HAS_D:
            ypre += Dv * u
        dz = ypre * zg
    if HAS_D:
        du += dyp * Dv
        dD += dyp * u
    if SOFTPLUS:
        ddt = ddt * sg
    ddt = tl.where(m, ddt, 0.0)
    if HAS_BIAS:
        dbias += ddt
    return a * g, dA, du, ddt, dz, dD, dbias


@triton.jit
def _store_grads(p_du, p_ddelta, p_dz, t, s_du_t, s_ddt_t, s_dz_t, du, ddt, dz, m, HAS_Z: tl.constexpr,
                 EF: tl.constexpr):
    """Store step ``t``'s ``du``, ``ddelta`` and (``HAS_Z``) ``dz`` ``[1, BD]`` where ``m``."""
    _store_hint(p_du + t * s_du_t, du.to(p_du.dtype.element_ty), m, EF * 1)
    _store_hint(p_ddelta + t * s_ddt_t, ddt.to(p_ddelta.dtype.element_ty), m, EF * 1)
    if HAS_Z:
        _store_hint(p_dz + t * s_dz_t, dz.to(p_dz.dtype.element_ty), m, EF * 1)


@triton.jit
def _fwd_chunk(h, sdt, kept, i_c, e0, e1, e2, e3, A2, p_delta, p_u, p_B, p_reset, pf_dt, pf_u, pf_B, m_ch, m_n, L, lane,
               s_dt_t, s_u_t, s_B_t, s_r_t, bias, BLOCK_T: tl.constexpr, PF: tl.constexpr,
               PIPE: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_RESET: tl.constexpr,
               PTX: tl.constexpr, FAST: tl.constexpr):
    """Chunk ``i_c`` (``BLOCK_T`` steps) of the recurrence from ``h``, prefetching the chunk ``PF``
    ahead: ``h`` after it, ``sdt`` plus its step sizes, ``kept`` and-ed with "no reset in it"
    (callers that need neither pass anything and drop them; C is not read) and, with ``PIPE``, the
    next chunk's raw deltas (this chunk's are ``e0 .. e3``, :func:`_chunk_deltas`; without ``PIPE``
    they are loaded here and ``e0 .. e3`` passed through)."""
    t_pf = (i_c + PF) * BLOCK_T
    _prefetch_chunk(pf_dt, pf_B, t_pf, L, s_dt_t, s_B_t, lane, BLOCK_T, PTX)
    _prefetch_chunk(pf_u, None, t_pf, L, s_u_t, s_u_t, lane, BLOCK_T, PTX)
    n0, n1, n2, n3 = e0, e1, e2, e3
    if PIPE:
        n0, n1, n2, n3 = _chunk_deltas(p_delta, i_c + 1, m_ch, L, s_dt_t, bias, BLOCK_T, HAS_BIAS)
    for j in tl.static_range(BLOCK_T):
        t = tl.full([1, 1], 0, tl.int32) + i_c * BLOCK_T + j
        draw = _delta_at(e0, e1, e2, e3, j, p_delta, t, m_ch & (t < L), s_dt_t, bias, PIPE, HAS_BIAS)
        h, dt, u, Bv = _step(h, A2, draw, p_u, p_B, p_B, p_reset, t, m_ch, m_n, L, s_u_t, s_B_t, s_B_t, s_r_t,
                             SOFTPLUS, HAS_RESET, PTX, FAST)
        sdt += dt
        kept = kept & _keep(p_reset, t, t < L, s_r_t, HAS_RESET)
    return h, sdt, kept, n0, n1, n2, n3


@triton.jit
def _range_start(r, range_steps, L):
    """Range ``r``'s first step ``t_lo`` (int64) and its length (at most ``range_steps``)."""
    t_lo = (r * range_steps).to(tl.int64)
    return t_lo, tl.minimum(L - t_lo, range_steps).to(tl.int32)


@triton.jit
def _at_step(p, pf, t_lo, s_t):
    """A stream's pointers ``p`` and prefetch pointers ``pf`` moved to step ``t_lo``."""
    return p + t_lo * s_t, pf + t_lo * s_t


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
def _input_pointers(p_u, p_delta, p_z, p_B, p_C, i_b, ch, nn, d, EVEN_D: tl.constexpr,
                    s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_B_b, s_B_n, s_C_b, s_C_n):
    """Batch row ``i_b``'s pointers: the channels' rows ``[1, BD]`` of u, delta, z and the states'
    columns ``[N, 1]`` of B, C (step 0); then, for prefetching, the same rows with the channels
    clamped into the tensor, and B, C at state 0."""
    ch_pf = _clamp_channels(ch, d, EVEN_D)
    return (p_u + i_b * s_u_b + ch * s_u_d, p_delta + i_b * s_dt_b + ch * s_dt_d, p_z + i_b * s_z_b + ch * s_z_d,
            p_B + i_b * s_B_b + nn * s_B_n, p_C + i_b * s_C_b + nn * s_C_n,
            p_u + i_b * s_u_b + ch_pf * s_u_d, p_delta + i_b * s_dt_b + ch_pf * s_dt_d,
            p_z + i_b * s_z_b + ch_pf * s_z_d, p_B + i_b * s_B_b, p_C + i_b * s_C_b)


@triton.jit
def _local_setup(p_A2, p_bias, d, n, N: tl.constexpr, BD: tl.constexpr, HAS_BIAS: tl.constexpr,
                 EVEN_D: tl.constexpr):
    """A local-range program's batch row, range, channels ``[1, BD]`` (and clamped into the tensor,
    for prefetching), states ``[N, 1]``, masks, ``A log2(e)`` ``[N, BD]`` and ``delta_bias``."""
    i_b = tl.program_id(1).to(tl.int64)
    i_r = tl.program_id(2)
    lane = tl.arange(0, BD)[None, :]
    ch = tl.program_id(0) * BD + lane
    nn = tl.arange(0, N)[:, None]
    m_ch = ch < d
    m_n = nn < n
    m_s = m_ch & m_n
    A2 = tl.load(p_A2 + nn * d + ch, mask=m_s, other=0.0)
    bias = tl.load(p_bias + ch, mask=m_ch & HAS_BIAS, other=0.0).to(tl.float32)
    return i_b, i_r, lane, ch, _clamp_channels(ch, d, EVEN_D), nn, m_ch, m_n, m_s, A2, bias


@triton.jit
def _store_local(p_loc, p_P, x, sdt, A2, kept, i_b, i_r, nn, ch, m_s, d, N: tl.constexpr,
                 HAS_RESET: tl.constexpr, PTX: tl.constexpr):
    """Store a local range's result ``x`` (its end state, or the gradient it sends back) and its
    carry factor ``P = exp2(A log2(e) sum_t delta_t)``, zero if it holds a reset, at row ``i_r``
    of ``[b, ranges, N, d]``."""
    P = _exp2(sdt * A2, PTX)
    if HAS_RESET:
        P = tl.where(kept, P, 0.0)
    p_out = (i_b * tl.num_programs(2) + i_r) * N * d + nn * d + ch
    tl.store(p_loc + p_out, x, mask=m_s)
    tl.store(p_P + p_out, P, mask=m_s)


@triton.jit
def _scan_fwd_local_kernel(
    p_u, p_delta, p_A2, p_B, p_bias, p_reset, p_loc, p_P,
    L, d, n, range_steps,
    s_u_b, s_u_d, s_u_t,
    s_dt_b, s_dt_d, s_dt_t,
    s_B_b, s_B_n, s_B_t,
    s_r_b, s_r_t,
    N: tl.constexpr, BLOCK_T: tl.constexpr, BD: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_RESET: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
    PTX: tl.constexpr, FAST: tl.constexpr, PF: tl.constexpr, PIPE: tl.constexpr,
):
    """Time range ``r = program_id(2)`` (steps ``[r R, (r + 1) R)``, ``R = range_steps``) of the
    recurrence, alone: the state it ends in from a zero state (``loc``) and the factor ``P = prod_t
    a_t`` by which the state entering it is carried to its end (``[b, ranges, N, d]`` each)."""
    i_b, i_r, lane, ch, ch_pf, nn, m_ch, m_n, m_s, A2, bias = _local_setup(p_A2, p_bias, d, n, N, BD, HAS_BIAS, EVEN_D)
    if EVEN_N:  # no padded states: B and C load unmasked
        m_n = None
    pf_u = p_u + i_b * s_u_b + ch_pf * s_u_d
    pf_dt = p_delta + i_b * s_dt_b + ch_pf * s_dt_d
    pf_B = p_B + i_b * s_B_b
    p_u += i_b * s_u_b + ch * s_u_d
    p_delta += i_b * s_dt_b + ch * s_dt_d
    p_B += i_b * s_B_b + nn * s_B_n
    p_reset += i_b * s_r_b
    # every stream starts at the range's first step; L: the range's length
    t_lo, L = _range_start(i_r, range_steps, L)
    p_u, pf_u = _at_step(p_u, pf_u, t_lo, s_u_t)
    p_delta, pf_dt = _at_step(p_delta, pf_dt, t_lo, s_dt_t)
    p_B, pf_B = _at_step(p_B, pf_B, t_lo, s_B_t)
    p_reset += t_lo * s_r_t
    h = tl.zeros([N, BD], dtype=tl.float32)
    sdt = tl.zeros([1, BD], dtype=tl.float32)
    kept = tl.full([1, 1], 1, tl.int1)
    e0 = tl.zeros([1, BD], dtype=tl.float32)
    e1, e2, e3 = e0, e0, e0
    if PIPE:
        e0, e1, e2, e3 = _chunk_deltas(p_delta, 0, m_ch, L, s_dt_t, bias, BLOCK_T, HAS_BIAS)
    for i_c in range(tl.cdiv(L, BLOCK_T)):
        # past the range's end dt = 0, x = 0: h unchanged
        h, sdt, kept, e0, e1, e2, e3 = _fwd_chunk(
            h, sdt, kept, i_c, e0, e1, e2, e3, A2, p_delta, p_u, p_B, p_reset, pf_dt, pf_u, pf_B, m_ch, m_n, L, lane,
            s_dt_t, s_u_t, s_B_t, s_r_t, bias, BLOCK_T, PF, PIPE, HAS_BIAS, SOFTPLUS, HAS_RESET, PTX, FAST)
    _store_local(p_loc, p_P, h, sdt, A2, kept, i_b, i_r, nn, ch, m_s, d, N, HAS_RESET, PTX)


@triton.jit
def _scan_fwd_kernel(
    p_u, p_delta, p_A2, p_B, p_C, p_D, p_z, p_bias, p_reset,
    p_y, p_hck, p_x, p_hend,
    L, d, n, n_chunks, range_segs, x_every, n_x,
    s_u_b, s_u_d, s_u_t,
    s_dt_b, s_dt_d, s_dt_t,
    s_z_b, s_z_d, s_z_t,
    s_B_b, s_B_n, s_B_t,
    s_C_b, s_C_n, s_C_t,
    s_y_b, s_y_d, s_y_t,
    s_r_b, s_r_t,
    N: tl.constexpr, BLOCK_T: tl.constexpr, BD: tl.constexpr, CK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_RESET: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr, PTX: tl.constexpr, FAST: tl.constexpr,
    PF: tl.constexpr, PIPE: tl.constexpr,
):
    i_d = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    i_r = tl.program_id(2)
    ch = i_d * BD + tl.arange(0, BD)[None, :]
    nn = tl.arange(0, N)[:, None]
    m_ch = ch < d
    m_n = nn < n
    m_s = m_ch & m_n
    if EVEN_N:  # no padded states: B and C load unmasked
        m_n = None
    A2 = tl.load(p_A2 + nn * d + ch, mask=m_s, other=0.0)
    bias = tl.load(p_bias + ch, mask=m_ch & HAS_BIAS, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(p_D + ch, mask=m_ch, other=0.0).to(tl.float32)
    p_u, p_delta, p_z, p_B, p_C, pf_u, pf_dt, pf_z, pf_B, pf_C = _input_pointers(
        p_u, p_delta, p_z, p_B, p_C, i_b, ch, nn, d, EVEN_D, s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_B_b, s_B_n,
        s_C_b, s_C_n)
    p_y += i_b * s_y_b + ch * s_y_d
    p_reset += i_b * s_r_b
    # this range's steps [t_lo, t_lo + L): every stream starts at t_lo, so that the loop below is
    # the one-range loop (the same code; ptxas schedules variants of it up to 2x slower)
    range_steps = range_segs * CK * BLOCK_T
    t_lo, L = _range_start(i_r, range_steps, L)
    p_u, pf_u = _at_step(p_u, pf_u, t_lo, s_u_t)
    p_delta, pf_dt = _at_step(p_delta, pf_dt, t_lo, s_dt_t)
    p_z, pf_z = _at_step(p_z, pf_z, t_lo, s_z_t)
    p_B, pf_B = _at_step(p_B, pf_B, t_lo, s_B_t)
    p_C, pf_C = _at_step(p_C, pf_C, t_lo, s_C_t)
    p_y += t_lo * s_y_t
    p_reset += t_lo * s_r_t
    # [b, n_x + 1, N, d]: the state entering each local range (h0 first)
    h = tl.load(p_x + (i_b * (n_x + 1) + i_r * x_every) * N * d + nn * d + ch, mask=m_s, other=0.0)
    # [b, n_seg + 1, N, d]: the states entering every CK-th chunk, for the backward
    n_seg = tl.cdiv(n_chunks, CK)
    p_hck += (i_b * (n_seg + 1) + i_r * range_segs) * N * d + nn * d + ch
    lane = tl.arange(0, BD)[None, :]
    jj = tl.arange(0, BLOCK_T)[:, None, None]
    n0 = tl.zeros([1, BD], dtype=tl.float32)
    n1, n2, n3 = n0, n0, n0
    if PIPE:
        n0, n1, n2, n3 = _chunk_deltas(p_delta, 0, m_ch, L, s_dt_t, bias, BLOCK_T, HAS_BIAS)
    for i_c in range(tl.cdiv(L, BLOCK_T)):
        YY = tl.zeros([BLOCK_T, 1, BD], dtype=tl.float32)
        t_pf = (i_c + PF) * BLOCK_T
        _prefetch_chunk(pf_dt, pf_B, t_pf, L, s_dt_t, s_B_t, lane, BLOCK_T, PTX)
        _prefetch_chunk(pf_u, pf_C, t_pf, L, s_u_t, s_C_t, lane, BLOCK_T, PTX)
        if HAS_Z:
            _prefetch_chunk(pf_z, None, t_pf, L, s_z_t, s_z_t, lane, BLOCK_T, PTX)
        # this chunk's raw deltas; with PIPE loaded one chunk ahead (see _chunk_deltas)
        e0, e1, e2, e3 = n0, n1, n2, n3
        if PIPE:
            n0, n1, n2, n3 = _chunk_deltas(p_delta, i_c + 1, m_ch, L, s_dt_t, bias, BLOCK_T, HAS_BIAS)
        for j in tl.static_range(BLOCK_T):
            t = tl.full([1, 1], 0, tl.int32) + i_c * BLOCK_T + j
            draw = _delta_at(e0, e1, e2, e3, j, p_delta, t, m_ch & (t < L), s_dt_t, bias, PIPE, HAS_BIAS)
            h, dt, u, Cv = _step(h, A2, draw, p_u, p_B, p_C, p_reset, t, m_ch, m_n, L, s_u_t, s_B_t, s_C_t, s_r_t,
                                 SOFTPLUS, HAS_RESET, PTX, FAST)
            y = tl.sum(h * Cv, axis=0, keep_dims=True)
            if HAS_D:
                y += Dv * u
            if HAS_Z:
                z = tl.load(p_z + t * s_z_t, mask=m_ch & (t < L), other=0.0).to(tl.float32)
                y *= z * _sigmoid_fast(z, FAST)
            YY = _put(YY, jj, j, y)
        # stores after the chunk: a store between two steps would keep the next step's loads (which
        # it might alias) from issuing early
        for j in tl.static_range(BLOCK_T):
            t = tl.full([1, 1], 0, tl.int32) + i_c * BLOCK_T + j
            tl.store(p_y + t * s_y_t, _pick(YY, jj, j).to(p_y.dtype.element_ty), mask=m_ch & (t < L))
        tl.store(p_hck + ((i_c + 1) // CK) * N * d, h, mask=m_s & ((i_c + 1) % CK == 0))
    # [b, ranges, N, d]: the state each range ends in (the last one's is h_last)
    tl.store(p_hend + (i_b * tl.num_programs(2) + i_r) * N * d + nn * d + ch, h, mask=m_s)


@triton.jit
def _scan_bwd_local_kernel(
    p_delta, p_A2, p_C, p_z, p_bias, p_reset, p_dy, p_loc, p_P,
    L, d, n, r_first, range_steps,
    s_dt_b, s_dt_d, s_dt_t,
    s_z_b, s_z_d, s_z_t,
    s_C_b, s_C_n, s_C_t,
    s_dy_b, s_dy_d, s_dy_t,
    s_r_b, s_r_t,
    N: tl.constexpr, BLOCK_T: tl.constexpr, BD: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_RESET: tl.constexpr,
    EVEN_N: tl.constexpr, EVEN_D: tl.constexpr, PTX: tl.constexpr, FAST: tl.constexpr,
    PF: tl.constexpr, PIPE: tl.constexpr,
):
    """Time range ``r = r_first + program_id(2)`` (steps ``[r R, (r + 1) R)``, ``R = range_steps``)
    of the adjoint, alone: the gradient ``q`` it sends to the state entering it when none comes in
    from its right end (``loc``), and the factor ``P = prod_t a_t`` by which what does come in is
    carried through it (``[b, ranges, N, d]`` each). The adjoint ``q_{t-1} = a_t (C_t dy'_t +
    q_t)`` needs no state ``h``, only ``delta``, ``C``, ``dy`` and ``z``."""
    i_b, i_r, lane, ch, ch_pf, nn, m_ch, m_n, m_s, A2, bias = _local_setup(p_A2, p_bias, d, n, N, BD, HAS_BIAS, EVEN_D)
    if EVEN_N:  # no padded states: B and C load unmasked
        m_n = None
    pf_dt = p_delta + i_b * s_dt_b + ch_pf * s_dt_d
    pf_dy = p_dy + i_b * s_dy_b + ch_pf * s_dy_d
    pf_z = p_z + i_b * s_z_b + ch_pf * s_z_d
    pf_C = p_C + i_b * s_C_b
    p_delta += i_b * s_dt_b + ch * s_dt_d
    p_dy += i_b * s_dy_b + ch * s_dy_d
    p_z += i_b * s_z_b + ch * s_z_d
    p_C += i_b * s_C_b + nn * s_C_n
    p_reset += i_b * s_r_b
    # every stream starts at the range's first step; L: the range's length
    t_lo, L = _range_start(r_first + i_r, range_steps, L)
    p_delta, pf_dt = _at_step(p_delta, pf_dt, t_lo, s_dt_t)
    p_dy, pf_dy = _at_step(p_dy, pf_dy, t_lo, s_dy_t)
    p_z, pf_z = _at_step(p_z, pf_z, t_lo, s_z_t)
    p_C, pf_C = _at_step(p_C, pf_C, t_lo, s_C_t)
    p_reset += t_lo * s_r_t
    n_c = tl.cdiv(L, BLOCK_T)
    q = tl.zeros([N, BD], dtype=tl.float32)
    sdt = tl.zeros([1, BD], dtype=tl.float32)
    kept = tl.full([1, 1], 1, tl.int1)
    n0 = tl.zeros([1, BD], dtype=tl.float32)
    n1, n2, n3 = n0, n0, n0
    if PIPE:
        n0, n1, n2, n3 = _chunk_deltas(p_delta, n_c - 1, m_ch, L, s_dt_t, bias, BLOCK_T, HAS_BIAS)
    for i_ci in range(n_c):
        i_c = n_c - 1 - i_ci
        t_pf = tl.maximum(i_c - PF, 0) * BLOCK_T
        _prefetch_chunk(pf_dt, pf_C, t_pf, L, s_dt_t, s_C_t, lane, BLOCK_T, PTX)
        _prefetch_chunk(pf_dy, None, t_pf, L, s_dy_t, s_dy_t, lane, BLOCK_T, PTX)
        if HAS_Z:
            _prefetch_chunk(pf_z, None, t_pf, L, s_z_t, s_z_t, lane, BLOCK_T, PTX)
        # this chunk's raw deltas; with PIPE loaded one chunk ahead (the chunk before this one)
        e0, e1, e2, e3 = n0, n1, n2, n3
        if PIPE:
            n0, n1, n2, n3 = _chunk_deltas(p_delta, tl.maximum(i_c - 1, 0), m_ch, L, s_dt_t, bias, BLOCK_T, HAS_BIAS)
        for jr in tl.static_range(BLOCK_T):
            t = tl.full([1, 1], 0, tl.int32) + i_c * BLOCK_T + (BLOCK_T - 1 - jr)
            m_t = t < L
            m = m_ch & m_t
            draw = _delta_at(e0, e1, e2, e3, BLOCK_T - 1 - jr, p_delta, t, m, s_dt_t, bias, PIPE, HAS_BIAS)
            dt = _step_size(draw, m, SOFTPLUS, FAST)
            dyp = tl.load(p_dy + t * s_dy_t, mask=m, other=0.0).to(tl.float32)
            if HAS_Z:
                z = tl.load(p_z + t * s_z_t, mask=m, other=0.0).to(tl.float32)
                dyp *= z * _sigmoid_fast(z, FAST)
            Cv = _load_states(p_C + tl.minimum(t, L - 1) * s_C_t, m_n)
            keep = _keep(p_reset, t, m_t, s_r_t, HAS_RESET)
            kept = kept & keep
            # past the range's end dt = 0, dy' = 0: q passes unchanged
            q = _decay(dt, A2, keep, HAS_RESET, PTX) * (Cv * dyp + q)
            sdt += dt
    _store_local(p_loc, p_P, q, sdt, A2, kept, i_b, i_r, nn, ch, m_s, d, N, HAS_RESET, PTX)


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


@triton.jit
def _scan_bwd_kernel(
    p_u, p_delta, p_A2, p_B, p_C, p_D, p_z, p_bias, p_reset, p_hck, p_hseg, p_dy, p_q,
    p_du, p_ddelta, p_dz, p_dBC, p_part, p_dh,
    L, d, n, n_chunks, range_segs, q_every, n_q,
    s_u_b, s_u_d, s_u_t,
    s_dt_b, s_dt_d, s_dt_t,
    s_z_b, s_z_d, s_z_t,
    s_B_b, s_B_n, s_B_t,
    s_C_b, s_C_n, s_C_t,
    s_dy_b, s_dy_d, s_dy_t,
    s_du_b, s_du_d, s_du_t,
    s_ddt_b, s_ddt_d, s_ddt_t,
    s_dz_b, s_dz_d, s_dz_t,
    s_r_b, s_r_t,
    N: tl.constexpr, BLOCK_T: tl.constexpr, BD: tl.constexpr, CK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_RESET: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr, PTX: tl.constexpr, FAST: tl.constexpr,
    PF: tl.constexpr, PIPE: tl.constexpr, PIPE_ADJ: tl.constexpr, RS_ASM: tl.constexpr, PF_H: tl.constexpr,
    HSEG_CG: tl.constexpr, HSEG_KEEP: tl.constexpr,
    HSEG_DISCARD: tl.constexpr, OUT_EF: tl.constexpr,
):
    tl.static_assert((BLOCK_T == 1) | (BLOCK_T == 2), "a backward chunk is one step or two written out")
    i_d = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    i_r = tl.program_id(2)
    nb = tl.num_programs(1)
    lane = tl.arange(0, BD)[None, :]
    ch = i_d * BD + lane
    nn = tl.arange(0, N)[:, None]
    m_ch = ch < d
    m_n = nn < n
    m_s = m_ch & m_n
    if EVEN_N:  # no padded states: B and C load unmasked
        m_n = None
    A2 = tl.load(p_A2 + nn * d + ch, mask=m_s, other=0.0)
    bias = tl.load(p_bias + ch, mask=m_ch & HAS_BIAS, other=0.0).to(tl.float32)
    Dv = tl.load(p_D + ch, mask=m_ch & HAS_D, other=0.0).to(tl.float32)
    p_u, p_delta, p_z, p_B, p_C, pf_u, pf_dt, pf_z, pf_B, pf_C = _input_pointers(
        p_u, p_delta, p_z, p_B, p_C, i_b, ch, nn, d, EVEN_D, s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_B_b, s_B_n,
        s_C_b, s_C_n)
    pf_dy = p_dy + i_b * s_dy_b + _clamp_channels(ch, d, EVEN_D) * s_dy_d
    p_dy += i_b * s_dy_b + ch * s_dy_d
    p_du += i_b * s_du_b + ch * s_du_d
    p_ddelta += i_b * s_ddt_b + ch * s_ddt_d
    p_dz += i_b * s_dz_b + ch * s_dz_d
    p_reset += i_b * s_r_b
    # [d / BD, b, L, 2N]: this warp's sums of the dB and dC terms over its channels
    p_dBC += (i_d * nb + i_b) * L * 2 * N
    n_seg = tl.cdiv(n_chunks, CK)
    p_hck += i_b * (n_seg + 1) * N * d + nn * d + ch
    # [ranges, b, CK, N, d]: the states entering each chunk of the current segment
    p_hseg += (i_r * nb + i_b) * CK * N * d + nn * d + ch
    pf_hseg = p_hseg + (_clamp_channels(ch, d, EVEN_D) - ch)
    # [b, N, d]: dh0 out (from the first range)
    p_dh += i_b * N * d + nn * d + ch
    # q: the gradient reaching h_{t-1} through step t (for the chunk after the current one); at the
    # range's right end, from the chained local adjoints ([b, n_q + 1, N, d])
    q = tl.load(p_q + (i_b * (n_q + 1) + tl.minimum((i_r + 1) * q_every, n_q)) * N * d + nn * d + ch,
                mask=m_s, other=0.0)
    dA = tl.zeros([N, BD], dtype=tl.float32)
    dD = tl.zeros([1, BD], dtype=tl.float32)
    dbias = tl.zeros([1, BD], dtype=tl.float32)
    s_lo = i_r * range_segs
    s_hi = tl.minimum(s_lo + range_segs, n_seg)
    for i_si in range(s_lo, s_hi):
        i_s = s_hi - 1 - (i_si - s_lo)
        c_lo = i_s * CK
        c_hi = tl.minimum(c_lo + CK, n_chunks)
        # 1. the states entering each chunk of the segment
        h = tl.load(p_hck + i_s * N * d, mask=m_s, other=0.0)
        _store_hint(p_hseg, h, m_s, HSEG_KEEP * 2)
        # the raw deltas of the next chunk to walk (with PIPE; see _chunk_deltas)
        e0 = tl.zeros([1, BD], dtype=tl.float32)
        e1, e2, e3 = e0, e0, e0
        if PIPE:
            e0, e1, e2, e3 = _chunk_deltas(p_delta, c_lo, m_ch, L, s_dt_t, bias, BLOCK_T, HAS_BIAS)
        for i_c in range(c_lo, c_hi - 1):
            h, _, _, e0, e1, e2, e3 = _fwd_chunk(
                h, dbias, m_ch, i_c, e0, e1, e2, e3, A2, p_delta, p_u, p_B, p_reset, pf_dt, pf_u, pf_B, m_ch, m_n, L,
                lane, s_dt_t, s_u_t, s_B_t, s_r_t, bias, BLOCK_T, PF, PIPE, HAS_BIAS, SOFTPLUS, HAS_RESET, PTX, FAST)
            _store_hint(p_hseg + (i_c + 1 - c_lo) * N * d, h, m_s, HSEG_KEEP * 2)
        if PIPE_ADJ and not PIPE:  # (with PIPE the rebuild left chunk c_hi - 1's in e0 .. e3)
            e0, e1, e2, e3 = _chunk_deltas(p_delta, c_hi - 1, m_ch, L, s_dt_t, bias, BLOCK_T, HAS_BIAS)
        # 2. the segment's chunks (two steps t0, t1), last first: the chunk's states from the one
        # entering it, then the adjoint backwards through t1 and t0
        for i_ci in range(c_lo, c_hi):
            i_c = c_hi - 1 - (i_ci - c_lo)
            if HSEG_CG:  # from L2, not allocated in L1 (where it would evict the inputs' prefetches)
                hp = tl.load(p_hseg + (i_c - c_lo) * N * d, mask=m_s, other=0.0, cache_modifier=".cg")
            else:
                hp = tl.load(p_hseg + (i_c - c_lo) * N * d, mask=m_s, other=0.0)
            # the chunk processed next is the previous one (its entering state too, with PF_H)
            if PF_H:
                if HSEG_CG:
                    _prefetch_l2(pf_hseg + (tl.maximum(i_c - 1, c_lo) - c_lo) * N * d, PTX)
                else:
                    _prefetch(pf_hseg + (tl.maximum(i_c - 1, c_lo) - c_lo) * N * d, PTX)
            t_pf = tl.maximum(i_c - PF, 0) * BLOCK_T
            _prefetch_chunk(pf_dt, pf_B, t_pf, L, s_dt_t, s_B_t, lane, BLOCK_T, PTX)
            _prefetch_chunk(pf_u, pf_C, t_pf, L, s_u_t, s_C_t, lane, BLOCK_T, PTX)
            _prefetch_chunk(pf_dy, None, t_pf, L, s_dy_t, s_dy_t, lane, BLOCK_T, PTX)
            if HAS_Z:
                _prefetch_chunk(pf_z, None, t_pf, L, s_z_t, s_z_t, lane, BLOCK_T, PTX)
            # this chunk's raw deltas; with PIPE_ADJ loaded one chunk ahead (the chunk before this one)
            t0 = tl.full([1, 1], 0, tl.int32) + i_c * BLOCK_T
            if PIPE_ADJ:
                draw0, draw1 = e0, e1
                e0, e1, e2, e3 = _chunk_deltas(p_delta, tl.maximum(i_c - 1, c_lo), m_ch, L, s_dt_t, bias, BLOCK_T,
                                               HAS_BIAS)
            else:
                draw0 = _raw_delta(p_delta, t0, m_ch & (t0 < L), s_dt_t, bias, HAS_BIAS)
                if BLOCK_T == 2:
                    draw1 = _raw_delta(p_delta, t0 + 1, m_ch & (t0 + 1 < L), s_dt_t, bias, HAS_BIAS)
            dt0, u0, dyp0, zg0, sg0, a0, B0, C0, m0, keep0 = _adjoint_inputs(
                draw0, p_u, p_z, p_dy, p_B, p_C, p_reset, t0, m_ch, m_n, L, s_u_t, s_z_t, s_dy_t,
                s_B_t, s_C_t, s_r_t, A2, HAS_Z, SOFTPLUS, HAS_RESET, PTX, FAST)
            if HAS_RESET:  # a select: a non-finite state before a reset must not reach its gradients
                hp = tl.where(keep0, hp, 0.0)
            ah0 = a0 * hp
            if BLOCK_T == 2:
                t1 = t0 + 1
                dt1, u1, dyp1, zg1, sg1, a1, B1, C1, m1, keep1 = _adjoint_inputs(
                    draw1, p_u, p_z, p_dy, p_B, p_C, p_reset, t1, m_ch, m_n, L, s_u_t, s_z_t, s_dy_t,
                    s_B_t, s_C_t, s_r_t, A2, HAS_Z, SOFTPLUS, HAS_RESET, PTX, FAST)
                h0 = ah0 + (dt0 * u0) * B0
                if HAS_RESET:
                    h0 = tl.where(keep1, h0, 0.0)
                ah1 = a1 * h0
                q, dA, du1, ddt1, dz1, dD, dbias = _adjoint_step(
                    p_dBC, t1, L, q, ah1, a1, A2, dt1, u1, dyp1, zg1, sg1, B1, C1, m1, Dv, dA, dD, dbias, nn,
                    lane, N, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, RS_ASM, OUT_EF)
            q, dA, du0, ddt0, dz0, dD, dbias = _adjoint_step(
                p_dBC, t0, L, q, ah0, a0, A2, dt0, u0, dyp0, zg0, sg0, B0, C0, m0, Dv, dA, dD, dbias, nn, lane,
                N, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, RS_ASM, OUT_EF)
            # the chunk's stores after its last step (a store between steps would hold back loads)
            _store_grads(p_du, p_ddelta, p_dz, t0, s_du_t, s_ddt_t, s_dz_t, du0, ddt0, dz0, m0, HAS_Z, OUT_EF)
            if BLOCK_T == 2:
                _store_grads(p_du, p_ddelta, p_dz, t1, s_du_t, s_ddt_t, s_dz_t, du1, ddt1, dz1, m1, HAS_Z, OUT_EF)
            if HSEG_DISCARD:  # the chunk's entering state is dead: no write-back of it to memory
                _discard_l2(p_hseg + (i_c - c_lo) * N * d, PTX)
    if i_r == 0:
        tl.store(p_dh, q, mask=m_s)
    # [ranges, b, N + 2, d]: this range's sums over its steps of the dA, dD and d(delta_bias) terms
    p_part += (i_r * nb + i_b) * (N + 2) * d + ch
    tl.store(p_part + nn * d, dA, mask=m_s)
    if HAS_D:
        tl.store(p_part + N * d, dD, mask=m_ch)
    if HAS_BIAS:
        tl.store(p_part + (N + 1) * d, dbias, mask=m_ch)


# the kernels' compiled binaries are launched directly after their first call (host time: the JIT's
# binding of ~60 arguments took 85-100 us of a launch on the H100 machine, the binary's launcher 16-23)
_FWD_LOCAL, _FWD, _BWD_LOCAL, _BWD, _CARRY = (DirectLauncher(k) for k in (
    _scan_fwd_local_kernel, _scan_fwd_kernel, _scan_bwd_local_kernel, _scan_bwd_kernel, _scan_carry_kernel))

# Set by hand from H100 sweeps (benchmarks/bench_scan.py --scan-only, NOTES_scan.md; no autotuning:
# the kernels write into scratch buffers). ck_steps: steps per checkpoint segment (saved: d_state /
# ck_steps of b * d * L floats, 1.3 GB at B=64, T=20000; 16 steps with the L2 policies below:
# 19.65 ms at T=20000, 32 steps 20.81 (0.66 GB saved), 8 steps 19.76; results/scan_H100_v7.json);
# bwd_chunk_steps: steps per backward chunk (one step, reading every state back from the scratch:
# 29 ms, results/scan_H100_1step_sweep.json); fwd_block_t: steps
# per forward chunk (8 and 16 were slower); *_block_d: channels per one-warp program (8 or 16, which
# split a channel's states over 4 or 2 lanes, were slower); prefetch_chunks: how many chunks ahead
# the inputs are prefetched into L1 (2 and 3 changed nothing). fwd_ranges / bwd_ranges: time ranges
# run in parallel (4 forward ranges of 128-register programs and 2 backward ranges of 255-register
# ones fill the 132 SMs; one range each way was 1.7x slower, 3-4 backward ranges need a second wave
# or spill); local_ranges: about how many pieces the sequence is cut into to chain what enters each
# range; local_block_t: steps per chunk in those pieces; *_maxnreg: ptxas register caps (128 made the
# forward 1.25x faster; the backward is fastest uncapped since its reduce-scatter, 3.5% slower at
# 232); bwd_reduce_scatter: the backward's dB / dC lane sums by reduce-scatter (inline PTX, 1.17x
# faster at T=20000) instead of a tl.sum butterfly per value; fast_math: softplus and sigmoid from
# approximate MUFU ops (ex2 / rcp.approx and a series for log1p, ~5e-7 relative) instead of the
# accurate exp, log and division; bwd_prefetch_h: the backward prefetches the state entering the
# next chunk (read back from its scratch) into L1 along with the chunk's inputs. The backward's
# scratch of chunk states (bwd_hseg_*; written by each segment's rebuild, read back by its adjoint,
# 2 KB per chunk per warp) went to DRAM and back (ncu: 6 GB moved by the backward at T=4096, ~2x
# its inputs and outputs): bwd_hseg_keep stores it evict-last in L2 and bwd_out_evict_first
# stores the gradients evict-first (with 16-step segments: 21.1 -> 19.6 ms at T=20000);
# bwd_hseg_cg (read it bypassing L1), bwd_hseg_discard (drop it from L2 once read, no write-back;
# 16 more registers, spills) were slower, as were an unvectorised store of the scratch and each
# chunk's delta loaded a chunk ahead into registers (both spilled; measured at d0f07e8, removed).
# pipe_delta: the loops (PIPE_PARTS) that load each chunk's raw deltas one chunk ahead, as four
# named values (ncu on version 9: the first use of each step's delta was the most stalled
# instruction): the forward's local pass 1.74 -> 1.46 ms and the backward (its rebuild) 12.80 ->
# 12.73 at T=20000; the forward kernel (+3%), the backward's local pass (+5%) and its adjoint were
# slower or level, so they load at the use (results/scan_H100_pipe_sweep.json, scan_H100_v8.json).
SCAN_CONFIG = {
    "ck_steps": 16,
    "bwd_chunk_steps": 2,
    "fwd_block_t": 4,
    "fwd_block_d": 32,
    "bwd_block_d": 32,
    "prefetch_chunks": 1,
    "fwd_ranges": 4,
    "bwd_ranges": 2,
    "local_ranges": 64,
    "local_block_t": 4,
    "fwd_maxnreg": 128,
    "bwd_maxnreg": None,
    "bwd_reduce_scatter": True,
    "fast_math": True,
    "bwd_prefetch_h": True,
    "bwd_hseg_cg": False,
    "bwd_hseg_keep": True,
    "bwd_hseg_discard": False,
    "bwd_out_evict_first": True,
    "pipe_delta": ("fwd_local", "bwd_rebuild"),
}


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when one of its last two dims is contiguous (coalesced loads), else a copy."""
    if t.stride(-1) == 1 or t.stride(-2) == 1:
        return t
    return t.contiguous()


def _state_major(t: torch.Tensor) -> torch.Tensor:
    """``[b, n, L]`` with the states innermost (``[b, L, n]`` memory): one vector load per step."""
    if t.stride(1) == 1 or t.shape[1] == 1:
        return t
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def _ranges_for(key: str, *streams: torch.Tensor) -> int:
    """``SCAN_CONFIG[key]`` time ranges when the per-channel streams are channels-last, else one:
    time-major rows are read one lane per row, and more warps in flight thrash L1 (measured 1.3x
    slower with ranges)."""
    if all(t.stride(1) == 1 for t in streams):
        return SCAN_CONFIG[key]
    return 1


class _Ranges(NamedTuple):
    """How time is cut: ``ranges`` of ``range_segs`` checkpoint segments each, run in parallel;
    ``pieces`` local pieces of ``piece_segs`` segments, run alone and chained to give each range
    what enters it; a range is ``every`` pieces."""

    ranges: int
    range_segs: int
    piece_segs: int
    pieces: int
    every: int


def _time_ranges(n_seg: int, want: int) -> _Ranges:
    """Split ``n_seg`` checkpoint segments into about ``want`` time ranges that run in parallel.
    One range is one piece (nothing to chain)."""
    want = max(1, min(want, n_seg))
    if want > 1:
        piece_segs = triton.cdiv(n_seg, SCAN_CONFIG["local_ranges"])
        range_segs = piece_segs * triton.cdiv(triton.cdiv(n_seg, want), piece_segs)
        ranges = triton.cdiv(n_seg, range_segs)
        if ranges > 1:
            return _Ranges(ranges, range_segs, piece_segs, triton.cdiv(n_seg, piece_segs), range_segs // piece_segs)
    return _Ranges(1, n_seg, n_seg, 1, 1)


def _block_d(kind: str, d: int) -> int:
    """Channels per program (one warp): 32 puts a channel's states in one thread; 16 or 8 split
    them over 2 or 4 lanes, for more warps when ``b * d`` is small."""
    return min(SCAN_CONFIG[f"{kind}_block_d"], max(next_pow2(d), 1))


def _fast_math() -> bool:
    """Whether softplus and sigmoid use approximate MUFU ops (not in the interpreter)."""
    return SCAN_CONFIG["fast_math"] and not _interpreted()


def _reduce_scatter(block_d: int) -> bool:
    """Whether the backward sums dB / dC over lanes reduce-scatter style (inline PTX, a channel per
    lane of a full warp) rather than with ``tl.sum``."""
    return SCAN_CONFIG["bwd_reduce_scatter"] and block_d == 32 and not _interpreted()


def _hseg_discard(d: int, block_d: int) -> bool:
    """Whether the backward drops each chunk's entering state from L2 once read (its scratch rows
    must fill whole 128-byte lines: 32 channels per program, ``d`` a multiple of 32)."""
    return SCAN_CONFIG["bwd_hseg_discard"] and block_d == 32 and d % 32 == 0 and not _interpreted()


PIPE_PARTS = ("fwd_local", "fwd", "bwd_local", "bwd_rebuild", "bwd_adjoint")


def _pipe(part: str, block_t: int) -> bool:
    """Whether the loop ``part`` (of ``PIPE_PARTS``), walking chunks of ``block_t`` steps, loads
    each chunk's deltas one chunk ahead (``SCAN_CONFIG["pipe_delta"]`` names the parts that do;
    :func:`_chunk_deltas` holds up to 4 steps)."""
    parts = SCAN_CONFIG["pipe_delta"]
    unknown = sorted(set(parts) - set(PIPE_PARTS))
    if unknown:
        raise ValueError(f"SCAN_CONFIG['pipe_delta'] must name loops among {PIPE_PARTS}, got {unknown}")
    return part in parts and block_t <= 4


def _maxnreg(key: str) -> dict:
    """``{"maxnreg": SCAN_CONFIG[key]}`` when set (a cap on ptxas's registers), else nothing."""
    value = SCAN_CONFIG.get(key)
    return {} if value is None or _interpreted() else {"maxnreg": value}


def _shared_args(u, reset_u8, delta_bias, delta_softplus, n: int, N: int):
    """What the forward's and the backward's kernels share: the reset tensor and its ``(b, t)``
    strides, ``delta_bias`` (``u`` stands in for a missing one, unread) and the constexpr flags."""
    flags = dict(HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus), HAS_RESET=reset_u8 is not None,
                 EVEN_N=n == N, PTX=not _interpreted(), FAST=_fast_math(), PF=SCAN_CONFIG["prefetch_chunks"])
    if reset_u8 is None:
        return u, (0, 0), u if delta_bias is None else delta_bias, flags
    return reset_u8, reset_u8.stride(), u if delta_bias is None else delta_bias, flags


def _put_state(dst: torch.Tensor, state: torch.Tensor | None, n: int) -> None:
    """Write ``state`` ``[b, d, n]`` (zeros if None) into ``dst`` ``[b, N, d]``, zeros past ``n``."""
    if state is None:
        dst.zero_()
        return
    if n < dst.shape[1]:
        dst[:, n:].zero_()
    dst[:, :n].copy_(state.transpose(1, 2))


def _chain_ranges(loc: torch.Tensor, x: torch.Tensor, n_x: int, r_first: int, reverse: bool) -> None:
    """Fill ``x`` ``[b, n_x + 1, N, d]`` at the range boundaries from the local ranges' ``loc[0]``
    (alone) and ``loc[1]`` (carry factors): see :func:`_scan_carry_kernel`."""
    b, nd = x.shape[0], x.shape[2] * x.shape[3]
    block = min(1024, next_pow2(nd))
    _CARRY[(triton.cdiv(nd, block), b)](loc[0], loc[1], x, nd, n_x, r_first, REVERSE=reverse,
                                                    BLOCK=block, num_warps=4)


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, reset, delta_softplus):
        b, d, L = u.shape
        n = A.shape[1]
        N = next_pow2(n)
        u, delta = _unit_stride(u), _unit_stride(delta)
        B, C = _state_major(B), _state_major(C)
        z = None if z is None else _unit_stride(z)
        # [N, d]: exp(delta A) = exp2(delta A log2(e)), zero rows past n
        A2 = torch.empty(N, d, device=u.device, dtype=torch.float32)
        torch.mul(A.t(), LOG2E, out=A2[:n])
        if n < N:
            A2[n:].zero_()
        reset_u8 = None if reset is None else reset.contiguous().view(torch.uint8)
        block_t = SCAN_CONFIG["bwd_chunk_steps"]
        if block_t not in BWD_CHUNK_STEPS:
            raise ValueError(f"SCAN_CONFIG['bwd_chunk_steps'] must be one of {BWD_CHUNK_STEPS}, got {block_t}")
        fwd_block_t = min(SCAN_CONFIG["fwd_block_t"], next_pow2(max(L, 1)))
        # checkpoints are taken at multiples of ck_steps, a multiple of block_t and of fwd_block_t
        ck_steps = block_t * triton.cdiv(SCAN_CONFIG["ck_steps"], block_t)
        if ck_steps % fwd_block_t:
            fwd_block_t = block_t
        ck_fwd = ck_steps // fwd_block_t
        n_chunks_fwd = triton.cdiv(L, fwd_block_t)
        n_seg = triton.cdiv(L, ck_steps)

        y = time_major_like(u)
        ranges, range_segs, local_segs, n_x, x_every = _time_ranges(n_seg, _ranges_for("fwd_ranges", u, delta))
        # [b, n_seg + 1, N, d]: the states entering every segment, h0 first
        h_ck = torch.empty(b, max(n_seg, 1) + 1, N, d, device=u.device, dtype=torch.float32)
        _put_state(h_ck[:, 0], h0, n)
        # x[:, k]: the state entering local range k (h0 first; the later rows are written by the
        # chain, rows past n are never read)
        x = torch.empty(b, n_x + 1, N, d, device=u.device, dtype=torch.float32)
        x[:, 0].copy_(h_ck[:, 0])
        z_ = u if z is None else z
        r_, r_strides, bias_, flags = _shared_args(u, reset_u8, delta_bias, delta_softplus, n, N)
        block_d = _block_d("fwd", d)
        groups = triton.cdiv(d, block_d)
        if L > 0 and ranges > 1:
            # every range but the last alone (in parallel), then chained: the state entering each
            # range, so that the ranges run in parallel below
            n_loc = (ranges - 1) * x_every
            loc = torch.empty(2, b, n_loc, N, d, device=u.device, dtype=torch.float32)
            _FWD_LOCAL[(groups, b, n_loc)](
                u, delta, A2, B, bias_, r_, loc[0], loc[1],
                L, d, n, local_segs * ck_steps,
                *u.stride(), *delta.stride(), *B.stride(), *r_strides,
                N=N, BLOCK_T=SCAN_CONFIG["local_block_t"], BD=block_d, EVEN_D=d % block_d == 0,
                PIPE=_pipe("fwd_local", SCAN_CONFIG["local_block_t"]), **flags, num_warps=1,
            )
            _chain_ranges(loc, x, n_x, n_loc, reverse=False)
        # [b, ranges, N, d]: the state each range ends in
        h_end = torch.empty(b, ranges, N, d, device=u.device, dtype=torch.float32)
        if L > 0:
            _FWD[(groups, b, ranges)](
                u, delta, A2, B, C, u if D is None else D, z_, bias_, r_,
                y, h_ck, x, h_end,
                L, d, n, n_chunks_fwd, range_segs, x_every, n_x,
                *u.stride(), *delta.stride(), *z_.stride(), *B.stride(), *C.stride(), *y.stride(), *r_strides,
                N=N, BLOCK_T=fwd_block_t, BD=block_d, EVEN_D=d % block_d == 0, PIPE=_pipe("fwd", fwd_block_t),
                CK=ck_fwd,
                HAS_D=D is not None, HAS_Z=z is not None,
                **flags, num_warps=1, **_maxnreg("fwd_maxnreg"),
            )
        else:
            h_end[:, -1].copy_(x[:, 0])
        # a [b, d, n] view of h_end (channels innermost)
        h_last = h_end[:, -1, :n].transpose(1, 2)

        ctx.save_for_backward(u, delta, A2, B, C, D, z, delta_bias, reset_u8, h_ck)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.block_t = block_t
        ctx.ck = ck_steps // block_t
        ctx.n = n
        ctx.A_dtype = A.dtype
        ctx.has_h0 = h0 is not None
        ctx.h0_dtype = None if h0 is None else h0.dtype
        return y, h_last

    @staticmethod
    def backward(ctx, dy, dh_last):
        u, delta, A2, B, C, D, z, delta_bias, reset_u8, h_ck = ctx.saved_tensors
        b, d, L = u.shape
        N, n = A2.shape[0], ctx.n
        if dy is None:
            dy = torch.zeros_like(u)
        dy = _unit_stride(dy)
        # [b, N, d]: dh0 out (written by the kernel's first range; rows past n are not read)
        dh = torch.empty(b, N, d, device=u.device, dtype=torch.float32)
        du = time_major_like(u)
        ddelta = time_major_like(delta)
        dz = None if z is None else time_major_like(z)
        block_d = _block_d("bwd", d)
        groups = triton.cdiv(d, block_d)
        block_t, ck = ctx.block_t, ctx.ck
        n_chunks = triton.cdiv(L, block_t)
        seg_steps = block_t * ck
        n_seg = triton.cdiv(n_chunks, ck)
        ranges, range_segs, local_segs, n_q, q_every = _time_ranges(n_seg, _ranges_for("bwd_ranges", u, delta))
        # q[:, k]: the gradient reaching the state entering local range k; q[:, -1] = dh_last (the
        # rows at range ends are written by the chain, the others and rows past n are not read)
        q = torch.empty(b, n_q + 1, N, d, device=u.device, dtype=torch.float32)
        _put_state(q[:, n_q], dh_last, n)
        # every (group, b, t) row is written once
        dBC = torch.empty(groups, b, L, 2 * N, device=u.device, dtype=torch.float32)
        # [ranges * b, N + 2, d]: each range's sums of the dA terms (N rows), dD and d(delta_bias)
        part = torch.empty(ranges * b, N + 2, d, device=u.device, dtype=torch.float32)
        h_seg = torch.empty(ranges, b, ck, N, d, device=u.device, dtype=torch.float32)
        z_ = u if z is None else z
        dz_ = du if dz is None else dz
        r_, r_strides, bias_, flags = _shared_args(u, reset_u8, delta_bias, ctx.delta_softplus, n, N)
        flags["HAS_Z"] = z is not None
        if L > 0 and ranges > 1:
            # the adjoint of every range but the first alone (in parallel), then chained: the
            # gradient entering each range from the right, so the ranges run in parallel below
            n_loc = n_q - q_every
            loc = torch.empty(2, b, n_loc, N, d, device=u.device, dtype=torch.float32)
            _BWD_LOCAL[(groups, b, n_loc)](
                delta, A2, C, z_, bias_, r_, dy, loc[0], loc[1],
                L, d, n, q_every, local_segs * seg_steps,
                *delta.stride(), *z_.stride(), *C.stride(), *dy.stride(), *r_strides,
                N=N, BLOCK_T=SCAN_CONFIG["local_block_t"], BD=block_d, EVEN_D=d % block_d == 0,
                PIPE=_pipe("bwd_local", SCAN_CONFIG["local_block_t"]), **flags, num_warps=1,
            )
            _chain_ranges(loc, q, n_q, q_every, reverse=True)
        if L > 0:
            _BWD[(groups, b, ranges)](
                u, delta, A2, B, C, u if D is None else D, z_, bias_,
                r_, h_ck, h_seg, dy, q,
                du, ddelta, dz_, dBC, part, dh,
                L, d, n, n_chunks, range_segs, q_every, n_q,
                *u.stride(), *delta.stride(), *z_.stride(), *B.stride(), *C.stride(), *dy.stride(),
                *du.stride(), *ddelta.stride(), *dz_.stride(), *r_strides,
                N=N, BLOCK_T=block_t, BD=block_d, EVEN_D=d % block_d == 0, CK=ck, HAS_D=D is not None, **flags,
                PIPE=_pipe("bwd_rebuild", block_t), PIPE_ADJ=_pipe("bwd_adjoint", block_t),
                RS_ASM=_reduce_scatter_asm(N) if _reduce_scatter(block_d) else None,
                PF_H=SCAN_CONFIG["bwd_prefetch_h"],
                HSEG_CG=SCAN_CONFIG["bwd_hseg_cg"], HSEG_KEEP=SCAN_CONFIG["bwd_hseg_keep"],
                HSEG_DISCARD=_hseg_discard(d, block_d), OUT_EF=SCAN_CONFIG["bwd_out_evict_first"],
                num_warps=1, **_maxnreg("bwd_maxnreg"),
            )
            dBC = dBC[0] if groups == 1 else dBC.sum(0)
            part = part.sum(0)
        else:
            dh.copy_(q[:, n_q])
            du.zero_()
            ddelta.zero_()
            if dz is not None:
                dz.zero_()
            dBC = torch.zeros(b, 0, 2 * N, device=u.device, dtype=torch.float32)
            part = torch.zeros(N + 2, d, device=u.device, dtype=torch.float32)
        grads_needed = ctx.needs_input_grad
        return (
            du,
            ddelta,
            part[:n].t().to(ctx.A_dtype),
            dBC[..., :n].transpose(1, 2).to(B.dtype),
            dBC[..., N:N + n].transpose(1, 2).to(C.dtype),
            None if D is None else part[N].to(D.dtype),
            dz,
            None if delta_bias is None else part[N + 1].to(delta_bias.dtype),
            dh[:, :n].transpose(1, 2).to(ctx.h0_dtype) if ctx.has_h0 and grads_needed[8] else None,
            None,
            None,
        )


def selective_scan_triton(
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
    reset_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused selective scan; same contract as :func:`mamba_rl.kernels.naive.selective_scan_ref`.

    Shapes: ``u, delta, z`` ``[b, d, L]`` (any strides; time or channels should be contiguous:
    the ``[b, L, d]``-transposed views a mixer makes need no copy, and are the fast layout);
    ``A`` ``[d, n]`` real; ``B, C`` ``[b, n, L]`` (copied to ``[b, L, n]`` memory unless they are
    already); ``D, delta_bias`` ``[d]``; ``h0`` ``[b, d, n]``; ``reset`` ``[b, L]`` bool;
    ``reset_state`` ``[R, d, n]``, the states entering the ``R = reset.sum()`` reset steps in
    ``reset.nonzero()`` order (None: zeros; added by linearity,
    :mod:`~mamba_rl.kernels.triton_scan_restart`). Any float dtype in, fp32 state and
    accumulation. Returns ``y`` ``[b, d, L]`` in ``u``'s dtype and ``h_last`` ``[b, d, n]`` fp32;
    differentiable in every float input, ``h0`` and ``reset_state`` included, with deterministic
    gradients. Saved for backward: the inputs and the fp32 states every ``ck_steps`` steps
    (``SCAN_CONFIG``).
    """
    y, h_last = _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, h0, reset, delta_softplus)
    if reset_state is None or reset_state.shape[0] == 0:
        return y, h_last
    # imported here: the restart kernels use this module's math helpers
    from mamba_rl.kernels.triton_scan_restart import add_restart_states

    return add_restart_states(y, h_last, delta, A, C, z, delta_bias, delta_softplus, reset, reset_state)
