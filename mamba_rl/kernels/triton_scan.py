"""Fused Triton selective scan (Mamba-1) with initial state, resets and final state, forward and backward.

Twin of :func:`mamba_rl.kernels.naive.selective_scan_ref` (same signature, same semantics).

Algorithm. One program owns a batch row and a block of channels; it walks the sequence in chunks
of ``BLOCK_T`` steps. Inside a chunk the linear recurrence ``h_t = a_t h_{t-1} + x_t`` (``a_t`` is
``exp(delta_t A)``, zero where ``reset[t]``) is solved by an associative scan over time on a
``[BLOCK_D, BLOCK_N, BLOCK_T]`` register tile; the state entering the chunk is carried in registers.
The forward writes that entering state for every chunk (``[b, n_chunks, d, n]`` fp32: the only
tensor saved besides the inputs, ``d_state / BLOCK_T`` of ``b * d * L``), never the per-step states.

The backward walks the chunks in reverse. It rebuilds the chunk's states from its checkpoint, then
solves the adjoint recurrence ``g_t = dy'_t C_t + a_{t+1} g_{t+1}`` with a reverse scan; the
gradient entering from the future (``a_{t+1} g_{t+1}`` at the chunk's end, ``dh_last`` at the
sequence end) is carried like the state. ``a_t h_{t-1}``, needed for the gradients of ``delta`` and
``A``, is ``h_t - x_t``, so no shifted state is needed. The gradients of ``B`` and ``C`` are sums
over channels: a program adds the partial sums of ``D_SPLIT`` channel blocks in registers and then
atomically adds them to an fp32 buffer, so a batch row sees ``d / (BLOCK_D * D_SPLIT)`` atomic adds
per element (fp32 atomics: the order of those few additions is not deterministic).
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
def _scan_fwd_kernel(
    p_u, p_delta, p_A, p_B, p_C, p_D, p_z, p_bias, p_h0, p_reset,
    p_y, p_hlast, p_hck,
    L, d, n,
    s_u_b, s_u_d, s_u_t,
    s_dt_b, s_dt_d, s_dt_t,
    s_z_b, s_z_d, s_z_t,
    s_B_b, s_B_n, s_B_t,
    s_C_b, s_C_n, s_C_t,
    s_y_b, s_y_d, s_y_t,
    s_r_b,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_RESET: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    i_d = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    o_n = tl.arange(0, BLOCK_N)
    o_t = tl.arange(0, BLOCK_T)
    m_d = o_d < d
    m_n = o_n < n
    m_dn = m_d[:, None] & m_n[None, :]
    o_dn = o_d[:, None] * n + o_n[None, :]

    # [BD, BN], scaled so that exp(delta * A) = exp2(delta * b_A)
    b_A = tl.load(p_A + o_dn, mask=m_dn, other=0.0).to(tl.float32) * 1.4426950408889634
    if HAS_D:
        b_Dv = tl.load(p_D + o_d, mask=m_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        b_bias = tl.load(p_bias + o_d, mask=m_d, other=0.0).to(tl.float32)
    # [BD, BN] fp32 state entering the current chunk
    if HAS_H0:
        b_h = tl.load(p_h0 + i_b * d * n + o_dn, mask=m_dn, other=0.0).to(tl.float32)
    else:
        b_h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)

    p_u += i_b * s_u_b + o_d[:, None] * s_u_d
    p_delta += i_b * s_dt_b + o_d[:, None] * s_dt_d
    p_z += i_b * s_z_b + o_d[:, None] * s_z_d
    p_y += i_b * s_y_b + o_d[:, None] * s_y_d
    p_B += i_b * s_B_b + o_n[:, None] * s_B_n
    p_C += i_b * s_C_b + o_n[:, None] * s_C_n
    p_reset += i_b * s_r_b

    n_chunks = tl.cdiv(L, BLOCK_T)
    for i_c in range(n_chunks):
        o_tc = i_c * BLOCK_T + o_t
        m_t = o_tc < L
        m_dt = m_d[:, None] & m_t[None, :]
        m_nt = m_n[:, None] & m_t[None, :]
        tl.store(p_hck + (i_b * n_chunks + i_c) * d * n + o_dn, b_h, mask=m_dn)

        # [BD, BT]
        b_dt = tl.load(p_delta + o_tc[None, :] * s_dt_t, mask=m_dt, other=0.0).to(tl.float32)
        if HAS_BIAS:
            b_dt += b_bias[:, None]
        if SOFTPLUS:
            b_dt = _softplus(b_dt)
        b_dt = tl.where(m_dt, b_dt, 0.0)
        b_u = tl.load(p_u + o_tc[None, :] * s_u_t, mask=m_dt, other=0.0).to(tl.float32)
        # [BN, BT]
        b_B = tl.load(p_B + o_tc[None, :] * s_B_t, mask=m_nt, other=0.0).to(tl.float32)
        b_C = tl.load(p_C + o_tc[None, :] * s_C_t, mask=m_nt, other=0.0).to(tl.float32)

        # [BD, BN, BT]; past the end a = 1, x = 0, so the last column holds the chunk's final state
        b_a = tl.exp2(b_dt[:, None, :] * b_A[:, :, None])
        if HAS_RESET:
            b_r = tl.load(p_reset + o_tc, mask=m_t, other=0) != 0
            b_a = tl.where(b_r[None, None, :], 0.0, b_a)
        b_a = tl.where(m_t[None, None, :], b_a, 1.0)
        b_x = (b_dt * b_u)[:, None, :] * b_B[None, :, :]
        b_acum, b_hloc = tl.associative_scan((b_a, b_x), axis=2, combine_fn=_linear_combine)
        b_hs = b_hloc + b_acum * b_h[:, :, None]

        # [BD, BT]
        b_y = tl.sum(b_hs * b_C[None, :, :], axis=1)
        if HAS_D:
            b_y += b_Dv[:, None] * b_u
        if HAS_Z:
            b_z = tl.load(p_z + o_tc[None, :] * s_z_t, mask=m_dt, other=0.0).to(tl.float32)
            b_y *= b_z * tl.sigmoid(b_z)
        tl.store(p_y + o_tc[None, :] * s_y_t, b_y.to(p_y.dtype.element_ty), mask=m_dt)
        b_h = tl.sum(tl.where((o_t == BLOCK_T - 1)[None, None, :], b_hs, 0.0), axis=2)

    tl.store(p_hlast + i_b * d * n + o_dn, b_h, mask=m_dn)


@triton.jit
def _scan_bwd_kernel(
    p_u, p_delta, p_A, p_B, p_C, p_D, p_z, p_bias, p_reset, p_hck, p_dy,
    p_du, p_ddelta, p_dz, p_dB, p_dC, p_dA, p_dD, p_dbias, p_dh,
    L, d, n,
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
    HAS_RESET: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, D_SPLIT: tl.constexpr,
):
    i_g = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_n = tl.arange(0, BLOCK_N)
    o_t = tl.arange(0, BLOCK_T)
    m_n = o_n < n

    p_B += i_b * s_B_b + o_n[:, None] * s_B_n
    p_C += i_b * s_C_b + o_n[:, None] * s_C_n
    p_dB += i_b * n * L + o_n[:, None] * L
    p_dC += i_b * n * L + o_n[:, None] * L
    p_reset += i_b * s_r_b

    n_chunks = tl.cdiv(L, BLOCK_T)
    for i_ci in range(n_chunks):
        i_c = n_chunks - 1 - i_ci
        o_tc = i_c * BLOCK_T + o_t
        m_t = o_tc < L
        # a_{t+1} is used inside the chunk only; the chunk's last step takes the carried gradient
        o_t1 = o_tc + 1
        m_t1 = (o_t < BLOCK_T - 1) & (o_t1 < L)
        m_nt = m_n[:, None] & m_t[None, :]
        if HAS_RESET:
            b_r = tl.load(p_reset + o_tc, mask=m_t, other=0) != 0
            b_r1 = tl.load(p_reset + o_t1, mask=m_t1, other=0) != 0
        # [BN, BT]
        b_B = tl.load(p_B + o_tc[None, :] * s_B_t, mask=m_nt, other=0.0).to(tl.float32)
        b_C = tl.load(p_C + o_tc[None, :] * s_C_t, mask=m_nt, other=0.0).to(tl.float32)
        b_dB = tl.zeros([BLOCK_N, BLOCK_T], dtype=tl.float32)
        b_dC = tl.zeros([BLOCK_N, BLOCK_T], dtype=tl.float32)

        for i_s in range(D_SPLIT):
            o_d = (i_g * D_SPLIT + i_s) * BLOCK_D + tl.arange(0, BLOCK_D)
            m_d = o_d < d
            m_dn = m_d[:, None] & m_n[None, :]
            m_dt = m_d[:, None] & m_t[None, :]
            m_dt1 = m_d[:, None] & m_t1[None, :]
            o_dn = o_d[:, None] * n + o_n[None, :]
            b_Araw = tl.load(p_A + o_dn, mask=m_dn, other=0.0).to(tl.float32)
            b_A = b_Araw * 1.4426950408889634
            # state entering the chunk, and gradient entering its end from the future: [BD, BN]
            b_h0 = tl.load(p_hck + (i_b * n_chunks + i_c) * d * n + o_dn, mask=m_dn, other=0.0)
            b_gc = tl.load(p_dh + i_b * d * n + o_dn, mask=m_dn, other=0.0)

            # [BD, BT]
            o_dt = i_b * s_dt_b + o_d[:, None] * s_dt_d
            b_dtr = tl.load(p_delta + o_dt + o_tc[None, :] * s_dt_t, mask=m_dt, other=0.0).to(tl.float32)
            b_dtr1 = tl.load(p_delta + o_dt + o_t1[None, :] * s_dt_t, mask=m_dt1, other=0.0).to(tl.float32)
            if HAS_BIAS:
                b_bias = tl.load(p_bias + o_d, mask=m_d, other=0.0).to(tl.float32)
                b_dtr += b_bias[:, None]
                b_dtr1 += b_bias[:, None]
            if SOFTPLUS:
                b_dt = _softplus(b_dtr)
                b_dt1 = _softplus(b_dtr1)
            else:
                b_dt = b_dtr
                b_dt1 = b_dtr1
            b_dt = tl.where(m_dt, b_dt, 0.0)
            b_u = tl.load(p_u + i_b * s_u_b + o_d[:, None] * s_u_d + o_tc[None, :] * s_u_t,
                          mask=m_dt, other=0.0).to(tl.float32)
            b_dy = tl.load(p_dy + i_b * s_dy_b + o_d[:, None] * s_dy_d + o_tc[None, :] * s_dy_t,
                           mask=m_dt, other=0.0).to(tl.float32)

            # recompute the chunk's states: [BD, BN, BT]
            b_a = tl.exp2(b_dt[:, None, :] * b_A[:, :, None])
            if HAS_RESET:
                b_a = tl.where(b_r[None, None, :], 0.0, b_a)
            b_a = tl.where(m_t[None, None, :], b_a, 1.0)
            b_dtu = b_dt * b_u
            b_x = b_dtu[:, None, :] * b_B[None, :, :]
            b_acum, b_hloc = tl.associative_scan((b_a, b_x), axis=2, combine_fn=_linear_combine)
            b_h = b_hloc + b_acum * b_h0[:, :, None]

            # gate: [BD, BT]
            if HAS_Z:
                b_z = tl.load(p_z + i_b * s_z_b + o_d[:, None] * s_z_d + o_tc[None, :] * s_z_t,
                              mask=m_dt, other=0.0).to(tl.float32)
                b_sig = tl.sigmoid(b_z)
                b_ypre = tl.sum(b_h * b_C[None, :, :], axis=1)
                if HAS_D:
                    b_Dv = tl.load(p_D + o_d, mask=m_d, other=0.0).to(tl.float32)
                    b_ypre += b_Dv[:, None] * b_u
                b_dz = b_dy * b_ypre * b_sig * (1.0 + b_z * (1.0 - b_sig))
                tl.store(p_dz + i_b * s_dz_b + o_d[:, None] * s_dz_d + o_tc[None, :] * s_dz_t,
                         b_dz.to(p_dz.dtype.element_ty), mask=m_dt)
                b_dy = b_dy * b_z * b_sig
            elif HAS_D:
                b_Dv = tl.load(p_D + o_d, mask=m_d, other=0.0).to(tl.float32)

            # adjoint: g_t = dy'_t C_t + a_{t+1} g_{t+1}, reverse scan; [BD, BN, BT]
            b_a1 = tl.exp2(b_dt1[:, None, :] * b_A[:, :, None])
            if HAS_RESET:
                b_a1 = tl.where(b_r1[None, None, :], 0.0, b_a1)
            b_a1 = tl.where(m_t1[None, None, :], b_a1, 1.0)
            b_e = b_dy[:, None, :] * b_C[None, :, :]
            b_gcum, b_gloc = tl.associative_scan((b_a1, b_e), axis=2, combine_fn=_linear_combine,
                                                 reverse=True)
            b_g = b_gloc + b_gcum * b_gc[:, :, None]
            # gradient entering the previous chunk's end: a_{t0} g_{t0}
            b_gc = tl.sum(tl.where((o_t == 0)[None, None, :], b_a * b_g, 0.0), axis=2)
            tl.store(p_dh + i_b * d * n + o_dn, b_gc, mask=m_dn)

            # [BD, BT]
            b_s = tl.sum(b_g * b_B[None, :, :], axis=1)
            b_du = b_dt * b_s
            b_ddt = b_u * b_s
            if HAS_D:
                b_du += b_dy * b_Dv[:, None]
            # a_t h_{t-1} = h_t - x_t: gradients of exp(delta_t A)
            b_w = b_g * (b_h - b_x)
            b_ddt += tl.sum(b_w * b_Araw[:, :, None], axis=1)
            if SOFTPLUS:
                b_ddt = b_ddt * tl.sigmoid(b_dtr)
            b_ddt = tl.where(m_dt, b_ddt, 0.0)
            tl.store(p_du + i_b * s_du_b + o_d[:, None] * s_du_d + o_tc[None, :] * s_du_t,
                     b_du.to(p_du.dtype.element_ty), mask=m_dt)
            tl.store(p_ddelta + i_b * s_ddt_b + o_d[:, None] * s_ddt_d + o_tc[None, :] * s_ddt_t,
                     b_ddt.to(p_ddelta.dtype.element_ty), mask=m_dt)

            # per-(batch row, channel) partial sums, owned by this program: [BD, BN], [BD]
            p_dA_c = p_dA + i_b * d * n + o_dn
            tl.store(p_dA_c, tl.load(p_dA_c, mask=m_dn, other=0.0)
                     + tl.sum(b_w * b_dt[:, None, :], axis=2), mask=m_dn)
            if HAS_D:
                p_dD_c = p_dD + i_b * d + o_d
                tl.store(p_dD_c, tl.load(p_dD_c, mask=m_d, other=0.0) + tl.sum(b_dy * b_u, axis=1),
                         mask=m_d)
            if HAS_BIAS:
                p_dbias_c = p_dbias + i_b * d + o_d
                tl.store(p_dbias_c, tl.load(p_dbias_c, mask=m_d, other=0.0) + tl.sum(b_ddt, axis=1),
                         mask=m_d)

            # [BN, BT], summed over this block's channels
            b_dB += tl.sum(b_g * b_dtu[:, None, :], axis=0)
            b_dC += tl.sum(b_h * b_dy[:, None, :], axis=0)
            # the carried gradient and partial sums are re-read by this program
            tl.debug_barrier()

        tl.atomic_add(p_dB + o_tc[None, :], b_dB, mask=m_nt)
        tl.atomic_add(p_dC + o_tc[None, :], b_dC, mask=m_nt)


# Tile sizes, tuned by hand on an H100 (benchmarks/bench_scan.py --sweep; no autotuning: the
# backward accumulates into buffers). BLOCK_T is the checkpoint interval: the saved states take
# d_state / BLOCK_T of b * d * L floats. A tile is BLOCK_D * BLOCK_N * BLOCK_T elements. The
# backward adds d / channels_per_program atomic partial sums to each element of dB and dC.
SCAN_CONFIG = {
    "block_t": 32,
    "fwd_tile": 4096,
    "fwd_warps": 8,
    "fwd_maxnreg": None,
    "bwd_tile": 2048,
    "bwd_warps": 8,
    "bwd_maxnreg": None,
    "bwd_channels_per_program": 32,
}


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _launch_options(kind: str) -> dict:
    options = {"num_warps": SCAN_CONFIG[f"{kind}_warps"]}
    if SCAN_CONFIG[f"{kind}_maxnreg"] is not None:
        options["maxnreg"] = SCAN_CONFIG[f"{kind}_maxnreg"]
    return options


def _fwd_blocks(d: int, n: int) -> tuple[int, int, int]:
    block_n = max(2, _next_pow2(n))
    block_t = SCAN_CONFIG["block_t"]
    block_d = max(1, min(_next_pow2(d), SCAN_CONFIG["fwd_tile"] // (block_n * block_t)))
    return block_d, block_n, block_t


def _bwd_blocks(d: int, n: int, block_t: int) -> tuple[int, int]:
    block_n = max(2, _next_pow2(n))
    block_d = max(1, min(_next_pow2(d), SCAN_CONFIG["bwd_tile"] // (block_n * block_t)))
    per_program = max(block_d, min(_next_pow2(d), SCAN_CONFIG["bwd_channels_per_program"]))
    return block_d, per_program // block_d


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
        A = A.contiguous()
        h0_f = None if h0 is None else h0.to(torch.float32).contiguous()
        reset_u8 = None if reset is None else reset.contiguous().view(torch.uint8)
        block_d, block_n, block_t = _fwd_blocks(d, n)
        n_chunks = triton.cdiv(L, block_t)

        y = _time_major_like(u)
        h_last = torch.empty(b, d, n, device=u.device, dtype=torch.float32)
        h_ck = torch.empty(b, n_chunks, d, n, device=u.device, dtype=torch.float32)
        z_ = u if z is None else z
        r_ = u if reset_u8 is None else reset_u8
        if L > 0:
            _scan_fwd_kernel[(triton.cdiv(d, block_d), b)](
                u, delta, A, B, C, u if D is None else D, z_, u if delta_bias is None else delta_bias,
                u if h0_f is None else h0_f, r_,
                y, h_last, h_ck,
                L, d, n,
                *u.stride(), *delta.stride(), *z_.stride(), *B.stride(), *C.stride(), *y.stride(),
                0 if reset_u8 is None else reset_u8.stride(0),
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=bool(delta_softplus), HAS_H0=h0 is not None, HAS_RESET=reset is not None,
                BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_T=block_t, **_launch_options("fwd"),
            )
        else:
            h_last.copy_(h0_f if h0_f is not None else torch.zeros_like(h_last))

        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, reset_u8, h_ck)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.block_t = block_t
        ctx.has_h0 = h0 is not None
        ctx.h0_dtype = None if h0 is None else h0.dtype
        return y, h_last

    @staticmethod
    def backward(ctx, dy, dh_last):
        u, delta, A, B, C, D, z, delta_bias, reset_u8, h_ck = ctx.saved_tensors
        b, d, L = u.shape
        n = A.shape[1]
        if dy is None:
            dy = torch.zeros_like(u)
        dy = _unit_stride(dy)
        # carried gradient of the state: dh_last in, dh0 out
        dh = (torch.zeros(b, d, n, device=u.device, dtype=torch.float32) if dh_last is None
              else dh_last.to(torch.float32).contiguous().clone())
        du = _time_major_like(u)
        ddelta = _time_major_like(delta)
        dz = None if z is None else _time_major_like(z)
        dB = torch.zeros(b, n, L, device=u.device, dtype=torch.float32)
        dC = torch.zeros(b, n, L, device=u.device, dtype=torch.float32)
        dA = torch.zeros(b, d, n, device=u.device, dtype=torch.float32)
        dD = None if D is None else torch.zeros(b, d, device=u.device, dtype=torch.float32)
        dbias = None if delta_bias is None else torch.zeros(b, d, device=u.device, dtype=torch.float32)
        block_t = ctx.block_t
        block_d, d_split = _bwd_blocks(d, n, block_t)
        block_n = max(2, _next_pow2(n))
        z_ = u if z is None else z
        dz_ = du if dz is None else dz
        r_ = u if reset_u8 is None else reset_u8
        if L > 0:
            _scan_bwd_kernel[(triton.cdiv(d, block_d * d_split), b)](
                u, delta, A, B, C, u if D is None else D, z_, u if delta_bias is None else delta_bias,
                r_, h_ck, dy,
                du, ddelta, dz_, dB, dC, dA, dA if dD is None else dD, dA if dbias is None else dbias, dh,
                L, d, n,
                *u.stride(), *delta.stride(), *z_.stride(), *B.stride(), *C.stride(), *dy.stride(),
                *du.stride(), *ddelta.stride(), *dz_.stride(),
                0 if reset_u8 is None else reset_u8.stride(0),
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=ctx.delta_softplus, HAS_RESET=reset_u8 is not None,
                BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_T=block_t, D_SPLIT=d_split,
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
            dA.sum(0).to(A.dtype),
            dB.to(B.dtype),
            dC.to(C.dtype),
            None if dD is None else dD.sum(0).to(D.dtype),
            dz,
            None if dbias is None else dbias.sum(0).to(delta_bias.dtype),
            dh.to(ctx.h0_dtype) if ctx.has_h0 and grads_needed[8] else None,
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
    Saved for backward: the inputs and one fp32 state per ``BLOCK_T`` steps.
    """
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, h0, reset, delta_softplus)
