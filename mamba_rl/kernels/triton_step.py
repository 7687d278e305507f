"""Fused Triton rollout step: conv state, SSM state and output for N environments at once.

Twins of :func:`mamba_rl.kernels.naive.causal_conv1d_step_ref` and
:func:`mamba_rl.kernels.naive.selective_state_step_ref`, plus the fused step of a whole Mamba mixer
between its input and output projections (:func:`mamba_mixer_step`, in place or not), which
:meth:`mamba_rl.mixer.MambaMixer.step` runs when no gradient is needed.

The step kernels take an input and an output state pointer: the pure functions pass a fresh output,
the ``*_inplace`` ones and :func:`mamba_mixer_step` without output states pass the input: each
program reads every state element it writes, then a barrier, then its writes, so in-place is safe
even where a block smaller than the program is held by threads of several warps (without the
barrier, one warp could overwrite a window that another had not read yet). Per-env resets are
applied inside the kernels. Nothing here syncs with the host or autotunes (a tuning run would
overwrite the state), and the in-place entry points allocate nothing once their workspace exists:
they can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mamba_rl.kernels.naive import is_silu
from mamba_rl.kernels.triton_host import next_pow2
from mamba_rl.kernels.triton_launch import DirectLauncher
from mamba_rl.kernels.triton_math import _softplus
from mamba_rl.kernels.triton_scan import selective_scan_triton

__all__ = [
    "causal_conv1d_step_triton",
    "causal_conv1d_step_inplace",
    "selective_state_step_triton",
    "selective_state_step_inplace",
    "mamba_mixer_step",
    "MixerStepWorkspace",
    "STEP_CONFIG",
]


@triton.jit
def _conv_window_step(
    p_s,
    p_o,
    s_k,
    s_ok,
    p_w,
    p_bias,
    b_x,
    b_keep,
    o_k,
    m_k,
    m_ek,
    W: tl.constexpr,
    BLOCK_W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    """One causal-conv step of a ``[BE, BK]`` tile (envs x channels ``o_k``): ``p_s`` / ``p_o``
    point at each element's window in the input / output state (its ``W - 1`` past inputs at
    strides ``s_k`` / ``s_ok``, oldest first), ``b_x`` is the new input and ``b_keep`` ``[BE, 1]``
    (bool) is off for reset envs, whose window is taken as zero: a select, so that a non-finite
    input before a reset does not survive it. Shifts ``b_x`` into the output window and returns
    the conv output before any activation, fp32 ``[BE, BK]``. ``p_o`` may be ``p_s``: a tile smaller than
    the program is held by threads of several warps, so every thread reads its window, then a
    barrier, then the shifted window is stored."""
    o_w = tl.arange(0, BLOCK_W)
    m_w = o_w < W - 1
    # [BE, BK, BW]
    b_s = tl.load(p_s[:, :, None] + o_w[None, None, :] * s_k, mask=m_ek[:, :, None] & m_w[None, None, :], other=0.0)
    b_s = tl.where(b_keep[:, :, None], b_s, 0.0)
    b_w = tl.load(p_w + o_k[:, None] * W + o_w[None, :], mask=m_k[:, None] & m_w[None, :], other=0.0)
    b_y = tl.sum(b_s.to(tl.float32) * b_w.to(tl.float32)[None, :, :], axis=2)
    b_y += tl.load(p_w + o_k * W + (W - 1), mask=m_k, other=0.0).to(tl.float32)[None, :] * b_x
    if HAS_BIAS:
        b_y += tl.load(p_bias + o_k, mask=m_k, other=0.0).to(tl.float32)[None, :]
    tl.debug_barrier()
    m_shift = (o_w >= 1) & m_w
    tl.store(
        p_o[:, :, None] + (o_w[None, None, :] - 1) * s_ok,
        b_s.to(p_o.dtype.element_ty),
        mask=m_ek[:, :, None] & m_shift[None, None, :],
    )
    tl.store(p_o + (W - 2) * s_ok, b_x.to(p_o.dtype.element_ty), mask=m_ek)
    return b_y


@triton.jit
def _conv_step_kernel(
    p_x,
    p_state,
    p_state_out,
    p_w,
    p_bias,
    p_reset,
    p_y,
    d,
    s_x,
    s_s,
    s_o,
    s_y,
    W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_RESET: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    # one env (a [1, BD] tile of channels); s_*: each tensor's strides, in its dims' order
    s_x_b, s_x_d = s_x
    s_s_b, s_s_d, s_s_k = s_s
    s_o_b, s_o_d, s_o_k = s_o
    s_y_b, s_y_d = s_y
    i_d = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < d
    b_x = tl.load(p_x + i_b * s_x_b + o_d * s_x_d, mask=m_d, other=0.0).to(tl.float32)[None, :]
    b_keep = tl.full([1, 1], 1, dtype=tl.int1)
    if HAS_RESET:
        b_keep = tl.load(p_reset + i_b + tl.zeros([1, 1], dtype=tl.int32)) == 0
    p_s = (p_state + i_b * s_s_b + o_d * s_s_d)[None, :]
    p_o = (p_state_out + i_b * s_o_b + o_d * s_o_d)[None, :]
    b_y = _conv_window_step(
        p_s, p_o, s_s_k, s_o_k, p_w, p_bias, b_x, b_keep, o_d, m_d, m_d[None, :], W, BLOCK_W, HAS_BIAS
    )
    if SILU:
        b_y = b_y * tl.sigmoid(b_y)
    tl.store((p_y + i_b * s_y_b + o_d * s_y_d)[None, :], b_y.to(p_y.dtype.element_ty), mask=m_d[None, :])


@triton.jit
def _ssm_step_kernel(
    p_h,
    p_h_out,
    p_x,
    p_delta,
    p_A,
    p_B,
    p_C,
    p_D,
    p_z,
    p_bias,
    p_reset,
    p_y,
    d,
    n,
    s_h,
    s_o,
    s_x,
    s_dt,
    s_B,
    s_C,
    s_z,
    s_y,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_RESET: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # s_*: each tensor's strides, in its dims' order
    s_h_b, s_h_d, s_h_n = s_h
    s_o_b, s_o_d, s_o_n = s_o
    s_x_b, s_x_d = s_x
    s_dt_b, s_dt_d = s_dt
    s_B_b, s_B_n = s_B
    s_C_b, s_C_n = s_C
    s_z_b, s_z_d = s_z
    s_y_b, s_y_d = s_y
    i_d = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    o_n = tl.arange(0, BLOCK_N)
    m_d = o_d < d
    m_n = o_n < n
    m_dn = m_d[:, None] & m_n[None, :]
    # [BD, BN]
    b_h = tl.load(p_h + i_b * s_h_b + o_d[:, None] * s_h_d + o_n[None, :] * s_h_n, mask=m_dn, other=0.0).to(tl.float32)
    if HAS_RESET:
        b_h = tl.where(tl.load(p_reset + i_b) != 0, 0.0, b_h)
    # p_h_out may be p_h: every thread reads before any thread writes (a block smaller than the
    # program is held by threads of several warps)
    tl.debug_barrier()
    b_A = tl.load(p_A + o_d[:, None] * n + o_n[None, :], mask=m_dn, other=0.0).to(tl.float32)
    # [BD]
    b_x = tl.load(p_x + i_b * s_x_b + o_d * s_x_d, mask=m_d, other=0.0).to(tl.float32)
    b_dt = tl.load(p_delta + i_b * s_dt_b + o_d * s_dt_d, mask=m_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        b_dt += tl.load(p_bias + o_d, mask=m_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        b_dt = _softplus(b_dt)
    # [BN]
    b_B = tl.load(p_B + i_b * s_B_b + o_n * s_B_n, mask=m_n, other=0.0).to(tl.float32)
    b_C = tl.load(p_C + i_b * s_C_b + o_n * s_C_n, mask=m_n, other=0.0).to(tl.float32)
    b_h = tl.exp(b_dt[:, None] * b_A) * b_h + (b_dt * b_x)[:, None] * b_B[None, :]
    tl.store(p_h_out + i_b * s_o_b + o_d[:, None] * s_o_d + o_n[None, :] * s_o_n, b_h, mask=m_dn)
    b_y = tl.sum(b_h * b_C[None, :], axis=1)
    if HAS_D:
        b_y += tl.load(p_D + o_d, mask=m_d, other=0.0).to(tl.float32) * b_x
    if HAS_Z:
        b_z = tl.load(p_z + i_b * s_z_b + o_d * s_z_d, mask=m_d, other=0.0).to(tl.float32)
        b_y *= b_z * tl.sigmoid(b_z)
    tl.store(p_y + i_b * s_y_b + o_d * s_y_d, b_y.to(p_y.dtype.element_ty), mask=m_d)


# launched through their compiled binaries after the first call (see triton_launch)
_CONV_STEP, _SSM_STEP = DirectLauncher(_conv_step_kernel), DirectLauncher(_ssm_step_kernel)


def _reset_u8(reset: torch.Tensor) -> torch.Tensor:
    # a [b] bool as bytes, without a copy (the kernels read it with unit stride)
    if reset.dim() != 1 or reset.stride(0) != 1:
        raise ValueError(
            f"reset must be a contiguous [b] bool tensor, got shape {list(reset.shape)} "
            f"and strides {list(reset.stride())}"
        )
    return reset.view(torch.uint8)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _launch_conv_step(x, conv_state, state_out, weight, bias, activation, reset, y):
    b, d = x.shape
    width = weight.shape[-1]
    if weight.stride(-1) != 1 or weight.stride(0) != width:
        raise ValueError("weight must be a contiguous [d, w] tensor")
    block_d = min(256, next_pow2(d))
    r_ = x if reset is None else _reset_u8(reset)
    _CONV_STEP[(triton.cdiv(d, block_d), b)](
        x,
        conv_state,
        state_out,
        weight,
        weight if bias is None else bias,
        r_,
        y,
        d,
        x.stride(),
        conv_state.stride(),
        state_out.stride(),
        y.stride(),
        W=width,
        HAS_BIAS=bias is not None,
        HAS_RESET=reset is not None,
        SILU=is_silu(activation),
        BLOCK_D=block_d,
        BLOCK_W=max(2, next_pow2(width - 1)),
        num_warps=4,
    )


def causal_conv1d_step_triton(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    reset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One conv step, pure; same contract as :func:`~mamba_rl.kernels.naive.causal_conv1d_step_ref`.

    ``x`` ``[b, d]``, ``conv_state`` ``[b, d, w - 1]``, ``weight`` ``[d, w]``, ``bias`` ``[d]``,
    ``reset`` ``[b]`` bool. Returns ``(y [b, d], new_conv_state [b, d, w - 1])``. When a gradient
    is needed, runs the sequence kernel on one step (differentiable) instead.
    """
    is_silu(activation)
    if _needs_grad(x, conv_state, weight, bias):
        from mamba_rl.kernels.triton_conv import causal_conv1d_triton

        y, new_state = causal_conv1d_triton(
            x[..., None], weight, bias, conv_state, None if reset is None else reset[:, None], activation
        )
        return y[..., 0], new_state
    reset = None if reset is None else reset.contiguous()
    state_out = torch.empty_like(conv_state, memory_format=torch.contiguous_format)
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    _launch_conv_step(x, conv_state, state_out, weight.contiguous(), bias, activation, reset, y)
    return y, state_out


def causal_conv1d_step_inplace(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    reset: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One conv step that overwrites ``conv_state`` ``[b, d, w - 1]``; returns ``y`` ``[b, d]``
    (written into ``out`` when given). ``weight`` must be contiguous. Graph-capturable."""
    y = torch.empty_like(x) if out is None else out
    _launch_conv_step(x, conv_state, conv_state, weight, bias, activation, reset, y)
    return y


def _launch_ssm_step(h, h_out, x, delta, A, B, C, D, z, delta_bias, delta_softplus, reset, y):
    b, d = x.shape
    n = A.shape[-1]
    if A.stride(-1) != 1 or A.stride(0) != n:
        raise ValueError("A must be a contiguous [d, n] tensor")
    block_n = max(2, next_pow2(n))
    block_d = max(1, min(next_pow2(d), 2048 // block_n))
    z_ = x if z is None else z
    r_ = x if reset is None else _reset_u8(reset)
    _SSM_STEP[(triton.cdiv(d, block_d), b)](
        h,
        h_out,
        x,
        delta,
        A,
        B,
        C,
        x if D is None else D,
        z_,
        x if delta_bias is None else delta_bias,
        r_,
        y,
        d,
        n,
        h.stride(),
        h_out.stride(),
        x.stride(),
        delta.stride(),
        B.stride(),
        C.stride(),
        z_.stride(),
        y.stride(),
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus),
        HAS_RESET=reset is not None,
        BLOCK_D=block_d,
        BLOCK_N=block_n,
        num_warps=4,
    )


def selective_state_step_triton(
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SSM step, pure; same contract as :func:`~mamba_rl.kernels.naive.selective_state_step_ref`.

    ``h`` ``[b, d, n]``; ``x, delta, z`` ``[b, d]``; ``A`` ``[d, n]``; ``B, C`` ``[b, n]``;
    ``D, delta_bias`` ``[d]``; ``reset`` ``[b]`` bool. Returns ``(y [b, d], h_new [b, d, n] fp32)``.
    When a gradient is needed, runs the differentiable scan on one step instead.
    """
    if _needs_grad(h, x, delta, A, B, C, D, z, delta_bias):
        y, h_new = selective_scan_triton(
            x[..., None],
            delta[..., None],
            A,
            B[..., None],
            C[..., None],
            D,
            None if z is None else z[..., None],
            delta_bias,
            delta_softplus,
            h,
            None if reset is None else reset[:, None],
        )
        return y[..., 0], h_new
    reset = None if reset is None else reset.contiguous()
    h_out = torch.empty(h.shape, device=h.device, dtype=torch.float32)
    y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    _launch_ssm_step(h, h_out, x, delta, A.contiguous(), B, C, D, z, delta_bias, delta_softplus, reset, y)
    return y, h_out


def selective_state_step_inplace(
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
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One SSM step that overwrites ``h`` (``[b, d, n]`` fp32); returns ``y`` ``[b, d]`` (into
    ``out`` when given). ``A`` must be contiguous. Graph-capturable."""
    if h.dtype != torch.float32:
        raise TypeError(f"h must be float32 (the state is kept in fp32), got {h.dtype}")
    y = torch.empty_like(x) if out is None else out
    _launch_ssm_step(h, h, x, delta, A, B, C, D, z, delta_bias, delta_softplus, reset, y)
    return y


# --------------------------------------------------------------------------------------------
# The whole mixer between in_proj and out_proj, in one launch


@triton.jit
def _mixer_conv_tile(
    xz,
    conv,
    conv_out,
    cw,
    xc,
    o_e,
    m_e,
    b_keep,
    o_k,
    d,
    W: tl.constexpr,
    BLOCK_W: tl.constexpr,
    HAS_CONV_BIAS: tl.constexpr,
):
    # the conv step of envs o_e [BE] on channels o_k [BK], then silu; x_conv is stored into xc in
    # its dtype, as the unfused path rounds it, and returned as that rounded value [BE, BK].
    # xz, xc: (pointer, env stride); conv, conv_out: (pointer, env, channel and tap strides);
    # cw: (conv weight, conv bias)
    p_xz, s_xz_e = xz
    p_conv, s_c_e, s_c_d, s_c_k = conv
    p_conv_out, s_co_e, s_co_d, s_co_k = conv_out
    p_cw, p_cb = cw
    p_xc, s_xc_e = xc
    m_k = o_k < d
    m_ek = m_e[:, None] & m_k[None, :]
    b_x = tl.load(p_xz + o_e[:, None] * s_xz_e + o_k[None, :], mask=m_ek, other=0.0).to(tl.float32)
    p_s = p_conv + o_e[:, None] * s_c_e + o_k[None, :] * s_c_d
    p_so = p_conv_out + o_e[:, None] * s_co_e + o_k[None, :] * s_co_d
    b_y = _conv_window_step(
        p_s, p_so, s_c_k, s_co_k, p_cw, p_cb, b_x, b_keep[:, None], o_k, m_k, m_ek, W, BLOCK_W, HAS_CONV_BIAS
    )
    b_y = b_y * tl.sigmoid(b_y)
    b_xc = b_y.to(p_xc.dtype.element_ty)
    tl.store(p_xc + o_e[:, None] * s_xc_e + o_k[None, :], b_xc, mask=m_ek)
    return b_xc.to(tl.float32)


@triton.jit
def _mixer_xproj_acc(b_xdbl, b_xc, p_wx, o_k, o_j, d, J, DOT: tl.constexpr):
    # b_xdbl [BE, BJ] += b_xc [BE, BK] @ x_proj.weight[o_j, o_k].T; a tensor-core-free fp32 dot
    # (ieee) when the env block is large enough for tl.dot, else a broadcast product and sum
    b_wx = tl.load(p_wx + o_j[None, :] * d + o_k[:, None], mask=(o_j < J)[None, :] & (o_k < d)[:, None], other=0.0).to(
        tl.float32
    )
    if DOT:
        b_xdbl += tl.dot(b_xc, b_wx, input_precision="ieee")
    else:
        b_xdbl += tl.sum(b_xc[:, :, None] * b_wx[None, :, :], axis=1)
    return b_xdbl


@triton.jit
def _mixer_ssm_tile(
    xz,
    p_xdbl,
    prm,
    h,
    h_out,
    xc,
    o_e,
    m_e,
    b_r,
    o_d,
    d,
    n,
    J,
    R: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_RESET: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # dt_proj, softplus, SSM update (h_out may be h), D skip and z gate for envs o_e [BE] on
    # channels o_d [BD]; y overwrites x_conv in xc. b_r [BE]: the envs reset before this step;
    # x_dbl [N, J] in p_xdbl. xz, h, h_out, xc: (pointer, env stride); prm: (dt_proj weight,
    # dt_proj bias, A, D)
    p_xz, s_xz_e = xz
    p_wdt, p_bdt, p_A, p_D = prm
    p_h, s_h_e = h
    p_h_out, s_ho_e = h_out
    p_xc, s_xc_e = xc
    o_n = tl.arange(0, BLOCK_N)
    m_d = o_d < d
    m_n = o_n < n
    m_ed = m_e[:, None] & m_d[None, :]
    # [BE, BD]
    b_dt = tl.zeros([o_e.shape[0], o_d.shape[0]], dtype=tl.float32)
    for r in range(R):
        b_lo = tl.load(p_xdbl + o_e * J + r, mask=m_e, other=0.0)
        b_w = tl.load(p_wdt + o_d * R + r, mask=m_d, other=0.0).to(tl.float32)
        b_dt += b_lo[:, None] * b_w[None, :]
    b_dt = _softplus(b_dt + tl.load(p_bdt + o_d, mask=m_d, other=0.0).to(tl.float32)[None, :])
    b_x = tl.load(p_xc + o_e[:, None] * s_xc_e + o_d[None, :], mask=m_ed, other=0.0).to(tl.float32)
    b_z = tl.load(p_xz + o_e[:, None] * s_xz_e + d + o_d[None, :], mask=m_ed, other=0.0).to(tl.float32)
    # [BE, BN]
    m_en = m_e[:, None] & m_n[None, :]
    b_B = tl.load(p_xdbl + o_e[:, None] * J + R + o_n[None, :], mask=m_en, other=0.0)
    b_C = tl.load(p_xdbl + o_e[:, None] * J + R + n + o_n[None, :], mask=m_en, other=0.0)
    # [BD, BN] and [BE, BD, BN]
    b_A = tl.load(p_A + o_d[:, None] * n + o_n[None, :], mask=m_d[:, None] & m_n[None, :], other=0.0).to(tl.float32)
    m_edn = m_ed[:, :, None] & m_n[None, None, :]
    o_s = o_d[None, :, None] * n + o_n[None, None, :]
    b_h = tl.load(p_h + o_e[:, None, None].to(tl.int64) * s_h_e + o_s, mask=m_edn, other=0.0)
    if HAS_RESET:
        b_h = tl.where(b_r[:, None, None], 0.0, b_h)
    # p_h_out may be p_h and y overwrites x_conv: every thread reads before any thread writes
    tl.debug_barrier()
    b_h = tl.exp(b_dt[:, :, None] * b_A[None, :, :]) * b_h + (b_dt * b_x)[:, :, None] * b_B[:, None, :]
    tl.store(p_h_out + o_e[:, None, None].to(tl.int64) * s_ho_e + o_s, b_h, mask=m_edn)
    b_y = tl.sum(b_h * b_C[:, None, :], axis=2)
    if HAS_D:
        b_y += tl.load(p_D + o_d, mask=m_d, other=0.0).to(tl.float32)[None, :] * b_x
    b_y *= b_z * tl.sigmoid(b_z)
    tl.store(p_xc + o_e[:, None] * s_xc_e + o_d[None, :], b_y.to(p_xc.dtype.element_ty), mask=m_ed)


@triton.jit
def _mixer_step_kernel(
    p_xz,
    p_conv,
    p_conv_out,
    p_cw,
    p_cb,
    p_reset,
    p_wx,
    p_xc,
    p_xdbl,
    p_wdt,
    p_bdt,
    p_A,
    p_D,
    p_h,
    p_h_out,
    N,
    d,
    n,
    J,
    s_xz_e,
    s_c_e,
    s_c_d,
    s_c_k,
    s_co_e,
    s_co_d,
    s_co_k,
    s_xc_e,
    s_h_e,
    s_ho_e,
    W: tl.constexpr,
    R: tl.constexpr,
    HAS_CONV_BIAS: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_RESET: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # the whole step of BLOCK_E envs: the conv and x_proj over every channel, x_dbl to the
    # workspace, a barrier (so that every thread of the program sees x_dbl and x_conv), then dt_proj
    # and the SSM update channel tile by channel tile. One launch, and while some programs wait on
    # their SSM states others run their conv: the two phases overlap across the GPU.
    i_e = tl.program_id(0)
    o_e = i_e * BLOCK_E + tl.arange(0, BLOCK_E)
    m_e = o_e < N
    o_j = tl.arange(0, BLOCK_J)
    b_r = tl.zeros([BLOCK_E], dtype=tl.int1)
    if HAS_RESET:
        b_r = tl.load(p_reset + o_e, mask=m_e, other=0) != 0
    b_keep = ~b_r
    xz, xc = (p_xz, s_xz_e), (p_xc, s_xc_e)
    conv, conv_out = (p_conv, s_c_e, s_c_d, s_c_k), (p_conv_out, s_co_e, s_co_d, s_co_k)
    h, h_out = (p_h, s_h_e), (p_h_out, s_ho_e)
    prm = (p_wdt, p_bdt, p_A, p_D)
    b_xdbl = tl.zeros([BLOCK_E, BLOCK_J], dtype=tl.float32)
    for i_k in range(tl.cdiv(d, BLOCK_K)):
        o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
        b_xc = _mixer_conv_tile(
            xz, conv, conv_out, (p_cw, p_cb), xc, o_e, m_e, b_keep, o_k, d, W, BLOCK_W, HAS_CONV_BIAS
        )
        b_xdbl = _mixer_xproj_acc(b_xdbl, b_xc, p_wx, o_k, o_j, d, J, BLOCK_E >= 16)
    tl.store(p_xdbl + o_e[:, None] * J + o_j[None, :], b_xdbl, mask=m_e[:, None] & (o_j < J)[None, :])
    tl.debug_barrier()
    for i_d in range(tl.cdiv(d, BLOCK_D)):
        o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
        _mixer_ssm_tile(xz, p_xdbl, prm, h, h_out, xc, o_e, m_e, b_r, o_d, d, n, J, R, HAS_D, HAS_RESET, BLOCK_N)


_MIXER_STEP = DirectLauncher(_mixer_step_kernel)

# Tile sizes of the fused mixer step, tuned by hand (benchmarks/bench_scan.py step --sweep; no
# autotuning: the kernel overwrites the states): envs per program, channels per conv/x_proj loop
# step, channels per SSM tile, warps. From 16 envs a program, x_proj runs on tl.dot (fp32, ieee).
STEP_CONFIG = {
    "block_e": 2,
    "block_k": 64,
    "block_d": 64,
    "warps": 4,
}


class MixerStepWorkspace:
    """Scratch for :func:`mamba_mixer_step`: ``x_dbl`` ``[N, dt_rank + 2 n]`` fp32.
    Allocate once per (N, layer shape, device) and reuse, so that steps allocate nothing."""

    def __init__(self, num_envs: int, dt_rank: int, d_state: int, device) -> None:
        self.x_dbl = torch.empty(num_envs, dt_rank + 2 * d_state, device=device, dtype=torch.float32)


def fused_step_takes_ssm_state(h: torch.Tensor) -> bool:
    """Whether :func:`mamba_mixer_step` takes ``h`` ``[N, d, n]`` as an SSM state: float32, each
    env's ``[d, n]`` contiguous, any env stride (a layer's slice of a ``[N, layers, d, n]`` state)."""
    return h.dtype == torch.float32 and h.dim() == 3 and h.stride(2) == 1 and h.stride(1) == h.shape[2]


def _check_ssm_state(name: str, h: torch.Tensor, shape: tuple[int, int, int]) -> None:
    if tuple(h.shape) != shape or not fused_step_takes_ssm_state(h):
        raise ValueError(
            f"{name} must be a float32 {list(shape)} tensor with each env's [d, n] contiguous, got "
            f"{h.dtype} {list(h.shape)} with strides {list(h.stride())}"
        )


def mamba_mixer_step(
    xz: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    dt_proj_bias: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor | None,
    reset: torch.Tensor | None,
    out: torch.Tensor,
    workspace: MixerStepWorkspace | None = None,
    conv_state_out: torch.Tensor | None = None,
    ssm_state_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Mamba-1 mixer step between ``in_proj`` and ``out_proj``, in one kernel launch.

    Computes, for ``N`` envs (``d = d_inner``, ``n = d_state``, ``R = dt_rank``, ``w = d_conv``)::

        x, z = xz[:, :d], xz[:, d:]
        x_conv = silu(conv_step(x, conv_state, reset))         # -> conv_state_out
        dt, B, C = split(x_conv @ x_proj_weight.T, [R, n, n])
        delta = softplus(dt @ dt_proj_weight.T + dt_proj_bias)
        y = ssm_step(ssm_state, x_conv, delta, A, B, C, D, z, reset)   # -> ssm_state_out

    Args:
        xz: ``[N, 2 d]`` (rows contiguous), the output of ``in_proj``.
        conv_state: ``[N, d, w - 1]``, any strides.  ssm_state: ``[N, d, n]`` fp32, each env's
            ``[d, n]`` contiguous (any env stride, e.g. one layer of a ``[N, layers, d, n]`` state).
        conv_weight ``[d, w]``, conv_bias ``[d]``, x_proj_weight ``[R + 2 n, d]``,
        dt_proj_weight ``[d, R]``, dt_proj_bias ``[d]``, A ``[d, n]`` (``-exp(A_log)``), D ``[d]``:
            contiguous parameters.
        reset: ``[N]`` bool: True zeroes both states of that env before the step.
        out: ``[N, d]`` (rows contiguous), receives ``y`` (it holds ``x_conv`` in between).
        workspace: a :class:`MixerStepWorkspace` for this ``N`` and layer (allocated when None).
        conv_state_out, ssm_state_out: where the states after the step go, laid out like the
            inputs' constraints; ``None`` (the default, or the input itself) updates the input in
            place. A separate output must not overlap its input.

    Returns ``(out, conv_state_out, ssm_state_out)``. No host sync; with a workspace and the
    outputs given, no allocation either: graph-capturable.
    """
    N, two_d = xz.shape
    d = two_d // 2
    n = A.shape[1]
    R = dt_proj_weight.shape[1]
    J = R + 2 * n
    width = conv_weight.shape[1]
    conv_state_out = conv_state if conv_state_out is None else conv_state_out
    ssm_state_out = ssm_state if ssm_state_out is None else ssm_state_out
    _check_ssm_state("ssm_state", ssm_state, (N, d, n))
    _check_ssm_state("ssm_state_out", ssm_state_out, (N, d, n))
    for name, state in (("conv_state", conv_state), ("conv_state_out", conv_state_out)):
        if tuple(state.shape) != (N, d, width - 1):
            raise ValueError(f"{name} must be [N={N}, d={d}, w-1={width - 1}], got {list(state.shape)}")
    if tuple(x_proj_weight.shape) != (J, d) or tuple(out.shape) != (N, d):
        raise ValueError(
            f"x_proj_weight must be [{J}, {d}] and out [{N}, {d}], got "
            f"{list(x_proj_weight.shape)} and {list(out.shape)}"
        )
    if xz.stride(1) != 1 or out.stride(1) != 1:
        raise ValueError("xz and out must have contiguous rows")
    workspace = MixerStepWorkspace(N, R, n, xz.device) if workspace is None else workspace
    if tuple(workspace.x_dbl.shape) != (N, J):
        raise ValueError(f"workspace.x_dbl must be [{N}, {J}], got {list(workspace.x_dbl.shape)}")
    r_ = xz if reset is None else _reset_u8(reset.contiguous())
    block_n = max(2, next_pow2(n))
    block_j = max(16, next_pow2(J))
    block_w = max(2, next_pow2(width - 1))
    cb = conv_weight if conv_bias is None else conv_bias
    block_e = STEP_CONFIG["block_e"]
    _MIXER_STEP[(triton.cdiv(N, block_e),)](
        xz,
        conv_state,
        conv_state_out,
        conv_weight,
        cb,
        r_,
        x_proj_weight,
        out,
        workspace.x_dbl,
        dt_proj_weight,
        dt_proj_bias,
        A,
        xz if D is None else D,
        ssm_state,
        ssm_state_out,
        N,
        d,
        n,
        J,
        xz.stride(0),
        *conv_state.stride(),
        *conv_state_out.stride(),
        out.stride(0),
        ssm_state.stride(0),
        ssm_state_out.stride(0),
        W=width,
        R=R,
        HAS_CONV_BIAS=conv_bias is not None,
        HAS_D=D is not None,
        HAS_RESET=reset is not None,
        BLOCK_E=block_e,
        BLOCK_K=min(STEP_CONFIG["block_k"], max(16, next_pow2(d))),
        BLOCK_W=block_w,
        BLOCK_J=block_j,
        BLOCK_D=min(STEP_CONFIG["block_d"], next_pow2(d)),
        BLOCK_N=block_n,
        num_warps=STEP_CONFIG["warps"],
    )
    return out, conv_state_out, ssm_state_out
