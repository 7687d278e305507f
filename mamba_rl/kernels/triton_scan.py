"""Fused Triton selective scan (Mamba-1) with initial state, resets and final state, forward and backward.

Twin of :func:`mamba_rl.kernels.naive.selective_scan_ref` (same signature, same semantics). This
module holds the autograd function and the host side (tensor layouts, scratch buffers, launch
grids); the kernels live in :mod:`~mamba_rl.kernels.triton_scan_fwd`,
:mod:`~mamba_rl.kernels.triton_scan_bwd` and the device code they share in
:mod:`~mamba_rl.kernels.triton_scan_common`; the restart states (``reset_state``) in
:mod:`~mamba_rl.kernels.triton_scan_restart`.

Layout. One program is one warp: a batch row and 32 channels. A thread owns one channel and all of
its ``d_state`` states (a ``[N, 32]`` tile, states in registers, channels across lanes), so the
recurrence ``h_t = a_t h_{t-1} + x_t`` (``a_t = exp(delta_t A)``, zero at a reset) runs step by
step inside the thread: no shuffles, and ``y_t = C_t . h_t`` is a sum inside the thread. Time is
walked in chunks of ``BLOCK_T`` steps that are unrolled, so the loads of a chunk issue together.

Memory. The forward keeps the fp32 state at every ``ck_steps``-th step (``[b, segments + 1, N,
d]``): ``d_state / ck_steps`` of ``b * d * L`` floats, the only tensor saved besides the inputs.
The per-step states ``[b, d, n, L]`` are never stored. The backward's scratch of chunk states (one
segment per warp) is stored evict-last in L2 and the gradients evict-first, so that the scratch is
read back from L2 rather than from DRAM.

Backward, one segment at a time from the end: (1) rebuild the states entering each chunk of the
segment from its checkpoint (a ``[b, ck_steps / 2, N, d]`` scratch); (2) walk the chunks
backwards: rerun the chunk forward keeping ``h_{t-1}`` in registers, then run the adjoint ``g_t =
C_t dy'_t + a_{t+1} g_{t+1}`` backwards through it. The gradients of ``B`` and ``C`` are sums over
channels, i.e. over the warp's lanes; each warp writes its sums for every step into a partial
buffer ``[d / BD, b, L, 2 N]`` that is summed afterwards in a fixed order, so the gradients are
deterministic (no atomics). Those lane sums are a reduce-scatter in inline PTX
(:func:`~mamba_rl.kernels.triton_scan_bwd.lane_sum_asm`: 31 shuffles per step at ``d_state`` 16
where a butterfly per value takes 160); a chunk is two steps, whose first step alone is rerun (the
second's state is the adjoint's ``a_t h_{t-1} + dt_t u_t B_t``), so each state-step costs two
``exp2`` in the backward.

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
its scratch). The forward's local pass and the backward's rebuild load each chunk's deltas a
chunk ahead. ``exp2`` is ``ex2.approx.ftz``, and softplus and sigmoid are built from
``ex2.approx`` / ``rcp.approx`` and a series for ``log1p`` (:mod:`~mamba_rl.kernels.triton_math`:
~15 instructions instead of ~40, within 5e-6 relative). Under ``TRITON_INTERPRET=1`` (no inline
PTX) the prefetches are skipped, ``exp2`` is ``tl.exp2``, softplus and sigmoid the accurate ones,
and the lane sums are ``tl.sum``.

Launches. The compiled kernels are launched directly after their first call
(:class:`~mamba_rl.kernels.triton_launch.DirectLauncher`): the JIT's binding of ~60 arguments is
most of the host's time per launch, and at T=1024 the host's time per forward+backward is about
the GPU's.

Why each choice below (tile sizes, register caps, ranges) and what the alternatives measured:
``benchmarks/NOTES_scan.md``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton

from mamba_rl.kernels.triton_host import empty_same_order, next_pow2
from mamba_rl.kernels.triton_launch import DirectLauncher
from mamba_rl.kernels.triton_launch import interpreted as _interpreted
from mamba_rl.kernels.triton_math import LOG2E
from mamba_rl.kernels.triton_scan_bwd import _scan_bwd_kernel, _scan_bwd_local_kernel, lane_sum_asm
from mamba_rl.kernels.triton_scan_common import _scan_carry_kernel
from mamba_rl.kernels.triton_scan_fwd import _scan_fwd_kernel, _scan_fwd_local_kernel
from mamba_rl.kernels.triton_scan_restart import add_restart_states

__all__ = ["selective_scan_triton", "SCAN_CONFIG"]

_FWD_LOCAL, _FWD, _BWD_LOCAL, _BWD, _CARRY = (
    DirectLauncher(k)
    for k in (_scan_fwd_local_kernel, _scan_fwd_kernel, _scan_bwd_local_kernel, _scan_bwd_kernel, _scan_carry_kernel)
)

# How the work is cut, set by hand from H100 sweeps (no autotuning: the kernels write into scratch
# buffers). Tests shrink or change them to reach every code path at small sizes.
# - ck_steps: steps per checkpoint segment; the forward saves d_state / ck_steps of b * d * L fp32
#   floats and the backward's scratch is ck_steps / 2 chunk states per warp (16: the scratch
#   stays in L2).
# - fwd_block_t: steps per forward chunk, unrolled (a divisor of ck_steps, else 2).
# - fwd_ranges / bwd_ranges: time ranges run in parallel: 4 forward ranges of 128-register
#   programs and 2 backward ranges of 255-register ones fill the 132 SMs of an H100 with B=64,
#   d=256 (more backward ranges need a second wave).
# - local_ranges: about how many pieces the sequence is cut into to chain what enters each range.
SCAN_CONFIG = {
    "ck_steps": 16,
    "fwd_block_t": 4,
    "fwd_ranges": 4,
    "bwd_ranges": 2,
    "local_ranges": 64,
}
# steps per backward chunk (the first is rerun from the chunk's entering state, the second follows)
BWD_BLOCK_T = 2
# steps per chunk of the local passes (at most 4: their deltas are loaded a chunk ahead)
LOCAL_BLOCK_T = 4
# channels per program: one warp, a channel per lane, so a channel's states stay in one thread
BLOCK_D = 32
# ptxas register caps: the forward runs 4 ranges at 128 registers; the backward's adjoint needs
# every register it can get (uncapped: 255)
FWD_MAXNREG = 128


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
    time-major rows are read one lane per row, and more warps in flight thrash L1 there."""
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


def _block_d(d: int) -> int:
    """Channels per program (one warp): ``BLOCK_D``, fewer when ``d`` is smaller."""
    return min(BLOCK_D, max(next_pow2(d), 1))


def _fast_math() -> bool:
    """Whether softplus and sigmoid use approximate MUFU ops (inline PTX: not in the interpreter)."""
    return not _interpreted()


def _lane_sum_asm(block_d: int, N: int):
    """The backward's dB / dC lane sums as a reduce-scatter in inline PTX (a full warp, a channel
    per lane, compiled code), else None: ``tl.sum`` over the lanes."""
    return lane_sum_asm(N) if block_d == 32 and not _interpreted() else None


def _maxnreg(value: int | None) -> dict:
    """``{"maxnreg": value}`` (a cap on ptxas's registers) for compiled kernels, else nothing."""
    return {} if value is None or _interpreted() else {"maxnreg": value}


def _shared_args(u, delta, A_log2e, B, C, D, z, delta_bias, reset_u8, delta_softplus):
    """What the forward's and the backward's kernels share: their first nine arguments (``u,
    delta, A_log2e, B, C, D, z, delta_bias, reset``; ``u`` stands in for a missing one, unread),
    the strides of ``u, delta, z, B, C``, the resets' ``(b, t)`` strides and the constexprs
    (states and channels per program, and the flags)."""
    N, d = A_log2e.shape
    block_d = _block_d(d)
    z_ = u if z is None else z
    r_, r_strides = (u, (0, 0)) if reset_u8 is None else (reset_u8, reset_u8.stride())
    args = (u, delta, A_log2e, B, C, u if D is None else D, z_, u if delta_bias is None else delta_bias, r_)
    strides = (u.stride(), delta.stride(), z_.stride(), B.stride(), C.stride())
    flags = dict(
        N=N,
        BD=block_d,
        EVEN_D=d % block_d == 0,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus),
        HAS_RESET=reset_u8 is not None,
        EVEN_N=B.shape[1] == N,
        PTX=not _interpreted(),
        FAST=_fast_math(),
    )
    return args, strides, r_strides, flags


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
    _CARRY[(triton.cdiv(nd, block), b)](loc[0], loc[1], x, nd, n_x, r_first, REVERSE=reverse, BLOCK=block, num_warps=4)


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
        A_log2e = torch.empty(N, d, device=u.device, dtype=torch.float32)
        torch.mul(A.t(), LOG2E, out=A_log2e[:n])
        if n < N:
            A_log2e[n:].zero_()
        reset_u8 = None if reset is None else reset.contiguous().view(torch.uint8)
        fwd_block_t = min(SCAN_CONFIG["fwd_block_t"], next_pow2(max(L, 1)))
        # checkpoints are taken at multiples of ck_steps, a multiple of the backward's chunk and of
        # the forward's
        ck_steps = BWD_BLOCK_T * triton.cdiv(SCAN_CONFIG["ck_steps"], BWD_BLOCK_T)
        if ck_steps % fwd_block_t:
            fwd_block_t = BWD_BLOCK_T
        n_chunks_fwd = triton.cdiv(L, fwd_block_t)
        n_seg = triton.cdiv(L, ck_steps)

        y = empty_same_order(u)
        ranges, range_segs, piece_segs, n_pieces, pieces_per_range = _time_ranges(
            n_seg, _ranges_for("fwd_ranges", u, delta)
        )
        # [b, n_seg + 1, N, d]: the states entering every segment, h0 first
        h_ckpt = torch.empty(b, max(n_seg, 1) + 1, N, d, device=u.device, dtype=torch.float32)
        _put_state(h_ckpt[:, 0], h0, n)
        # h_in[:, k]: the state entering local range k (h0 first; the later rows are written by the
        # chain, rows past n are never read)
        h_in = torch.empty(b, n_pieces + 1, N, d, device=u.device, dtype=torch.float32)
        h_in[:, 0].copy_(h_ckpt[:, 0])
        args, strides, r_strides, flags = _shared_args(
            u, delta, A_log2e, B, C, D, z, delta_bias, reset_u8, delta_softplus
        )
        _, _, _, _, _, _, z_, bias_, r_ = args
        groups = triton.cdiv(d, flags["BD"])
        if L > 0 and ranges > 1:
            # every range but the last alone (in parallel), then chained: the state entering each
            # range, so that the ranges run in parallel below
            n_loc = (ranges - 1) * pieces_per_range
            loc = torch.empty(2, b, n_loc, N, d, device=u.device, dtype=torch.float32)
            _FWD_LOCAL[(groups, b, n_loc)](
                u,
                delta,
                A_log2e,
                B,
                bias_,
                r_,
                loc[0],
                loc[1],
                L,
                d,
                n,
                piece_segs * ck_steps,
                u.stride(),
                delta.stride(),
                B.stride(),
                r_strides,
                BLOCK_T=LOCAL_BLOCK_T,
                **flags,
                num_warps=1,
            )
            _chain_ranges(loc, h_in, n_pieces, n_loc, reverse=False)
        # [b, ranges, N, d]: the state each range ends in
        h_end = torch.empty(b, ranges, N, d, device=u.device, dtype=torch.float32)
        if L > 0:
            _FWD[(groups, b, ranges)](
                *args,
                y,
                h_ckpt,
                h_in,
                h_end,
                L,
                d,
                n,
                n_chunks_fwd,
                range_segs,
                pieces_per_range,
                n_pieces,
                *strides,
                y.stride(),
                r_strides,
                BLOCK_T=fwd_block_t,
                SEG_CHUNKS=ck_steps // fwd_block_t,
                HAS_D=D is not None,
                HAS_Z=z is not None,
                **flags,
                num_warps=1,
                **_maxnreg(FWD_MAXNREG),
            )
        else:
            h_end[:, -1].copy_(h_in[:, 0])
        # a [b, d, n] view of h_end (channels innermost)
        h_last = h_end[:, -1, :n].transpose(1, 2)

        ctx.save_for_backward(u, delta, A_log2e, B, C, D, z, delta_bias, reset_u8, h_ckpt)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.seg_chunks = ck_steps // BWD_BLOCK_T
        ctx.n = n
        ctx.A_dtype = A.dtype
        ctx.has_h0 = h0 is not None
        ctx.h0_dtype = None if h0 is None else h0.dtype
        return y, h_last

    @staticmethod
    def backward(ctx, dy, dh_last):
        u, delta, A_log2e, B, C, D, z, delta_bias, reset_u8, h_ckpt = ctx.saved_tensors
        b, d, L = u.shape
        N, n = A_log2e.shape[0], ctx.n
        if dy is None:
            dy = torch.zeros_like(u)
        dy = _unit_stride(dy)
        args, strides, r_strides, flags = _shared_args(
            u, delta, A_log2e, B, C, D, z, delta_bias, reset_u8, ctx.delta_softplus
        )
        _, _, _, _, _, _, z_, bias_, r_ = args
        flags["HAS_Z"] = z is not None
        # [b, N, d]: dh0 out (written by the kernel's first range; rows past n are not read)
        dh = torch.empty(b, N, d, device=u.device, dtype=torch.float32)
        du = empty_same_order(u)
        ddelta = empty_same_order(delta)
        dz = None if z is None else empty_same_order(z)
        groups = triton.cdiv(d, flags["BD"])
        seg_chunks = ctx.seg_chunks
        n_chunks = triton.cdiv(L, BWD_BLOCK_T)
        seg_steps = BWD_BLOCK_T * seg_chunks
        n_seg = triton.cdiv(n_chunks, seg_chunks)
        ranges, range_segs, piece_segs, n_pieces, pieces_per_range = _time_ranges(
            n_seg, _ranges_for("bwd_ranges", u, delta)
        )
        # q_in[:, k]: the gradient reaching the state entering local range k; q_in[:, -1] = dh_last
        # (the rows at range ends are written by the chain, the others and rows past n are not read)
        q_in = torch.empty(b, n_pieces + 1, N, d, device=u.device, dtype=torch.float32)
        _put_state(q_in[:, n_pieces], dh_last, n)
        # every (group, b, t) row is written once
        dBC = torch.empty(groups, b, L, 2 * N, device=u.device, dtype=torch.float32)
        # [ranges * b, N + 2, d]: each range's sums of the dA terms (N rows), dD and d(delta_bias)
        part = torch.empty(ranges * b, N + 2, d, device=u.device, dtype=torch.float32)
        # [ranges, b, seg_chunks, N, d]: the states entering each chunk of the segment being walked
        h_chunks = torch.empty(ranges, b, seg_chunks, N, d, device=u.device, dtype=torch.float32)
        dz_ = du if dz is None else dz
        if L > 0 and ranges > 1:
            # the adjoint of every range but the first alone (in parallel), then chained: the
            # gradient entering each range from the right, so the ranges run in parallel below
            n_loc = n_pieces - pieces_per_range
            loc = torch.empty(2, b, n_loc, N, d, device=u.device, dtype=torch.float32)
            _BWD_LOCAL[(groups, b, n_loc)](
                delta,
                A_log2e,
                C,
                z_,
                bias_,
                r_,
                dy,
                loc[0],
                loc[1],
                L,
                d,
                n,
                pieces_per_range,
                piece_segs * seg_steps,
                delta.stride(),
                z_.stride(),
                C.stride(),
                dy.stride(),
                r_strides,
                BLOCK_T=LOCAL_BLOCK_T,
                **flags,
                num_warps=1,
            )
            _chain_ranges(loc, q_in, n_pieces, pieces_per_range, reverse=True)
        if L > 0:
            _BWD[(groups, b, ranges)](
                *args,
                h_ckpt,
                h_chunks,
                dy,
                q_in,
                du,
                ddelta,
                dz_,
                dBC,
                part,
                dh,
                L,
                d,
                n,
                n_chunks,
                range_segs,
                pieces_per_range,
                n_pieces,
                *strides,
                dy.stride(),
                du.stride(),
                ddelta.stride(),
                dz_.stride(),
                r_strides,
                SEG_CHUNKS=seg_chunks,
                HAS_D=D is not None,
                **flags,
                LANE_SUM_ASM=_lane_sum_asm(flags["BD"], N),
                num_warps=1,
            )
            dBC = dBC[0] if groups == 1 else dBC.sum(0)
            part = part.sum(0)
        else:
            dh.copy_(q_in[:, n_pieces])
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
            dBC[..., N : N + n].transpose(1, 2).to(C.dtype),
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
    return add_restart_states(y, h_last, delta, A, C, z, delta_bias, delta_softplus, reset, reset_state)
