"""A reset-aware GRU recurrence in Triton: the whole time loop in one launch, forward and backward.

``nn.GRU``'s recurrence after its input projection: ``xg = x @ W_ih^T + b_ih`` ``[N, T, 3H]`` is
computed outside (one matrix product for all steps), and each program of the kernel owns
``BLOCK_N`` rows and steps them through ``t = 0..T-1``:

- ``h = where(reset[:, t], 0, h)`` (the state entering a reset step is zero);
- ``hg = h @ W_hh^T + b_hh`` by ``tl.dot``, one ``[H, H]`` tile per gate, the tiles loaded once
  before the loop (loop invariants: the compiler keeps them on chip);
- ``r = sigmoid(xr + hr)``, ``z = sigmoid(xz + hz)``, ``n = tanh(xn + r * hn)``,
  ``h = (1 - z) * n + z * h``: ``nn.GRU``'s gate order and equations.

The forward writes every state ``out [N, T, H]`` and, when a gradient is needed, the gates
``r, z, n, hn`` ``[N, T, 4H]``, so that the backward's reverse loop has one ``tl.dot`` a step
(``dh_prev = dhg @ W_hh``) and no recomputation. The weight gradients are not accumulated in the
kernel: it writes the gradients of the gate pre-activations, and ``dW_hh = dhg^T @ h_prev`` and
``db_hh`` are one matrix product and one sum over all ``N * T`` steps after it (deterministic, no
atomics). The final state is ``out[:, -1]``.

The matrix products run in ``precision`` ``"ieee"`` (fp32) or ``"tf32"`` (tensor cores, the
rounding cuDNN's GRU uses when ``torch.backends.cudnn.allow_tf32`` is on, PyTorch's default);
by default the one that flag selects, so the kernel rounds like the cuDNN call it replaces.

:func:`mamba_rl.kernels.gru_naive.gru_recurrence_ref` is the plain-PyTorch twin (same signature);
:func:`gru_replay_triton` runs an ``nn.GRU`` (any number of layers) over rows with resets, with
:func:`mamba_rl.policies.gru_replay.gru_replay`'s semantics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import nn

from mamba_rl.kernels.triton_host import next_pow2

__all__ = ["GRU_CONFIG", "MAX_HIDDEN", "PRECISIONS", "gru_recurrence", "gru_replay_triton"]

# Rows per program (tl.dot needs at least 16), warps per program of each kernel, and the
# backward's software-pipelining stages: with 2 or more its six per-step loads get double
# buffers in shared memory beside the 192 KB of W_hh at H=128, 248 KB in all, over an H100's
# 227 KB (compiled for sm_90: 200 KB with 1 stage, the forward 200 KB with any).
GRU_CONFIG = {"block_n": 16, "fwd_warps": 8, "bwd_warps": 8, "bwd_stages": 1}
PRECISIONS = ("ieee", "tf32")
# the three [H, H] fp32 gate blocks of W_hh stay in shared memory: 192 KB at H=128
MAX_HIDDEN = 128


@triton.jit
def _tanh(x):
    # sign(x) (1 - e) / (1 + e), e = exp(-2 |x|) in (0, 1]: no overflow for any x
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _load_w_tiles(p_w, o_h, H, TRANSPOSE: tl.constexpr):
    """The three ``[H, H]`` gate blocks of ``W_hh [3H, H]`` as ``[BLOCK_H, BLOCK_H]`` tiles,
    zero outside ``H``: ``W_g^T`` (``tile[k, j] = W_hh[g H + j, k]``) with ``TRANSPOSE``, else
    ``W_g`` (``tile[j, k] = W_hh[g H + j, k]``)."""
    m_w = (o_h[:, None] < H) & (o_h[None, :] < H)
    if TRANSPOSE:
        o_w = o_h[None, :] * H + o_h[:, None]
    else:
        o_w = o_h[:, None] * H + o_h[None, :]
    b_wr = tl.load(p_w + o_w, mask=m_w, other=0.0)
    b_wz = tl.load(p_w + H * H + o_w, mask=m_w, other=0.0)
    b_wn = tl.load(p_w + 2 * H * H + o_w, mask=m_w, other=0.0)
    return b_wr, b_wz, b_wn


@triton.jit
def _gru_fwd_kernel(
    p_xg,
    p_h0,
    p_reset,
    p_w,
    p_b,
    p_out,
    p_gates,
    N,
    T,
    H,
    HAS_BIAS: tl.constexpr,
    STORE_GATES: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Rows ``[pid * BLOCK_N, (pid + 1) * BLOCK_N)`` through all ``T`` steps; every tensor is
    contiguous: ``xg [N, T, 3H]``, ``h0 [N, H]``, ``reset [N, T]`` uint8, ``out [N, T, H]``,
    ``gates [N, T, 4H]`` (r, z, n, hn)."""
    # the block's first row as a 64-bit scalar offset, the tiles' offsets in 32 bits from it
    # (the wrapper checks BLOCK_N * T * 4H < 2^31): less address arithmetic per step
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_N
    o_r = tl.arange(0, BLOCK_N)
    o_h = tl.arange(0, BLOCK_H)
    m_n = row0 + o_r < N
    m_h = o_h < H
    m_nh = m_n[:, None] & m_h[None, :]
    b_wr, b_wz, b_wn = _load_w_tiles(p_w, o_h, H, True)
    if HAS_BIAS:
        b_br = tl.load(p_b + o_h, mask=m_h, other=0.0)[None, :]
        b_bz = tl.load(p_b + H + o_h, mask=m_h, other=0.0)[None, :]
        b_bn = tl.load(p_b + 2 * H + o_h, mask=m_h, other=0.0)[None, :]
    # [BLOCK_N, BLOCK_H]
    b_h = tl.load(p_h0 + row0 * H + o_r[:, None] * H + o_h[None, :], mask=m_nh, other=0.0)
    # scalar pointers to step t of the block's first row, advanced each step
    p_xg_t = p_xg + row0 * T * 3 * H
    p_out_t = p_out + row0 * T * H
    p_gates_t = p_gates + row0 * T * 4 * H
    p_reset_t = p_reset + row0 * T
    o_xg = o_r[:, None] * (T * 3 * H) + o_h[None, :]
    o_out = o_r[:, None] * (T * H) + o_h[None, :]
    o_gates = o_r[:, None] * (T * 4 * H) + o_h[None, :]
    o_reset = o_r * T
    for _ in range(T):
        b_reset = tl.load(p_reset_t + o_reset, mask=m_n, other=0)
        b_h = tl.where(b_reset[:, None] != 0, 0.0, b_h)
        b_hr = tl.dot(b_h, b_wr, input_precision=PRECISION)
        b_hz = tl.dot(b_h, b_wz, input_precision=PRECISION)
        b_hn = tl.dot(b_h, b_wn, input_precision=PRECISION)
        if HAS_BIAS:
            b_hr += b_br
            b_hz += b_bz
            b_hn += b_bn
        b_xr = tl.load(p_xg_t + o_xg, mask=m_nh, other=0.0)
        b_xz = tl.load(p_xg_t + H + o_xg, mask=m_nh, other=0.0)
        b_xn = tl.load(p_xg_t + 2 * H + o_xg, mask=m_nh, other=0.0)
        b_r = tl.sigmoid(b_xr + b_hr)
        b_z = tl.sigmoid(b_xz + b_hz)
        b_n = _tanh(b_xn + b_r * b_hn)
        b_h = (1.0 - b_z) * b_n + b_z * b_h
        tl.store(p_out_t + o_out, b_h, mask=m_nh)
        if STORE_GATES:
            tl.store(p_gates_t + o_gates, b_r, mask=m_nh)
            tl.store(p_gates_t + H + o_gates, b_z, mask=m_nh)
            tl.store(p_gates_t + 2 * H + o_gates, b_n, mask=m_nh)
            tl.store(p_gates_t + 3 * H + o_gates, b_hn, mask=m_nh)
        p_xg_t += 3 * H
        p_out_t += H
        p_gates_t += 4 * H
        p_reset_t += 1


@triton.jit
def _gru_bwd_kernel(
    p_dout,
    p_gates,
    p_hprev,
    p_reset,
    p_w,
    p_dxg,
    p_dhn,
    p_dh0,
    N,
    T,
    H,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """The forward's rows in reverse, ``t = T-1..0``, the state's gradient ``dh`` carried. Reads
    ``dout [N, T, H]``, the forward's ``gates [N, T, 4H]``, ``hprev [N, T, H]`` (the state
    entering each step, zero at resets) and ``reset``; writes ``dxg [N, T, 3H]`` (the gradients
    of the three gate pre-activations, which are those of ``xg``), ``dhn [N, T, H]`` (that of
    ``W_hn h + b_hn``) and ``dh0 [N, H]``. All contiguous."""
    # offsets as in the forward: a 64-bit scalar for the block, 32-bit tiles from it
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_N
    o_r = tl.arange(0, BLOCK_N)
    o_h = tl.arange(0, BLOCK_H)
    m_n = row0 + o_r < N
    m_h = o_h < H
    m_nh = m_n[:, None] & m_h[None, :]
    b_wr, b_wz, b_wn = _load_w_tiles(p_w, o_h, H, False)
    last = T - 1
    # scalar pointers to step t = T-1 of the block's first row, moved back each step
    p_dout_t = p_dout + row0 * T * H + last * H
    p_hprev_t = p_hprev + row0 * T * H + last * H
    p_dhn_t = p_dhn + row0 * T * H + last * H
    p_gates_t = p_gates + row0 * T * 4 * H + last * 4 * H
    p_dxg_t = p_dxg + row0 * T * 3 * H + last * 3 * H
    p_reset_t = p_reset + row0 * T + last
    o_h1 = o_r[:, None] * (T * H) + o_h[None, :]
    o_gates = o_r[:, None] * (T * 4 * H) + o_h[None, :]
    o_dxg = o_r[:, None] * (T * 3 * H) + o_h[None, :]
    o_reset = o_r * T
    # [BLOCK_N, BLOCK_H]: the gradient of the state after the current step
    b_dh = tl.zeros([BLOCK_N, BLOCK_H], dtype=tl.float32)
    for _ in range(T):
        b_dh += tl.load(p_dout_t + o_h1, mask=m_nh, other=0.0)
        b_r = tl.load(p_gates_t + o_gates, mask=m_nh, other=0.0)
        b_z = tl.load(p_gates_t + H + o_gates, mask=m_nh, other=0.0)
        b_n = tl.load(p_gates_t + 2 * H + o_gates, mask=m_nh, other=0.0)
        b_hn = tl.load(p_gates_t + 3 * H + o_gates, mask=m_nh, other=0.0)
        b_hprev = tl.load(p_hprev_t + o_h1, mask=m_nh, other=0.0)
        # through h = (1 - z) n + z h_prev, n = tanh(xn + r hn), r and z sigmoids
        b_dn_pre = b_dh * (1.0 - b_z) * (1.0 - b_n * b_n)
        b_dz_pre = b_dh * (b_hprev - b_n) * b_z * (1.0 - b_z)
        b_dhn = b_dn_pre * b_r
        b_dr_pre = b_dn_pre * b_hn * b_r * (1.0 - b_r)
        tl.store(p_dxg_t + o_dxg, b_dr_pre, mask=m_nh)
        tl.store(p_dxg_t + H + o_dxg, b_dz_pre, mask=m_nh)
        tl.store(p_dxg_t + 2 * H + o_dxg, b_dn_pre, mask=m_nh)
        tl.store(p_dhn_t + o_h1, b_dhn, mask=m_nh)
        b_dh = b_dh * b_z
        b_dh += tl.dot(b_dr_pre, b_wr, input_precision=PRECISION)
        b_dh += tl.dot(b_dz_pre, b_wz, input_precision=PRECISION)
        b_dh += tl.dot(b_dhn, b_wn, input_precision=PRECISION)
        # the state entering a reset step is a constant zero: no gradient crosses it
        b_reset = tl.load(p_reset_t + o_reset, mask=m_n, other=0)
        b_dh = tl.where(b_reset[:, None] != 0, 0.0, b_dh)
        p_dout_t -= H
        p_hprev_t -= H
        p_dhn_t -= H
        p_gates_t -= 4 * H
        p_dxg_t -= 3 * H
        p_reset_t -= 1
    tl.store(p_dh0 + row0 * H + o_r[:, None] * H + o_h[None, :], b_dh, mask=m_nh)


def _block_h(hidden_size: int) -> int:
    # tl.dot needs every dimension >= 16
    return max(16, next_pow2(hidden_size))


class _GruRecurrenceFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xg, h0, reset_u8, w_hh, b_hh, precision):
        batch, steps, gates3 = xg.shape
        hidden = gates3 // 3
        out = xg.new_empty(batch, steps, hidden)
        store_gates = any(ctx.needs_input_grad[i] for i in (0, 1, 3, 4))
        # [N, T, 4H]: r, z, n, hn for the backward
        gates = xg.new_empty(batch, steps, 4 * hidden) if store_gates else out
        block_n = GRU_CONFIG["block_n"]
        _gru_fwd_kernel[(triton.cdiv(batch, block_n),)](
            xg,
            h0,
            reset_u8,
            w_hh,
            w_hh if b_hh is None else b_hh,
            out,
            gates,
            batch,
            steps,
            hidden,
            HAS_BIAS=b_hh is not None,
            STORE_GATES=store_gates,
            PRECISION=precision,
            BLOCK_N=block_n,
            BLOCK_H=_block_h(hidden),
            num_warps=GRU_CONFIG["fwd_warps"],
        )
        ctx.save_for_backward(h0, reset_u8, w_hh, out, gates)
        ctx.has_bias = b_hh is not None
        ctx.precision = precision
        return out

    @staticmethod
    def backward(ctx, dout):
        h0, reset_u8, w_hh, out, gates = ctx.saved_tensors
        batch, steps, hidden = out.shape
        reset = reset_u8.view(torch.bool)
        # [N, T, H]: the state entering each step
        h_prev = torch.where(reset[:, :, None], 0.0, torch.cat([h0[:, None], out[:, :-1]], 1))
        dxg = out.new_empty(batch, steps, 3 * hidden)
        dhn = out.new_empty(batch, steps, hidden)
        dh0 = out.new_empty(batch, hidden)
        block_n = GRU_CONFIG["block_n"]
        _gru_bwd_kernel[(triton.cdiv(batch, block_n),)](
            dout.contiguous(),
            gates,
            h_prev,
            reset_u8,
            w_hh,
            dxg,
            dhn,
            dh0,
            batch,
            steps,
            hidden,
            PRECISION=ctx.precision,
            BLOCK_N=block_n,
            BLOCK_H=_block_h(hidden),
            num_warps=GRU_CONFIG["bwd_warps"],
            num_stages=GRU_CONFIG["bwd_stages"],
        )
        dw_hh = db_hh = None
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            # [N*T, 2H] and [N*T, H]: the gradients of W_hr h + b_hr, W_hz h + b_hz, W_hn h + b_hn
            d_rz = dxg.view(-1, 3 * hidden)[:, : 2 * hidden]
            d_n = dhn.view(-1, hidden)
            if ctx.needs_input_grad[3]:
                h_flat = h_prev.view(-1, hidden)
                dw_hh = torch.cat([d_rz.t() @ h_flat, d_n.t() @ h_flat])
            if ctx.has_bias and ctx.needs_input_grad[4]:
                db_hh = torch.cat([d_rz.sum(0), d_n.sum(0)])
        return dxg, dh0, None, dw_hh, db_hh, None


def gru_recurrence(
    xg: torch.Tensor,
    h0: torch.Tensor,
    reset: torch.Tensor,
    w_hh: torch.Tensor,
    b_hh: torch.Tensor | None = None,
    precision: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``nn.GRU``'s recurrence over ``T`` steps with the state zeroed at resets, fused.

    Args:
        xg: ``[N, T, 3H]`` float32, the input projections ``x @ W_ih^T + b_ih``, gates in
            ``nn.GRU``'s order (r, z, n).
        h0: ``[N, H]`` float32, the state entering ``t = 0``.
        reset: ``[N, T]`` bool; True at ``t`` zeroes the state entering ``t``.
        w_hh: ``[3H, H]`` float32, ``nn.GRU.weight_hh_l*``.
        b_hh: ``[3H]`` float32 ``nn.GRU.bias_hh_l*``, or None.
        precision: ``"ieee"`` or ``"tf32"`` for the hidden-to-hidden products; None: ``"tf32"``
            on CUDA when ``torch.backends.cudnn.allow_tf32`` is on (cuDNN's GRU rounding), else
            ``"ieee"``.

    Returns:
        ``(out [N, T, H], final [N, H])``: the state after every step, and after ``t = T-1``.
        Differentiable in ``xg``, ``h0``, ``w_hh`` and ``b_hh``.

    Matches :func:`mamba_rl.kernels.gru_naive.gru_recurrence_ref`.
    """
    if xg.dim() != 3 or min(xg.shape) == 0 or xg.shape[2] % 3 != 0:
        raise ValueError(f"xg must be [N, T, 3H] with N, T, H >= 1, got shape {tuple(xg.shape)}")
    batch, steps, gates3 = xg.shape
    hidden = gates3 // 3
    if GRU_CONFIG["block_n"] * steps * 4 * hidden >= 2**31:
        raise ValueError(f"T = xg.shape[1] must be < 2^31 / (4H * {GRU_CONFIG['block_n']}), got {steps}")
    if hidden > MAX_HIDDEN:
        raise ValueError(f"the hidden size H = xg.shape[2] / 3 must be <= {MAX_HIDDEN}, got {hidden}")
    if tuple(h0.shape) != (batch, hidden):
        raise ValueError(f"h0 must be [N, H] = {(batch, hidden)}, got shape {tuple(h0.shape)}")
    if tuple(reset.shape) != (batch, steps):
        raise ValueError(f"reset must be [N, T] = {(batch, steps)}, got shape {tuple(reset.shape)}")
    if tuple(w_hh.shape) != (3 * hidden, hidden):
        raise ValueError(f"w_hh must be [3H, H] = {(3 * hidden, hidden)}, got shape {tuple(w_hh.shape)}")
    if b_hh is not None and tuple(b_hh.shape) != (3 * hidden,):
        raise ValueError(f"b_hh must be [3H] = {(3 * hidden,)}, got shape {tuple(b_hh.shape)}")
    for name, t in (("xg", xg), ("h0", h0), ("w_hh", w_hh), ("b_hh", b_hh)):
        if t is not None and t.dtype != torch.float32:
            raise ValueError(f"{name} must be float32, got {t.dtype}")
    if precision is None:
        precision = "tf32" if xg.is_cuda and torch.backends.cudnn.allow_tf32 else "ieee"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} or None, got {precision!r}")
    reset_u8 = reset.to(torch.bool).contiguous().view(torch.uint8)
    out = _GruRecurrenceFn.apply(
        xg.contiguous(),
        h0.contiguous(),
        reset_u8,
        w_hh.contiguous(),
        None if b_hh is None else b_hh.contiguous(),
        precision,
    )
    return out, out[:, -1]


def gru_replay_triton(
    gru: nn.GRU, x: torch.Tensor, hidden: torch.Tensor, reset: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``gru_replay(method="triton")``: every layer's recurrence by :func:`gru_recurrence`.

    Args:
        gru: a unidirectional ``nn.GRU`` of float32 weights.
        x: ``[B, T, F]`` inputs.
        hidden: ``[B, num_layers, H]``, the state entering ``t = 0``.
        reset: ``[B, T]`` bool; True at ``t`` zeroes the state entering ``t``.

    Returns:
        ``(out [B, T, H], final [B, num_layers, H])`` as
        :func:`mamba_rl.policies.gru_replay.gru_replay`.
    """
    layer_in = x
    finals = []
    for layer in range(gru.num_layers):
        w_ih, w_hh = getattr(gru, f"weight_ih_l{layer}"), getattr(gru, f"weight_hh_l{layer}")
        b_ih, b_hh = getattr(gru, f"bias_ih_l{layer}", None), getattr(gru, f"bias_hh_l{layer}", None)
        # [B, T, 3H]: every step's input projection in one product
        gates_in = nn.functional.linear(layer_in, w_ih, b_ih)
        layer_in, final = gru_recurrence(gates_in, hidden[:, layer], reset, w_hh, b_hh)
        finals.append(final)
        if layer < gru.num_layers - 1 and gru.dropout and gru.training:
            layer_in = nn.functional.dropout(layer_in, gru.dropout, training=True)
    return layer_in, torch.stack(finals, 1)
