"""A vectorised PyTorch selective scan for the CPU: a two-level scan over chunks of the sequence.

The reference (:func:`~mamba_rl.kernels.naive.selective_scan_ref`) runs one Python iteration per
time step, so on a CPU its time is the per-op cost of ``~10 L`` small tensor ops (and as many
autograd nodes). Here the sequence is cut into ``L / Q`` chunks of ``Q`` steps and the
recurrence ``h_t = a_t h_{t-1} + x_t`` is computed in three vectorised stages:

1. local states: the recurrence inside every chunk at once, each chunk starting from zero
   (``Q`` Python iterations, each over all chunks);
2. chunk carries: the state entering each chunk, from the previous chunk's local end state and
   its total decay (``L / Q`` iterations over ``[b, d, n]``);
3. every state: the local state plus the entering state times the decay accumulated since the
   chunk start, ``exp(cumsum(delta * A))``, a closed form of cumulative log-decays that are
   ``<= 0`` for ``A <= 0`` (no exponential of a large positive number).

A reset cuts the recurrence where it happens: the restart state enters as an extra input at the
reset step (``x_t += a_t * reset_state[k]``), and every quantity that would carry a state across
the reset (stage 1's previous local state, stage 2's entering state, stage 3's carried term) is
replaced by zero through a select before it is multiplied, so that a non-finite value before a
reset reaches nothing after it, neither the outputs nor the gradients of later steps.

The decay of a Mamba-1 scan is per ``(d, n)``, so the fully closed form inside a chunk (the
``[Q, Q]`` matrix of decays between every pair of steps, as Mamba-2's SSD uses) would be a
``[b, d, n, Q, Q]`` tensor per chunk: ``Q`` times the work of stage 1. Stage 1's loop does the
same in ``Q`` vectorised steps with ``O(b d n L)`` work. Plain autograd differentiates all
stages; every input, ``h0`` and ``reset_state`` included, receives its gradient.
"""

from __future__ import annotations

import math

import torch

from mamba_rl.kernels.naive import _compute_dtype, _discretize_delta, selective_scan_ref

__all__ = ["selective_scan_chunked", "default_chunk_size"]


def default_chunk_size(seqlen: int) -> int:
    """``Q ~ sqrt(L)``: the Python iterations ``Q + L / Q`` are fewest there (8 for ``L <= 64``)."""
    return max(8, math.ceil(math.sqrt(seqlen)))


def _to_chunks(t: torch.Tensor, num_chunks: int, chunk_size: int) -> torch.Tensor:
    """``[b, k, L]`` -> ``[Q, b, num_chunks, k]`` contiguous, zero-padded at the end to ``num_chunks * Q``."""
    b, k, L = t.shape
    padded = t.new_zeros(b, k, num_chunks * chunk_size)
    padded[..., :L] = t
    return padded.view(b, k, num_chunks, chunk_size).permute(3, 0, 2, 1).contiguous()


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """The selective scan of :func:`~mamba_rl.kernels.naive.selective_scan_ref`, chunked.

    Same arguments, semantics and returns (``y [b, d, L]`` in ``u``'s dtype, ``h_last [b, d, n]``
    in at least float32), plus ``chunk_size``: steps per chunk, ``Q`` (None:
    :func:`default_chunk_size`). Reads ``reset`` on the host once (which chunks hold a reset).
    """
    b, d, L = u.shape
    n = A.shape[-1]
    if chunk_size is None:
        chunk_size = default_chunk_size(L)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if L == 0:
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, reset, reset_state)
    dtype = _compute_dtype(u.dtype)
    Q = min(chunk_size, L)
    num_chunks = -(-L // Q)
    u_c = u.to(dtype)
    delta = _discretize_delta(delta, delta_bias, delta_softplus, dtype)

    # padded steps have delta = 0 and B = 0: decay 1, input 0, so the state passes through them
    # [Q, b, nc, d]
    delta_q = _to_chunks(delta, num_chunks, Q)
    du_q = _to_chunks(delta * u_c, num_chunks, Q)
    # [Q, b, nc, n]
    B_q = _to_chunks(B.to(dtype), num_chunks, Q)
    C_q = _to_chunks(C.to(dtype), num_chunks, Q)
    # [Q, b, nc, d, n]
    log_decay = delta_q[..., None] * A.to(dtype)
    decay = torch.exp(log_decay)
    x = du_q[..., None] * B_q[..., None, :]

    has_reset = reset is not None and bool(reset.any())
    if has_reset:
        # [Q, b, nc]: True from the first reset of the chunk on (the entering state no longer reaches)
        reset_q = _to_chunks(reset[:, None, :], num_chunks, Q)[..., 0]
        after_reset = torch.cummax(reset_q.to(torch.uint8), dim=0).values.bool()
        # host lists: which step columns / chunks hold a reset, so that clean ones skip the select
        reset_cols = reset_q.flatten(1).any(1).tolist()
        chunk_cut = after_reset[-1].any(0).tolist()
        if reset_state is not None and reset_state.shape[0] > 0:
            # the restart state enters as an input at its reset step; rows in [b, L] row-major order
            rows, times = reset.nonzero(as_tuple=True)
            index = (times % Q, rows, times // Q)
            x = x.index_put(index, decay[index] * reset_state.to(dtype), accumulate=True)

    # stage 1: the recurrence inside every chunk at once, each chunk from a zero state. unbind,
    # not x[q]: the gradient of Q indexings would be Q full-size zero tensors, of unbind one stack
    x_steps, decay_steps = x.unbind(0), decay.unbind(0)
    local = [x_steps[0]]
    for q in range(1, Q):
        prev = local[-1]
        if has_reset and reset_cols[q]:
            prev = torch.where(reset_q[q, :, :, None, None], 0.0, prev)
        local.append(torch.addcmul(x_steps[q], decay_steps[q], prev))
    local_end = local[-1].unbind(1)
    # [Q, b, nc, d, n]
    local = torch.stack(local)

    # stage 2: the state entering each chunk; carry[q] = a_0 * ... * a_q of the chunk, <= 1
    carry = torch.exp(torch.cumsum(log_decay, dim=0))
    carry_end = carry[-1].unbind(1)
    h = u_c.new_zeros(b, d, n) if h0 is None else h0.to(dtype)
    entering = []
    for c in range(num_chunks):
        entering.append(h)
        if has_reset and chunk_cut[c]:
            h = torch.where(after_reset[-1, :, c, None, None], 0.0, h)
        h = torch.addcmul(local_end[c], carry_end[c], h)

    # stage 3: every state, then y_t = <h_t, C_t>
    # [1, b, nc, d, n]
    entering = torch.stack(entering, dim=1)[None]
    if has_reset:
        # [Q, b, nc, d, n]; zero (selected, not multiplied) from the chunk's first reset on
        entering = torch.where(after_reset[..., None, None], 0.0, entering)
    states = torch.addcmul(local, carry, entering)
    # [Q, b, nc, d] -> [b, d, L]
    y = torch.matmul(states, C_q[..., None]).squeeze(-1)
    y = y.permute(1, 3, 2, 0).reshape(b, d, num_chunks * Q)[..., :L]
    if D is not None:
        y = y + D.to(dtype)[:, None] * u_c
    if z is not None:
        y = y * torch.nn.functional.silu(z.to(dtype))
    return y.to(u.dtype), h
