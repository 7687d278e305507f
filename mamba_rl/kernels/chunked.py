"""A vectorised PyTorch selective scan for the CPU: a two-level scan over chunks of the sequence.

The reference (:func:`~mamba_rl.kernels.naive.selective_scan_ref`) runs one Python iteration per
time step, so on a CPU its time is the fixed cost of ``~25 L`` small tensor ops and autograd
nodes (forward and backward) on ``[b, d, n]`` states. Here the sequence is cut into chunks of
``Q`` steps and the recurrence ``h_t = a_t h'_{t-1} + x_t`` (``a_t = exp(delta_t A)``,
``x_t = delta_t u_t B_t``) is computed in three vectorised stages:

1. local states: the recurrence inside every chunk at once, each chunk starting from zero
   (``Q`` Python iterations, each over all chunks);
2. chunk carries: the state entering each chunk, from the previous chunk's local end state and
   its total decay (one iteration per chunk, over ``[b, n, d]``);
3. every state: the local state plus the entering state times the decay accumulated since the
   chunk start, the running product of ``a`` over the chunk: products of decays in ``(0, 1]``
   for ``A <= 0``, which underflow to zero and never overflow (no exponential of a positive
   number anywhere).

Stages 2 and 3 trade ``Q + S / Q`` Python iterations per segment for about five more passes
over its tensors. Where a step's state is large (``b * d * n`` from :data:`ONE_CHUNK_ELEMENTS`,
e.g. a batch of 8 trunk rows of ``d_inner`` 128, ``d_state`` 16) those passes cost more than
the iterations they save, and a segment is one chunk: stage 1 starts from the entering state
and is the whole scan, forward and backward.

The gradient is the same two-level scan run backwards on the state gradient
``g_t = C_t dy_t + a_{t+1} g_{t+1}``, written by hand (:class:`_ChunkScan`), so that autograd
keeps two full-size tensors per segment instead of a dozen. The chunks are grouped in segments
of a few megabytes scanned one after the other (the state of one entering the next): the
``[S, b, n, d]`` tensors of a segment stay in the CPU's caches, where the tensors of a whole
long sequence would be fresh pages from the OS at every allocation. States are laid out
``[n, d]``, ``d`` innermost: the products with ``B, C`` over ``n`` are then ``[1, n] x [n, d]``
matrix products and the sums over steps run along contiguous rows (with ``[d, n]`` states the
same products take 3-5x longer on a CPU).

A reset cuts the recurrence where it happens: the restart state enters as an extra input at the
reset step (``x_t += a_t * reset_state[k]``), and every quantity that would carry a state (or a
state gradient) across the reset is replaced by zero through a select before it is multiplied,
so that a non-finite value before a reset reaches nothing after it, neither the outputs nor the
gradients of later steps.

The decay of a Mamba-1 scan is per ``(d, n)``, so the fully closed form inside a chunk (the
``[Q, Q]`` matrix of decays between every pair of steps, as Mamba-2's SSD uses) would be a
``[b, d, n, Q, Q]`` tensor per chunk: ``Q`` times the work of stage 1, which does the same in
``Q`` vectorised steps with ``O(b d n L)`` work.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from mamba_rl.kernels import naive
from mamba_rl.kernels.naive import _compute_dtype, _discretize_delta, _skip_and_gate, selective_scan_ref

__all__ = ["selective_scan_chunked", "causal_conv1d_chunked", "default_sizes"]


SEGMENT_ELEMENTS = 1 << 18
"""Elements of one segment's ``[S, b, n, d]`` tensors (1 MB in float32), so that they stay in the
CPU's caches between the passes over them, and that glibc's malloc serves them from memory the
process already holds: a tensor of a few megabytes and more is often fresh pages from the OS,
whose page faults cost more than the arithmetic (1 thread, the trunk's scan at ``[8, 128, 16]``,
T=64: 2 MB segments fault ~1,900 pages per fwd+bwd and take 20% longer than 1 MB ones, which
fault none; at T=1024 the two take the same time)."""

ONE_CHUNK_ELEMENTS = 1 << 11
"""State elements per step (``b * d * n``) from which a segment is one chunk: the loop over its
steps then costs less than the extra passes of stages 2 and 3 (1 thread, T=1024, ``S = 2^19 / (b d n)``,
fwd+bwd: one chunk 20% faster at ``b d n = 4096``, even at 2048, 15% slower at 1024 and 2x
slower at 256 than ``Q = sqrt(S)``)."""


_LOG2_E = math.log2(math.e)


def default_sizes(batch: int, d: int, n: int, seqlen: int) -> tuple[int, int]:
    """``(chunk_size Q, segment_size S)``: ``S`` steps of ``[b, d, n]`` fill :data:`SEGMENT_ELEMENTS`;
    ``Q = S`` (one chunk) from :data:`ONE_CHUNK_ELEMENTS` state elements per step, below that the
    power of two at or above ``sqrt(S)``, near where the Python iterations per segment,
    ``Q + S / Q``, are fewest."""
    step = max(1, batch * d * n)
    segment = max(1, min(seqlen, SEGMENT_ELEMENTS // step))
    if step >= ONE_CHUNK_ELEMENTS:
        return segment, segment
    chunk = 1 << math.ceil(math.log2(math.sqrt(segment)))
    return chunk, segment


def _to_chunks(t: torch.Tensor, num_chunks: int, chunk_size: int) -> torch.Tensor:
    """``[b, k, L]`` -> ``[Q, b, num_chunks, k]`` contiguous, zero-padded at the end to ``num_chunks * Q``."""
    b, k, L = t.shape
    if L < num_chunks * chunk_size:
        t = torch.cat([t, t.new_zeros(b, k, num_chunks * chunk_size - L)], dim=-1)
    return t.view(b, k, num_chunks, chunk_size).permute(3, 0, 2, 1).contiguous()


class _Resets(NamedTuple):
    """Where the resets are, in the chunked layout ``[Q, b, nc]`` (``nc`` chunks of ``Q`` steps)."""

    step: torch.Tensor
    """``[Q, b, nc, 1, 1]`` bool: an episode starts at this step (the state entering it is cut)."""
    after: torch.Tensor | None
    """``[Q, b, nc, 1, 1]`` bool: at or after the chunk's first reset (its entering state no longer
    reaches); None for a segment that is one chunk."""
    cols: list[bool]
    """Per step of a chunk: some chunk has a reset there (the others skip the select)."""
    chunks: list[bool]
    """Per chunk: it holds a reset somewhere."""
    index: tuple[torch.Tensor, ...]
    """``(q, b, chunk)`` of every reset step."""
    starts: list[bool]
    """Per chunk: some row has a reset at its first step."""

    @classmethod
    def of(cls, reset: torch.Tensor, num_chunks: int, chunk_size: int) -> _Resets:
        # [Q, b, nc]
        step = _to_chunks(reset[:, None, :], num_chunks, chunk_size)[..., 0]
        after = torch.cummax(step.to(torch.uint8), dim=0).values.bool()
        return cls(
            step[..., None, None],
            after[..., None, None],
            step.flatten(1).any(1).tolist(),
            after[-1].any(0).tolist(),
            step.nonzero(as_tuple=True),
            step[0].any(0).tolist(),
        )

    @classmethod
    def of_one_chunk(cls, step: torch.Tensor, cols: list[bool], pairs: list[tuple[int, int]]) -> _Resets:
        """The resets of a segment that is one chunk, from what the whole sequence's
        ``reset`` gave once: ``step`` ``[S, b]`` (a view), ``cols`` per step, ``pairs`` the
        ``(q, b)`` of every reset step. A segment's first reset cuts everything before it, so
        ``after`` (which only stages 2 and 3 read) is not made."""
        q, rows = torch.tensor(pairs, dtype=torch.long, device=step.device).unbind(1)
        return cls(step[:, :, None, None, None], None, cols, [True], (q, rows, torch.zeros_like(q)), [cols[0]])


class _Workspace:
    """Segment-sized buffers that the backwards of one call's segments share.

    The segments' backwards run one after the other, so each can write its state gradient where
    the previous one's was: a fresh segment-sized tensor per segment is often fresh pages, as
    glibc's malloc returns the freed memory at the top of its heap to the OS (a page fault per
    4 KB, more time than the arithmetic on them)."""

    def __init__(self, numel: int) -> None:
        self.numel = numel
        self.buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor shaped as ``like``, the same memory at every call for ``name``."""
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < like.numel() or buffer.dtype != like.dtype:
            buffer = like.new_empty(max(self.numel, like.numel()))
            self.buffers[name] = buffer
        return buffer[: like.numel()].view(like.shape)


class _ChunkScan(torch.autograd.Function):
    """The scan of one segment in the chunked layout, with a hand-written backward.

    ``h_t = a_t h'_{t-1} + x_t`` with ``a_t = exp(delta_t * A)``, ``x_t = (delta_t u_t) B_t``;
    ``y_t = <h_t, C_t>``. ``h'_{t-1}`` is ``h0`` at ``t = 0`` and, at a reset step, its row of
    ``restarts`` (zero without them). Inputs: ``delta, du`` ``[Q, b, nc, d]``, ``A`` ``[n, d]``
    (transposed), ``B, C`` ``[Q, b, nc, n]``, ``h0`` ``[b, n, d]``, ``restarts`` ``[R, n, d]`` or
    None, ``resets`` a :class:`_Resets` or None, ``restart_index`` the ``(q, b, chunk)`` of each
    restart row, ``workspace`` the :class:`_Workspace` of the call's segments. Returns
    ``y [Q, b, nc, d]`` and the state after the last step ``[b, n, d]``.

    The backward runs the same two-level scan in reverse on the state gradient
    ``g_t = C_t dy_t + a'_{t+1} g_{t+1}`` (``a'`` cut at resets) and reduces the gradients of
    ``delta, du, A, B, C`` from it with matrix products; it keeps two full-size tensors (``a``
    and the states) where autograd would keep and create about a dozen.
    """

    @staticmethod
    def forward(ctx, delta, du, A, B, C, h0, restarts, resets, restart_index, workspace):
        Q, b, num_chunks = delta.shape[:3]
        # [Q, b, nc, n, d]: a = 2^(delta * A * log2(e)); exp2 takes half of exp's time on a CPU, and
        # far less where decays underflow
        a = torch.mul(delta[..., None, :], A * _LOG2_E).exp2_()
        # the inputs x, then (in place) the local states, then the states
        states = torch.mul(du[..., None, :], B[..., None])
        if restarts is not None:
            # the restart state enters as an input at its reset step: x += a * restart
            states.index_put_(restart_index, a[restart_index] * restarts, accumulate=True)
        if num_chunks == 1:
            # one chunk: h0 enters stage 1 directly, which is then the whole scan
            # [b, 1, n, d]
            entering = h0[:, None]
            start = entering if resets is None or not resets.cols[0] else entering.masked_fill(resets.step[0], 0.0)
            states[0].addcmul_(a[0], start)
        # stage 1: the recurrence inside every chunk at once, each chunk from a zero state
        for q in range(1, Q):
            prev = states[q - 1]
            if resets is not None and resets.cols[q]:
                prev = prev.masked_fill(resets.step[q], 0.0)
            states[q].addcmul_(a[q], prev)
        if num_chunks == 1:
            return _ChunkScan._finish(
                ctx, states, a, delta, du, A, B, C, entering, restarts, resets, restart_index, workspace
            )
        # stage 2: the state entering each chunk; carry[q] = a_0 * ... * a_q of the chunk, <= 1,
        # zero from the chunk's first reset on
        carry = torch.empty_like(a)
        carry[0] = a[0]
        for q in range(1, Q):
            torch.mul(carry[q - 1], a[q], out=carry[q])
        if resets is not None:
            carry.masked_fill_(resets.after, 0.0)
        h = h0
        entering = []
        for c in range(num_chunks):
            entering.append(h)
            if resets is not None and resets.chunks[c]:
                h = h.masked_fill(resets.after[-1, :, c], 0.0)
            h = torch.addcmul(states[-1, :, c], carry[-1, :, c], h)
        # [b, nc, n, d]
        entering = torch.stack(entering, dim=1)
        # stage 3: every state; a zero carry must not meet a non-finite entering state (0 * inf)
        if resets is not None and not bool(torch.isfinite(entering).all()):
            carried = carry * entering
            states += carried.masked_fill_(resets.after, 0.0)
        else:
            states.addcmul_(carry, entering)
        del carry
        return _ChunkScan._finish(
            ctx, states, a, delta, du, A, B, C, entering, restarts, resets, restart_index, workspace
        )

    @staticmethod
    def _finish(ctx, states, a, delta, du, A, B, C, entering, restarts, resets, restart_index, workspace):
        """``y`` from the states, what the backward needs saved, and the last state."""
        # [Q, b, nc, d]: per step a [1, n] x [n, d] product (bmm on [M, n, d] views)
        n, d = A.shape
        y = torch.bmm(C.reshape(-1, 1, n), states.view(-1, n, d)).view(delta.shape)
        ctx.save_for_backward(a, states, delta, du, A, B, C, entering, restarts)
        ctx.resets, ctx.restart_index, ctx.workspace = resets, restart_index, workspace
        return y, states[-1, :, -1].clone()

    @staticmethod
    def backward(ctx, dy, dh):
        a, states, delta, du, A, B, C, entering, restarts = ctx.saved_tensors
        resets, restart_index, workspace = ctx.resets, ctx.restart_index, ctx.workspace
        Q, b, num_chunks = a.shape[:3]
        # dy arrives in y's permuted layout; the outer product would inherit it
        dy = dy.contiguous()
        # [Q, b, nc, n, d]: the direct gradient of each state, then (in place) the total one
        grad = torch.mul(dy[..., None, :], C[..., None], out=workspace.take("grad", a))
        grad[-1, :, -1] += dh
        # reverse stage 1: inside every chunk, as if nothing came from later chunks; and
        # rest[q] = a'_{q+1} * ... * a'_{Q-1}, how much of the gradient at the chunk's end reaches q
        # (one chunk: the gradient at its end is dh, and stage 1 is the whole reverse scan)
        rest = None if num_chunks == 1 else workspace.take("rest", a)
        if rest is not None:
            rest[-1] = 1.0
        for q in range(Q - 2, -1, -1):
            nxt = grad[q + 1]
            if rest is not None:
                torch.mul(rest[q + 1], a[q + 1], out=rest[q])
            if resets is not None and resets.cols[q + 1]:
                nxt = nxt.masked_fill(resets.step[q + 1], 0.0)
                if rest is not None:
                    rest[q].masked_fill_(resets.step[q + 1], 0.0)
            grad[q].addcmul_(a[q + 1], nxt)
        starts_reset = [False] * num_chunks if resets is None else resets.starts
        if rest is None:
            arriving = a[0, :, 0] * grad[0, :, 0]
            if starts_reset[0]:
                arriving = arriving.masked_fill(resets.step[0, :, 0], 0.0)
        else:
            # reverse stage 2: the gradient reaching each chunk's end from the chunks after it
            arriving = torch.zeros_like(dh)
            from_later = [None] * num_chunks
            for c in range(num_chunks - 1, -1, -1):
                from_later[c] = arriving
                at_start = torch.addcmul(grad[0, :, c], rest[0, :, c], arriving)
                arriving = a[0, :, c] * at_start
                if starts_reset[c]:
                    arriving = arriving.masked_fill(resets.step[0, :, c], 0.0)
            # reverse stage 3: every state's gradient g
            grad.addcmul_(rest, torch.stack(from_later, dim=1))
            del rest
        n, d = A.shape
        # [Q, b, nc, d], [Q, b, nc, n], [Q, b, nc, n]: per step [1, n] x [n, d] and [1, d] x [d, n]
        # (a row vector on the left: MKL's batched [n, d] x [d, 1] products take ~10x longer)
        grad_du = torch.bmm(B.reshape(-1, 1, n), grad.view(-1, n, d)).view(du.shape)
        grad_B = torch.bmm(du.reshape(-1, 1, d), grad.view(-1, n, d).transpose(1, 2)).view(B.shape)
        grad_C = torch.bmm(dy.reshape(-1, 1, d), states.view(-1, n, d).transpose(1, 2)).view(C.shape)
        grad_restarts = grad_at_restart = None
        if restarts is not None:
            grad_at_restart = grad[restart_index]
            grad_restarts = a[restart_index] * grad_at_restart
        # d/d(delta * A) = g_t * h'_{t-1} * a_t, written over g (no longer needed): h'_{t-1} is the
        # previous state, the entering one at a chunk's first step, the restart row (or zero) at a reset
        grad_log_a = grad
        grad_log_a[1:].mul_(states[:-1])
        grad_log_a[0].mul_(entering)
        if resets is not None:
            grad_log_a[resets.index] = 0.0
        if restarts is not None:
            grad_log_a.index_put_(restart_index, grad_at_restart * restarts)
        grad_log_a.mul_(a)
        # [n, d] = sum over steps of delta[m, d] * grad_log_a[m, n, d]
        grad_A = torch.mul(grad_log_a, delta[..., None, :], out=workspace.take("product", a)).view(-1, n, d).sum(0)
        grad_delta = grad_log_a.mul_(A).sum(-2)
        return grad_delta, grad_du, grad_A, grad_B, grad_C, arriving, grad_restarts, None, None, None


def selective_scan_chunked(
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
    chunk_size: int | None = None,
    segment_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The selective scan of :func:`~mamba_rl.kernels.naive.selective_scan_ref`, chunked.

    Same arguments, semantics and returns (``y [b, d, L]`` in ``u``'s dtype, ``h_last [b, d, n]``
    in at least float32), plus:

    Args:
        chunk_size: steps per chunk, ``Q`` (None: :func:`default_sizes`).
        segment_size: steps per segment: the sequence is scanned one segment after the other,
            each segment's state entering the next, so that the ``[S, b, n, d]`` tensors of one
            segment stay a few megabytes (None: :func:`default_sizes`). Rounded up to a multiple
            of ``chunk_size``.

    Reads ``reset`` on the host (which chunks hold a reset).
    """
    b, d, L = u.shape
    n = A.shape[-1]
    default_q, default_s = default_sizes(b, d, n, L)
    chunk_size = default_q if chunk_size is None else chunk_size
    segment_size = default_s if segment_size is None else segment_size
    for name, value in (("chunk_size", chunk_size), ("segment_size", segment_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if L == 0:
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, reset, reset_state)
    dtype = _compute_dtype(u.dtype)
    Q = min(chunk_size, L)
    S = min(-(-segment_size // Q) * Q, -(-L // Q) * Q)
    u_c = u.to(dtype)
    # the scan keeps states as [n, d] (d innermost), see _ChunkScan
    A_c = A.to(dtype).t().contiguous()
    B_c = B.to(dtype)
    C_c = C.to(dtype)
    delta = _discretize_delta(delta, delta_bias, delta_softplus, dtype)
    du = delta * u_c
    if reset is not None and not bool(reset.any()):
        reset = None
    restart_times = None
    if reset is not None and reset_state is not None and reset_state.shape[0] > 0:
        reset_state = reset_state.to(dtype).transpose(1, 2)
        # [R]: the time of each restart row ([b, L] row-major order, which a segment keeps)
        restart_times = reset.nonzero(as_tuple=True)[1]
    # [b, n, d]
    h = u_c.new_zeros(b, n, d) if h0 is None else h0.to(dtype).transpose(1, 2).contiguous()
    # one chunk per segment: every segment's chunked layout [S, b, 1, k] is a slice of the
    # time-major [L, b, k], made once for the whole sequence
    one_chunk = Q == S
    # split, not a slice per segment: the gradient of each slice would be a zero-filled [b, d, L]
    if one_chunk:
        segments = zip(*(t.permute(2, 0, 1).contiguous().unsqueeze(2).split(S) for t in (delta, du, B_c, C_c)))
    else:
        segments = zip(*(t.split(S, dim=-1) for t in (delta, du, B_c, C_c)))
    if one_chunk and reset is not None:
        # [L, b]; which steps hold a reset and the (t, b) of each, read on the host once
        reset_t = reset.t()
        reset_cols = reset_t.any(1).tolist()
        reset_pairs = reset_t.nonzero().tolist()
    ys = []
    # the buffers of the backward, shared by the segments: [S, b, n, d] each
    workspace = _Workspace(S * b * n * d)
    for start, (delta_s, du_s, B_s, C_s) in zip(range(0, L, S), segments):
        stop = min(start + S, L)
        seg_reset = None if reset is None else reset[:, start:stop]
        seg_restarts = None
        if restart_times is not None:
            seg_restarts = reset_state[(restart_times >= start) & (restart_times < stop)]
        if one_chunk:
            resets = restart_index = None
            if reset is not None and any(reset_cols[start:stop]):
                pairs = [(t - start, row) for t, row in reset_pairs if start <= t < stop]
                resets = _Resets.of_one_chunk(reset_t[start:stop], reset_cols[start:stop], pairs)
            if resets is None or seg_restarts is None or seg_restarts.shape[0] == 0:
                seg_restarts = None
            else:
                # the restart rows come in [b, L] row-major order: the resets sorted by row, then step
                q, rows = torch.tensor(sorted(pairs, key=lambda p: (p[1], p[0])), device=reset.device).unbind(1)
                restart_index = (q, rows, torch.zeros_like(q))
            y, h = _ChunkScan.apply(delta_s, du_s, A_c, B_s, C_s, h, seg_restarts, resets, restart_index, workspace)
        else:
            y, h = _scan_segment(delta_s, du_s, A_c, B_s, C_s, h, seg_reset, seg_restarts, Q, workspace)
        ys.append(y)
    if one_chunk:
        # [L, b, 1, d] -> [b, d, L]
        y = (ys[0] if len(ys) == 1 else torch.cat(ys)).squeeze(2).permute(1, 2, 0)
    else:
        # [b, d, L]
        y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=-1)
    return _skip_and_gate(y, u_c, D, z, dtype).to(u.dtype), h.transpose(1, 2)


def _segment_resets(reset, restarts, num_chunks, chunk_size):
    """``(resets, restarts, restart_index)`` of one segment's ``reset`` ``[b, L]``: a
    :class:`_Resets` (None without a reset), ``restarts`` (None without a row) and the
    ``(q, b, chunk)`` of each row."""
    if reset is None or not bool(reset.any()):
        return None, None, None
    resets = _Resets.of(reset, num_chunks, chunk_size)
    if restarts is None or restarts.shape[0] == 0:
        return resets, None, None
    # rows in [b, L] row-major order, as reset.nonzero() lists them
    rows, times = reset.nonzero(as_tuple=True)
    return resets, restarts, (times % chunk_size, rows, times // chunk_size)


def _scan_segment(delta, du, A, B, C, h0, reset, restarts, chunk_size, workspace):
    """``y [b, d, L]`` (before ``D`` and the gate) and the last state of one segment, ``L <= Q * nc``.

    ``delta, du = delta * u`` ``[b, d, L]``, ``A`` ``[n, d]``, ``B, C`` ``[b, n, L]``, ``h0`` ``[b, n, d]``,
    ``restarts`` the rows of ``reset_state`` for this segment's resets (None: zeros).
    """
    b, d, L = du.shape
    Q = min(chunk_size, L)
    num_chunks = -(-L // Q)
    # padded steps have delta = 0 and B = 0: decay 1, input 0, so the state passes through them
    # [Q, b, nc, d]
    delta_q = _to_chunks(delta, num_chunks, Q)
    du_q = _to_chunks(du, num_chunks, Q)
    # [Q, b, nc, n]
    B_q = _to_chunks(B, num_chunks, Q)
    C_q = _to_chunks(C, num_chunks, Q)
    resets, restarts, restart_index = _segment_resets(reset, restarts, num_chunks, Q)
    y, h = _ChunkScan.apply(delta_q, du_q, A, B_q, C_q, h0, restarts, resets, restart_index, workspace)
    # [Q, b, nc, d] -> [b, d, L]
    return y.permute(1, 3, 2, 0).reshape(b, d, num_chunks * Q)[..., :L], h


def causal_conv1d_chunked(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    reset: torch.Tensor | None = None,
    activation: str | None = None,
    reset_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The depthwise causal conv of :func:`~mamba_rl.kernels.naive.causal_conv1d_ref`, in ``w`` taps.

    Same arguments, semantics and returns. The conv as if there were no resets is ``w``
    multiply-adds over the whole sequence in a ``[b, L, d]`` layout; only the steps whose window
    reaches back across a reset (at most ``w - 1`` after each) are recomputed, from windows built
    of the inputs since the reset and the restart history (or zeros), and written over their
    pre-activations: a select, so that an input before a reset reaches neither the outputs after
    it nor their gradients. The reference instead selects every tap of every step, and gathers a
    restart history for every step. ``y`` comes back as a ``[b, d, L]`` view of a ``[b, L, d]``
    tensor (the layout the projection after the conv reads). Reads ``reset`` on the host.
    """
    b, d, L = x.shape
    width = weight.shape[-1]
    if L == 0 or width == 1:
        return naive.causal_conv1d_ref(x, weight, bias, initial_state, reset, activation, reset_state)
    if initial_state is None:
        initial_state = x.new_zeros(b, d, width - 1)
    # [b, w - 1 + L, d]; position p holds time p - (w - 1)
    x_full = torch.cat([initial_state.to(x.dtype).transpose(1, 2), x.transpose(1, 2)], dim=1)
    # [b, L, d]: tap j multiplies the input at t - (w - 1) + j
    y = x_full[:, :L] * weight[:, 0]
    for j in range(1, width):
        y = y.addcmul(x_full[:, j : j + L], weight[:, j])
    if bias is not None:
        y = y + bias
    state = x_full[:, L:].transpose(1, 2)
    if reset is not None and bool(reset.any()):
        t_idx = torch.arange(L, device=x.device)
        # [b, L]: time of the last reset at or before t, or far before any window
        last = naive.last_reset_times(reset, width)
        has_rows = reset_state is not None and reset_state.shape[0] > 0
        # [b, L]: the reset_state row of that reset
        rows = naive.reset_index(reset) if has_rows else None
        history = reset_state.to(x.dtype) if has_rows else None
        # the steps whose window reaches back across their last reset: [P] each
        bi, ti = ((t_idx - last) < width - 1).nonzero(as_tuple=True)
        times = ti[:, None] - (width - 1) + torch.arange(width, device=x.device)
        k = None if rows is None else rows[bi, ti]
        # [P, d, w] -> [P, d]
        window = _seen(x_full, bi, times, last[bi, ti], k, history, width)
        crossing = (window * weight).sum(-1)
        if bias is not None:
            crossing = crossing + bias
        y = y.index_put((bi, ti), crossing)
        # the state: the last w - 1 inputs as the step after the last one sees them
        times = (L - (width - 1) + torch.arange(width - 1, device=x.device)).expand(b, -1)
        state = _seen(
            x_full,
            torch.arange(b, device=x.device),
            times,
            last[:, -1],
            None if rows is None else rows[:, -1],
            history,
            width,
        )
    y = naive._apply_activation(y, activation)
    return y.transpose(1, 2), state


def _seen(x_full, batch, times, last, k, history, width):
    """The inputs at ``times`` ``[P, m]`` of rows ``batch`` ``[P]`` as a step whose last reset is at
    ``last`` ``[P]`` sees them, ``[P, d, m]``: from ``x_full`` ``[b, w - 1 + L, d]`` at and after
    ``last``; before it, slot ``times - last + w - 1`` of the restart history ``history[k]``
    (``[R, d, w - 1]``, None: zeros); zero before that. Selects, never multiplies."""
    d = x_full.shape[-1]
    # [P, m, d] -> [P, d, m]
    inputs = x_full[batch[:, None], times + (width - 1)].transpose(1, 2)
    after = (times >= last[:, None])[:, None, :]
    out = torch.where(after, inputs, torch.zeros_like(inputs))
    if history is None:
        return out
    slot = times - last[:, None] + (width - 1)
    before = ((times < last[:, None]) & (slot >= 0))[:, None, :]
    index = slot.clamp(0, width - 2)[:, None, :].expand(-1, d, -1)
    return torch.where(before, history[k].gather(-1, index), out)
