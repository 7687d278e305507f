"""Fused Triton selective scan (Mamba-1) with initial state, resets and final state, forward and backward.

Twin of :func:`mamba_rl.kernels.naive.selective_scan_ref` (same signature, same semantics).

Algorithm. One program owns a batch row and ``BLOCK_D`` channels and walks the sequence in chunks
of ``BLOCK_T`` steps; inside a chunk it loops over the ``d_state`` states. For one state the chunk
is a ``[BLOCK_D, BLOCK_T]`` tile (time contiguous, so each thread holds a few consecutive steps)
and the linear recurrence ``h_t = a_t h_{t-1} + x_t`` (``a_t = exp(delta_t A)``, zero where
``reset[t]``) is an associative scan along time. A state's value at each chunk boundary is written
to a checkpoint buffer ``[b, n_chunks + 1, n, d]`` fp32 and read back for the next chunk: that is
both the carry and the only tensor saved for the backward (``d_state / BLOCK_T`` of ``b * d * L``);
the per-step states ``[b, d, n, L]`` are never stored.

The backward walks the chunks in reverse. For each state it rebuilds the chunk's states from the
checkpoint, then solves the adjoint recurrence ``g_t = dy'_t C_t + a_{t+1} g_{t+1}`` with a reverse
scan; the gradient entering the chunk's end (``dh_last`` at the sequence end) is carried like the
state, in the buffer that ends as ``dh0``. ``a_t h_{t-1}``, needed for the gradients of ``delta``
and ``A``, is ``h_t - x_t``, so no shifted state is needed. The gradients of ``B`` and ``C`` are
sums over channels: each program atomically adds its ``BLOCK_D`` channels' partial sums to an fp32
buffer (``d / BLOCK_D`` adds per element, in no fixed order: not bitwise deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["selective_scan_triton", "SCAN_CONFIG"]

LOG2E = 1.4426950408889634


@triton.jit
def _linear_combine(a_l, x_l, a_r, x_r):
    # composition of h -> a_l h + x_l then h -> a_r h + x_r
    return a_l * a_r, x_l * a_r + x_r


@triton.jit
def _softplus(x):
    # max(x, 0) + log1p(exp(-|x|)), with log1p(y) = log(w) * y / (w - 1), w = 1 + y (exact for
    # small y, where log(1 + y) alone would round to zero)
    y = tl.exp(-tl.abs(x))
    w = 1.0 + y
    log1p_y = tl.where(w == 1.0, y, tl.log(w) * y / (w - 1.0))
    return tl.maximum(x, 0.0) + log1p_y


@triton.jit
def _chunk_inputs(p_delta, p_u, p_reset, o_tc, m_d, L, s_dt_t, s_u_t, b_bias,
                  HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_RESET: tl.constexpr):
    """A chunk's step sizes, inputs and reset mask: ``dt, dt * u`` ``[BD, BT]`` (zero past the end,
    so that ``exp(dt A) = 1`` there), ``keep`` ``[BT]`` (False at a reset)."""
    m_t = o_tc < L
    m_dt = m_d[:, None] & m_t[None, :]
    b_dt = tl.load(p_delta + o_tc[None, :] * s_dt_t, mask=m_dt, other=0.0).to(tl.float32)
    if HAS_BIAS:
        b_dt += b_bias[:, None]
    if SOFTPLUS:
        b_dt = _softplus(b_dt)
    b_dt = tl.where(m_dt, b_dt, 0.0)
    b_u = tl.load(p_u + o_tc[None, :] * s_u_t, mask=m_dt, other=0.0).to(tl.float32)
    if HAS_RESET:
        b_keep = tl.load(p_reset + o_tc, mask=m_t, other=0) == 0
    else:
        b_keep = o_tc >= 0
    return b_dt, b_u, b_dt * b_u, b_keep


@triton.jit
def _state_over_chunk(b_dt, b_dtu, b_keep, b_A2, b_B, b_h0):
    """One state's values over a chunk, ``[BD, BT]``, and the decays ``a`` used."""
    b_a = tl.where(b_keep[None, :], tl.exp2(b_dt * b_A2[:, None]), 0.0)
    b_x = b_dtu * b_B[None, :]
    b_acum, b_hloc = tl.associative_scan((b_a, b_x), axis=1, combine_fn=_linear_combine)
    return b_hloc + b_acum * b_h0[:, None], b_a, b_x


@triton.jit
def _last_column(b_x, o_t, BLOCK_T: tl.constexpr):
    return tl.sum(tl.where((o_t == BLOCK_T - 1)[None, :], b_x, 0.0), axis=1)


@triton.jit
def _scan_fwd_kernel(
    p_u, p_delta, p_A2, p_B, p_C, p_D, p_z, p_bias, p_reset,
    p_y, p_hck, p_hcur,
    L, d, n, n_chunks,
    s_u_b, s_u_d, s_u_t,
    s_dt_b, s_dt_d, s_dt_t,
    s_z_b, s_z_d, s_z_t,
    s_B_b, s_B_n, s_B_t,
    s_C_b, s_C_n, s_C_t,
    s_y_b, s_y_d, s_y_t,
    s_r_b,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_RESET: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, CK: tl.constexpr,
):
    i_d = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    o_t = tl.arange(0, BLOCK_T)
    m_d = o_d < d
    b_bias = tl.load(p_bias + o_d, mask=m_d & HAS_BIAS, other=0.0).to(tl.float32)
    if HAS_D:
        b_Dv = tl.load(p_D + o_d, mask=m_d, other=0.0).to(tl.float32)
    p_u += i_b * s_u_b + o_d[:, None] * s_u_d
    p_delta += i_b * s_dt_b + o_d[:, None] * s_dt_d
    p_z += i_b * s_z_b + o_d[:, None] * s_z_d
    p_y += i_b * s_y_b + o_d[:, None] * s_y_d
    p_B += i_b * s_B_b
    p_C += i_b * s_C_b
    p_reset += i_b * s_r_b
    # [b, n, d]: the states entering the current chunk (h0 first, h_last at the end)
    p_hcur += i_b * n * d + o_d
    # [b, n_segments + 1, n, d]: the states entering every CK-th chunk, kept for the backward
    n_seg = tl.cdiv(n_chunks, CK)
    p_hck += i_b * (n_seg + 1) * n * d + o_d

    for i_c in range(n_chunks):
        o_tc = i_c * BLOCK_T + o_t
        b_dt, b_u, b_dtu, b_keep = _chunk_inputs(p_delta, p_u, p_reset, o_tc, m_d, L, s_dt_t, s_u_t, b_bias,
                                                 HAS_BIAS, SOFTPLUS, HAS_RESET)
        m_dt = m_d[:, None] & (o_tc < L)[None, :]
        if HAS_D:
            b_y = b_Dv[:, None] * b_u
        else:
            b_y = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
        is_ck = (i_c + 1) % CK == 0
        for i_n in range(n):
            b_A2 = tl.load(p_A2 + o_d * n + i_n, mask=m_d, other=0.0)
            b_B = tl.load(p_B + i_n * s_B_n + o_tc * s_B_t, mask=o_tc < L, other=0.0).to(tl.float32)
            b_C = tl.load(p_C + i_n * s_C_n + o_tc * s_C_t, mask=o_tc < L, other=0.0).to(tl.float32)
            b_h0 = tl.load(p_hcur + i_n * d, mask=m_d, other=0.0)
            b_h, b_a, b_x = _state_over_chunk(b_dt, b_dtu, b_keep, b_A2, b_B, b_h0)
            b_y += b_h * b_C[None, :]
            b_hend = _last_column(b_h, o_t, BLOCK_T)
            tl.store(p_hcur + i_n * d, b_hend, mask=m_d)
            tl.store(p_hck + ((i_c + 1) // CK * n + i_n) * d, b_hend, mask=m_d & is_ck)

        if HAS_Z:
            b_z = tl.load(p_z + o_tc[None, :] * s_z_t, mask=m_dt, other=0.0).to(tl.float32)
            b_y *= b_z * tl.sigmoid(b_z)
        tl.store(p_y + o_tc[None, :] * s_y_t, b_y.to(p_y.dtype.element_ty), mask=m_dt)
        # the next chunk reads the end states, which other threads may have stored
        tl.debug_barrier()


@triton.jit
def _scan_bwd_kernel(
    p_u, p_delta, p_A2, p_B, p_C, p_D, p_z, p_bias, p_reset, p_hck, p_hseg, p_dy,
    p_du, p_ddelta, p_dz, p_dB, p_dC, p_dA, p_dD, p_dbias, p_dh,
    L, d, n, n_chunks,
    s_u_b, s_u_d, s_u_t,
    s_dt_b, s_dt_d, s_dt_t,
    s_z_b, s_z_d, s_z_t,
    s_B_b, s_B_n, s_B_t,
    s_C_b, s_C_n, s_C_t,
    s_dy_b, s_dy_d, s_dy_t,
    s_du_b, s_du_d, s_du_t,
    s_ddt_b, s_ddt_d, s_ddt_t,
    s_dz_b, s_dz_d, s_dz_t,
    s_r_b,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_RESET: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, CK: tl.constexpr,
    ATOMIC_TILE: tl.constexpr,
):
    i_d = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    o_t = tl.arange(0, BLOCK_T)
    m_d = o_d < d
    b_bias = tl.load(p_bias + o_d, mask=m_d & HAS_BIAS, other=0.0).to(tl.float32)
    if HAS_D:
        b_Dv = tl.load(p_D + o_d, mask=m_d, other=0.0).to(tl.float32)
    p_u += i_b * s_u_b + o_d[:, None] * s_u_d
    p_delta += i_b * s_dt_b + o_d[:, None] * s_dt_d
    p_z += i_b * s_z_b + o_d[:, None] * s_z_d
    p_dy += i_b * s_dy_b + o_d[:, None] * s_dy_d
    p_du += i_b * s_du_b + o_d[:, None] * s_du_d
    p_ddelta += i_b * s_ddt_b + o_d[:, None] * s_ddt_d
    p_dz += i_b * s_dz_b + o_d[:, None] * s_dz_d
    p_B += i_b * s_B_b
    p_C += i_b * s_C_b
    p_dB += i_b * n * L
    p_dC += i_b * n * L
    p_reset += i_b * s_r_b
    n_seg = tl.cdiv(n_chunks, CK)
    p_hck += i_b * (n_seg + 1) * n * d + o_d
    # [b, CK, n, d]: the states entering each chunk of the current segment, recomputed
    p_hseg += i_b * CK * n * d + o_d
    # [b, n, d]: the gradient entering the current chunk's end (dh_last first, dh0 at the end)
    p_dh += i_b * n * d + o_d
    p_dA += i_b * n * d + o_d
    b_dD = tl.zeros([BLOCK_D], dtype=tl.float32)
    b_dbias = tl.zeros([BLOCK_D], dtype=tl.float32)

    for i_si in range(n_seg):
        i_s = n_seg - 1 - i_si
        c_lo = i_s * CK
        c_hi = tl.minimum(c_lo + CK, n_chunks)
        # 1. rebuild the states entering each of the segment's chunks from its checkpoint
        for i_n in range(n):
            tl.store(p_hseg + i_n * d, tl.load(p_hck + (i_s * n + i_n) * d, mask=m_d, other=0.0), mask=m_d)
        tl.debug_barrier()
        for i_c in range(c_lo, c_hi - 1):
            o_tc = i_c * BLOCK_T + o_t
            b_dt, b_u, b_dtu, b_keep = _chunk_inputs(p_delta, p_u, p_reset, o_tc, m_d, L, s_dt_t, s_u_t,
                                                     b_bias, HAS_BIAS, SOFTPLUS, HAS_RESET)
            for i_n in range(n):
                b_A2 = tl.load(p_A2 + o_d * n + i_n, mask=m_d, other=0.0)
                b_B = tl.load(p_B + i_n * s_B_n + o_tc * s_B_t, mask=o_tc < L, other=0.0).to(tl.float32)
                b_h0 = tl.load(p_hseg + ((i_c - c_lo) * n + i_n) * d, mask=m_d, other=0.0)
                b_h, b_a, b_x = _state_over_chunk(b_dt, b_dtu, b_keep, b_A2, b_B, b_h0)
                tl.store(p_hseg + ((i_c + 1 - c_lo) * n + i_n) * d, _last_column(b_h, o_t, BLOCK_T), mask=m_d)
            tl.debug_barrier()

        # 2. walk the segment's chunks backwards
        for i_ci in range(c_lo, c_hi):
            i_c = c_hi - 1 - (i_ci - c_lo)
            o_tc = i_c * BLOCK_T + o_t
            m_t = o_tc < L
            m_dt = m_d[:, None] & m_t[None, :]
            b_dt, b_u, b_dtu, b_keep = _chunk_inputs(p_delta, p_u, p_reset, o_tc, m_d, L, s_dt_t, s_u_t,
                                                     b_bias, HAS_BIAS, SOFTPLUS, HAS_RESET)
            # step t + 1 inside this chunk only (the chunk's last step takes the carried gradient)
            o_t1 = o_tc + 1
            m_t1 = (o_t < BLOCK_T - 1) & (o_t1 < L)
            b_dt1, b_u1, b_dtu1, b_keep1 = _chunk_inputs(p_delta, p_u, p_reset, tl.where(m_t1, o_t1, L), m_d, L,
                                                         s_dt_t, s_u_t, b_bias, HAS_BIAS, SOFTPLUS, HAS_RESET)
            b_dy = tl.load(p_dy + o_tc[None, :] * s_dy_t, mask=m_dt, other=0.0).to(tl.float32)
            if HAS_Z:
                b_z = tl.load(p_z + o_tc[None, :] * s_z_t, mask=m_dt, other=0.0).to(tl.float32)
                b_sig = tl.sigmoid(b_z)
                b_dyp = b_dy * b_z * b_sig
                if HAS_D:
                    b_ypre = b_Dv[:, None] * b_u
                else:
                    b_ypre = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
            else:
                b_dyp = b_dy
            b_s = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
            b_ddt = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)

            for i_n in range(n):
                b_A2 = tl.load(p_A2 + o_d * n + i_n, mask=m_d, other=0.0)
                b_B = tl.load(p_B + i_n * s_B_n + o_tc * s_B_t, mask=m_t, other=0.0).to(tl.float32)
                b_C = tl.load(p_C + i_n * s_C_n + o_tc * s_C_t, mask=m_t, other=0.0).to(tl.float32)
                b_h0 = tl.load(p_hseg + ((i_c - c_lo) * n + i_n) * d, mask=m_d, other=0.0)
                b_gc = tl.load(p_dh + i_n * d, mask=m_d, other=0.0)
                b_h, b_a, b_x = _state_over_chunk(b_dt, b_dtu, b_keep, b_A2, b_B, b_h0)
                if HAS_Z:
                    b_ypre += b_h * b_C[None, :]
                # adjoint: g_t = dy'_t C_t + a_{t+1} g_{t+1}, a reverse scan
                b_a1 = tl.where(b_keep1[None, :], tl.exp2(b_dt1 * b_A2[:, None]), 0.0)
                b_e = b_dyp * b_C[None, :]
                b_gcum, b_gloc = tl.associative_scan((b_a1, b_e), axis=1, combine_fn=_linear_combine,
                                                     reverse=True)
                b_g = b_gloc + b_gcum * b_gc[:, None]
                # gradient entering the previous chunk's end: a_{t0} g_{t0}
                b_gc = tl.sum(tl.where((o_t == 0)[None, :], b_a * b_g, 0.0), axis=1)
                tl.store(p_dh + i_n * d, b_gc, mask=m_d)
                b_s += b_g * b_B[None, :]
                # a_t h_{t-1} = h_t - x_t: the gradients of exp(delta_t A)
                b_w = b_g * (b_h - b_x)
                b_ddt += b_w * b_A2[:, None]
                tl.store(p_dA + i_n * d, tl.load(p_dA + i_n * d, mask=m_d, other=0.0)
                         + tl.sum(b_w * b_dt, axis=1), mask=m_d)
                if ATOMIC_TILE:
                    # every channel adds its own term: no cross-lane reduction, d adds per element
                    tl.atomic_add(p_dB + i_n * L + o_tc[None, :] + 0 * o_d[:, None], b_g * b_dtu, mask=m_dt)
                    tl.atomic_add(p_dC + i_n * L + o_tc[None, :] + 0 * o_d[:, None], b_h * b_dyp, mask=m_dt)
                else:
                    # [BT], summed over this program's channels
                    tl.atomic_add(p_dB + i_n * L + o_tc, tl.sum(b_g * b_dtu, axis=0), mask=m_t)
                    tl.atomic_add(p_dC + i_n * L + o_tc, tl.sum(b_h * b_dyp, axis=0), mask=m_t)

            b_du = b_dt * b_s
            if HAS_D:
                b_du += b_dyp * b_Dv[:, None]
                b_dD += tl.sum(b_dyp * b_u, axis=1)
            # b_ddt summed w * A * log2(e)
            b_ddt = b_ddt * 0.6931471805599453 + b_u * b_s
            if SOFTPLUS:
                b_dtr = tl.load(p_delta + o_tc[None, :] * s_dt_t, mask=m_dt, other=0.0).to(tl.float32)
                b_ddt = b_ddt * tl.sigmoid(b_dtr + b_bias[:, None])
            b_ddt = tl.where(m_dt, b_ddt, 0.0)
            if HAS_BIAS:
                b_dbias += tl.sum(b_ddt, axis=1)
            tl.store(p_du + o_tc[None, :] * s_du_t, b_du.to(p_du.dtype.element_ty), mask=m_dt)
            tl.store(p_ddelta + o_tc[None, :] * s_ddt_t, b_ddt.to(p_ddelta.dtype.element_ty), mask=m_dt)
            if HAS_Z:
                b_dz = b_dy * b_ypre * b_sig * (1.0 + b_z * (1.0 - b_sig))
                tl.store(p_dz + o_tc[None, :] * s_dz_t, b_dz.to(p_dz.dtype.element_ty), mask=m_dt)
            # the carried gradients and partial sums are re-read by other threads of this program
            tl.debug_barrier()

    if HAS_D:
        tl.store(p_dD + i_b * d + o_d, b_dD, mask=m_d)
    if HAS_BIAS:
        tl.store(p_dbias + i_b * d + o_d, b_dbias, mask=m_d)


# Tile sizes, tuned by hand on an H100 (benchmarks/bench_scan.py --sweep; no autotuning: the
# kernels accumulate into buffers). With block_t = 4 a thread owns one channel's 4 steps (the scan
# is in-thread, no shuffles); longer chunks spread time over lanes. A checkpoint is kept every
# ck_chunks chunks: d_state / (block_t * ck_chunks) of b * d * L floats; the backward recomputes the
# segment's chunk states into a [b, ck_chunks, n, d] scratch. bwd_atomic_tile: every channel adds
# its dB, dC terms atomically (d adds per element) instead of reducing over channels first.
SCAN_CONFIG = {
    "block_t": 32,
    "ck_chunks": 4,
    "fwd_block_d": 32,
    "fwd_warps": 4,
    "fwd_maxnreg": None,
    "bwd_block_d": 32,
    "bwd_warps": 4,
    "bwd_maxnreg": None,
    "bwd_atomic_tile": False,
}


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _launch_options(kind: str) -> dict:
    options = {"num_warps": SCAN_CONFIG[f"{kind}_warps"]}
    if SCAN_CONFIG[f"{kind}_maxnreg"] is not None:
        options["maxnreg"] = SCAN_CONFIG[f"{kind}_maxnreg"]
    return options


def _block_t(L: int) -> int:
    # short sequences get short chunks (the T = 1 rollout-with-grad path among them)
    return min(SCAN_CONFIG["block_t"], max(4, _next_pow2(L)))


def _block_d(kind: str, d: int) -> int:
    return min(SCAN_CONFIG[f"{kind}_block_d"], _next_pow2(d))


def _time_major_like(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Empty ``[b, c, L]`` with ``t``'s memory order: channels innermost if ``t``'s are."""
    dtype = t.dtype if dtype is None else dtype
    b, c, L = t.shape
    if t.stride(1) == 1 and c > 1:
        return torch.empty(b, L, c, device=t.device, dtype=dtype).transpose(1, 2)
    return torch.empty(b, c, L, device=t.device, dtype=dtype)


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when one of its last two dims is contiguous (coalesced tiles), else a copy."""
    if t.stride(-1) == 1 or t.stride(-2) == 1:
        return t
    return t.contiguous()


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, reset, delta_softplus):
        b, d, L = u.shape
        n = A.shape[1]
        u, delta, B, C = (_unit_stride(t) for t in (u, delta, B, C))
        z = None if z is None else _unit_stride(z)
        # exp(delta A) = exp2(delta A log2(e))
        A2 = (A.to(torch.float32) * LOG2E).contiguous()
        reset_u8 = None if reset is None else reset.contiguous().view(torch.uint8)
        block_t = _block_t(L)
        block_d = _block_d("fwd", d)
        ck = SCAN_CONFIG["ck_chunks"]
        n_chunks = triton.cdiv(L, block_t)
        n_seg = triton.cdiv(n_chunks, ck)

        y = _time_major_like(u)
        # [b, n, d]: the running state, h0 in, h_last out
        h_cur = torch.empty(b, n, d, device=u.device, dtype=torch.float32)
        if h0 is None:
            h_cur.zero_()
        else:
            h_cur.copy_(h0.transpose(1, 2))
        # [b, n_seg + 1, n, d]: the states entering every ck-th chunk, h0 first
        h_ck = torch.empty(b, n_seg + 1, n, d, device=u.device, dtype=torch.float32)
        h_ck[:, 0].copy_(h_cur)
        z_ = u if z is None else z
        r_ = u if reset_u8 is None else reset_u8
        if L > 0:
            _scan_fwd_kernel[(triton.cdiv(d, block_d), b)](
                u, delta, A2, B, C, u if D is None else D, z_, u if delta_bias is None else delta_bias, r_,
                y, h_ck, h_cur,
                L, d, n, n_chunks,
                *u.stride(), *delta.stride(), *z_.stride(), *B.stride(), *C.stride(), *y.stride(),
                0 if reset_u8 is None else reset_u8.stride(0),
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=bool(delta_softplus), HAS_RESET=reset is not None,
                BLOCK_D=block_d, BLOCK_T=block_t, CK=ck, **_launch_options("fwd"),
            )
        h_last = h_cur.transpose(1, 2).contiguous()

        ctx.save_for_backward(u, delta, A2, B, C, D, z, delta_bias, reset_u8, h_ck)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.block_t = block_t
        ctx.ck = ck
        ctx.A_dtype = A.dtype
        ctx.has_h0 = h0 is not None
        ctx.h0_dtype = None if h0 is None else h0.dtype
        return y, h_last

    @staticmethod
    def backward(ctx, dy, dh_last):
        u, delta, A2, B, C, D, z, delta_bias, reset_u8, h_ck = ctx.saved_tensors
        b, d, L = u.shape
        n = A2.shape[1]
        if dy is None:
            dy = torch.zeros_like(u)
        dy = _unit_stride(dy)
        # [b, n, d]: the carried gradient of the state, dh_last in, dh0 out
        dh = torch.empty(b, n, d, device=u.device, dtype=torch.float32)
        if dh_last is None:
            dh.zero_()
        else:
            dh.copy_(dh_last.transpose(1, 2))
        du = _time_major_like(u)
        ddelta = _time_major_like(delta)
        dz = None if z is None else _time_major_like(z)
        dB = torch.zeros(b, n, L, device=u.device, dtype=torch.float32)
        dC = torch.zeros(b, n, L, device=u.device, dtype=torch.float32)
        dA = torch.zeros(b, n, d, device=u.device, dtype=torch.float32)
        dD = None if D is None else torch.zeros(b, d, device=u.device, dtype=torch.float32)
        dbias = None if delta_bias is None else torch.zeros(b, d, device=u.device, dtype=torch.float32)
        block_t, ck = ctx.block_t, ctx.ck
        block_d = _block_d("bwd", d)
        n_chunks = triton.cdiv(L, block_t)
        h_seg = torch.empty(b, ck, n, d, device=u.device, dtype=torch.float32)
        z_ = u if z is None else z
        dz_ = du if dz is None else dz
        r_ = u if reset_u8 is None else reset_u8
        if L > 0:
            _scan_bwd_kernel[(triton.cdiv(d, block_d), b)](
                u, delta, A2, B, C, u if D is None else D, z_, u if delta_bias is None else delta_bias,
                r_, h_ck, h_seg, dy,
                du, ddelta, dz_, dB, dC, dA, dA if dD is None else dD, dA if dbias is None else dbias, dh,
                L, d, n, n_chunks,
                *u.stride(), *delta.stride(), *z_.stride(), *B.stride(), *C.stride(), *dy.stride(),
                *du.stride(), *ddelta.stride(), *dz_.stride(),
                0 if reset_u8 is None else reset_u8.stride(0),
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=ctx.delta_softplus, HAS_RESET=reset_u8 is not None,
                BLOCK_D=block_d, BLOCK_T=block_t, CK=ck, ATOMIC_TILE=SCAN_CONFIG["bwd_atomic_tile"],
                **_launch_options("bwd"),
            )
        else:
            du.zero_()
            ddelta.zero_()
            if dz is not None:
                dz.zero_()
        grads_needed = ctx.needs_input_grad
        return (
            du,
            ddelta,
            dA.sum(0).t().to(ctx.A_dtype),
            dB.to(B.dtype),
            dC.to(C.dtype),
            None if dD is None else dD.sum(0).to(D.dtype),
            dz,
            None if dbias is None else dbias.sum(0).to(delta_bias.dtype),
            dh.transpose(1, 2).to(ctx.h0_dtype) if ctx.has_h0 and grads_needed[8] else None,
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused selective scan; same contract as :func:`mamba_rl.kernels.naive.selective_scan_ref`.

    Shapes: ``u, delta, z`` ``[b, d, L]`` (any strides; time or channels should be contiguous:
    the ``[b, L, d]``-transposed views a mixer makes need no copy); ``A`` ``[d, n]`` real;
    ``B, C`` ``[b, n, L]``; ``D, delta_bias`` ``[d]``; ``h0`` ``[b, d, n]``; ``reset`` ``[b, L]``
    bool. Any float dtype in, fp32 state and accumulation. Returns ``y`` ``[b, d, L]`` in ``u``'s
    dtype and ``h_last`` ``[b, d, n]`` fp32; differentiable in every float input, ``h0`` included.
    Saved for backward: the inputs and the fp32 states at every ``BLOCK_T``-th step.
    """
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, h0, reset, delta_softplus)
