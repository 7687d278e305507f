"""The GRU trunk's training replay with resets inside rows: a fused Triton recurrence, or cuDNN
over the episodes packed by length.

A replay row ``[T]`` holds several episodes: ``reset[b, t]`` True starts one at ``t``. On CUDA
the default is ``method="triton"`` (float32, ``H <= 128``): each layer's recurrence in one fused
Triton kernel that zeroes the state at resets (:mod:`mamba_rl.kernels.triton_gru`). With
``method="packed"`` (CUDA otherwise) each row is cut into its episodes, since a GRU cannot
restart inside one cuDNN sequence, and all episodes of all rows run as one ``PackedSequence``:
sorted by length, longest first, with no padding. The packed order is computed by index
arithmetic on the device (no per-episode tensors, no TensorDict), and the inputs and outputs
move in and out of it with one gather each (their gradients are gathers too). Semantics, for
both methods:

- the first episode of row ``b`` starts from ``hidden[b]`` (zero if ``reset[b, 0]``), with
  gradient into it; every later one starts from zero;
- the output at ``t`` is the top layer's hidden state after step ``t``;
- the final state of row ``b`` is the hidden state after its last episode's last step, ``t = T-1``.

This is what ``torchrl.modules.GRUModule(recurrent_backend="pad")`` computes when its
recurrent-mode input carries the row's state at ``t = 0`` and zeros elsewhere (what
``GRUTrunk.sequence`` passes), through the same ``nn.GRU`` call on the same weights.

Cost of ``"packed"``: two device-to-host copies per call (the number of episodes, and the packed
batch sizes that cuDNN reads on the host), about ``max episode length`` recurrent steps, and
gathers of ``[B*T, F]`` and ``[B*T, H]``.

On the CPU (``method="loop"``, the default there) the same numbers come from the GRU equations
stepped over the rows with the state zeroed at resets: PyTorch's CPU packed GRU has a backward
quadratic in ``T`` (see :func:`gru_replay`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

__all__ = ["REPLAY_METHODS", "PackedEpisodes", "pack_episodes", "gru_replay", "gru_replay_ref"]


@dataclass
class PackedEpisodes:
    """Where every step of a ``[B, T]`` replay goes in the packed sequence of its episodes.

    Episodes are numbered in row-major order of their first step and packed longest first
    (ties keep that order).

    Fields:
        index: ``[B*T]`` int64, the packed position of flattened step ``b*T + t``.
        perm: ``[B*T]`` int64, the flattened step at each packed position (``index``'s inverse).
        batch_sizes: ``[max episode length]`` int64 on the CPU: episodes longer than ``k``.
        row: ``[N]`` int64, the row of each packed episode (packed order).
        is_first: ``[N]`` bool, the episode starts at ``t = 0`` (packed order).
        last: ``[B]`` int64, the packed position of the episode holding each row's ``t = T-1``.
    """

    index: torch.Tensor
    perm: torch.Tensor
    batch_sizes: torch.Tensor
    row: torch.Tensor
    is_first: torch.Tensor
    last: torch.Tensor


def pack_episodes(reset: torch.Tensor) -> PackedEpisodes:
    """The packed layout of the episodes of ``reset [B, T]`` (bool; True where an episode starts).

    A row always starts an episode at ``t = 0``, whatever ``reset[:, 0]`` says.
    """
    if reset.dim() != 2 or reset.shape[1] == 0:
        raise ValueError(f"reset must be [B, T] with T >= 1, got shape {tuple(reset.shape)}")
    batch, steps = reset.shape
    device = reset.device
    starts = reset.to(torch.bool).clone()
    starts[:, 0] = True
    flat_starts = starts.reshape(-1)
    # [N]: flattened position of each episode's first step, row-major (a host sync: N)
    start_pos = flat_starts.nonzero().squeeze(1)
    num_episodes = start_pos.numel()
    # [B*T]: episode of each step
    episode = flat_starts.cumsum(0) - 1
    end_pos = torch.cat([start_pos[1:], start_pos.new_full((1,), batch * steps)])
    length = end_pos - start_pos
    order = torch.argsort(length, descending=True, stable=True)
    # [N]: packed position of each episode
    rank = torch.empty_like(order)
    rank[order] = torch.arange(num_episodes, device=device)
    # batch_sizes[k] = episodes longer than k = N - episodes of length <= k, k in [0, T)
    count = torch.bincount(length, minlength=steps + 1)
    batch_sizes = num_episodes - count.cumsum(0)[:-1]
    step_offset = batch_sizes.cumsum(0) - batch_sizes
    position = torch.arange(batch * steps, device=device)
    index = step_offset[position - start_pos[episode]] + rank[episode]
    perm = torch.empty_like(index)
    perm[index] = position
    # a host sync: cuDNN reads the batch sizes on the host
    batch_sizes = batch_sizes.cpu()
    batch_sizes = batch_sizes[: int((batch_sizes > 0).sum())]
    sorted_start = start_pos[order]
    return PackedEpisodes(
        index=index,
        perm=perm,
        batch_sizes=batch_sizes,
        row=torch.div(sorted_start, steps, rounding_mode="floor"),
        is_first=sorted_start % steps == 0,
        last=rank[episode.view(batch, steps)[:, -1]],
    )


class _PermuteRows(torch.autograd.Function):
    """``src[perm]`` for a permutation ``perm`` of the rows, whose gradient is the gather
    ``grad[inverse]``: no scatter-add, deterministic."""

    @staticmethod
    def forward(ctx, src: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return src.index_select(0, perm)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


def _check(gru: nn.GRU, x: torch.Tensor, hidden: torch.Tensor, reset: torch.Tensor) -> None:
    if not isinstance(gru, nn.GRU):
        raise TypeError(f"gru must be a torch.nn.GRU, got {type(gru).__name__}")
    if gru.bidirectional:
        raise ValueError("gru must be unidirectional, got bidirectional=True")
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, F], got shape {tuple(x.shape)}")
    batch, steps = x.shape[:2]
    if tuple(reset.shape) != (batch, steps):
        raise ValueError(f"reset must be [B, T] = {(batch, steps)}, got shape {tuple(reset.shape)}")
    expected = (batch, gru.num_layers, gru.hidden_size)
    if tuple(hidden.shape) != expected:
        raise ValueError(f"hidden must be [B, num_layers, H] = {expected}, got shape {tuple(hidden.shape)}")


REPLAY_METHODS = ("auto", "packed", "loop", "triton")


def gru_replay(
    gru: nn.GRU,
    x: torch.Tensor,
    hidden: torch.Tensor,
    reset: torch.Tensor,
    packed: PackedEpisodes | None = None,
    method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``gru`` over ``x`` with episodes restarting at ``reset``.

    Args:
        gru: a unidirectional ``nn.GRU`` (``batch_first`` either way: neither method reads it).
        x: ``[B, T, F]`` inputs.
        hidden: ``[B, num_layers, H]``, the state entering ``t = 0``.
        reset: ``[B, T]`` bool; True at ``t`` zeroes the state entering ``t``.
        packed: ``pack_episodes(reset)``, to share one layout between GRUs replaying the same
            rows (separate actor and critic trunks); computed here when None.
        method: ``"packed"``: one ``nn.GRU`` call over the episodes packed by length (cuDNN's
            packed kernels on CUDA). ``"loop"``: the GRU equations step by step over the rows,
            the state zeroed at resets, input projections in one matrix product per layer; on
            the CPU this is the fast one: PyTorch's CPU packed GRU slices a ``[B*T, 3H]`` tensor
            per step, whose backward zero-fills the whole tensor each step (``T`` times).
            ``"triton"``: :func:`mamba_rl.kernels.triton_gru.gru_replay_triton`, the recurrence
            of each layer in one fused Triton kernel (float32; CUDA, or the CPU interpreter).
            ``"auto"``: ``"triton"`` on CUDA in float32 with ``H <= 128``, else ``"packed"`` on
            CUDA and ``"loop"`` elsewhere.

    Returns:
        ``(out [B, T, H], final [B, num_layers, H])``: the top layer's hidden state after each
        step, and every layer's after ``t = T-1``. Differentiable in ``x``, ``hidden`` and the
        GRU's parameters.

    >>> gru = torch.nn.GRU(3, 8, num_layers=2, batch_first=True)
    >>> x, h = torch.randn(4, 10, 3), torch.randn(4, 2, 8)
    >>> reset = torch.zeros(4, 10, dtype=torch.bool); reset[1, 6] = True
    >>> out, final = gru_replay(gru, x, h, reset)
    >>> out.shape, final.shape
    (torch.Size([4, 10, 8]), torch.Size([4, 2, 8]))
    """
    _check(gru, x, hidden, reset)
    if method not in REPLAY_METHODS:
        raise ValueError(f"method must be one of {REPLAY_METHODS}, got {method!r}")
    if method == "auto":
        method = _auto_method(gru, x)
    reset = reset.to(torch.bool)
    if method == "loop":
        return _gru_loop(gru, x, hidden, reset)
    if method == "triton":
        from mamba_rl.kernels.triton_gru import gru_replay_triton

        return gru_replay_triton(gru, x, hidden, reset)
    if packed is None:
        packed = pack_episodes(reset)
    batch, steps, features = x.shape
    # [L, B, H]; a reset at t = 0 restarts the first episode from zero too
    h0 = torch.where(reset[:, 0, None, None], 0.0, hidden).transpose(0, 1)
    # [L, N, H]: the row's state for its first episode, zero for the others
    hx = torch.where(packed.is_first[None, :, None], h0[:, packed.row], 0.0).contiguous()
    # [sum of lengths = B*T, F]
    data = _PermuteRows.apply(x.reshape(batch * steps, features), packed.perm, packed.index)
    out, h_n = gru(PackedSequence(data, packed.batch_sizes), hx)
    out = _PermuteRows.apply(out.data, packed.index, packed.perm).view(batch, steps, -1)
    # [B, L, H]
    return out, h_n[:, packed.last].transpose(0, 1)


def _auto_method(gru: nn.GRU, x: torch.Tensor) -> str:
    """The fastest method measured for this input: the fused Triton recurrence on CUDA in float32
    with H <= 128 (H100, h1000 replay: 4.2x faster than packed; benchmarks/NOTES_gru.md), else
    packed cuDNN on CUDA and the loop on the CPU."""
    if not x.is_cuda:
        return "loop"
    from mamba_rl.kernels.triton_gru import MAX_HIDDEN

    fp32 = x.dtype == torch.float32 and all(p.dtype == torch.float32 for p in gru.parameters())
    return "triton" if fp32 and gru.hidden_size <= MAX_HIDDEN else "packed"


def _gru_loop(gru: nn.GRU, x: torch.Tensor, hidden: torch.Tensor, reset: torch.Tensor):
    """``gru_replay(method="loop")``: the ``nn.GRU`` equations, one step at a time over the rows."""
    layer_in = x
    finals = []
    for layer in range(gru.num_layers):
        w_ih, w_hh = getattr(gru, f"weight_ih_l{layer}"), getattr(gru, f"weight_hh_l{layer}")
        b_ih, b_hh = getattr(gru, f"bias_ih_l{layer}", None), getattr(gru, f"bias_hh_l{layer}", None)
        # [B, T, 3H]: every step's input projection in one product
        gates_in = nn.functional.linear(layer_in, w_ih, b_ih)
        h = hidden[:, layer]
        outs = []
        # unbind/stack rather than slicing: a slice's backward zero-fills the whole tensor
        for t, gate_in in enumerate(gates_in.unbind(1)):
            h = torch.where(reset[:, t, None], 0.0, h)
            gate_h = nn.functional.linear(h, w_hh, b_hh)
            i_r, i_z, i_n = gate_in.chunk(3, dim=-1)
            h_r, h_z, h_n = gate_h.chunk(3, dim=-1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            h = (1 - z) * n + z * h
            outs.append(h)
        finals.append(h)
        layer_in = torch.stack(outs, 1)
        if layer < gru.num_layers - 1 and gru.dropout and gru.training:
            layer_in = nn.functional.dropout(layer_in, gru.dropout, training=True)
    return layer_in, torch.stack(finals, 1)


def gru_replay_ref(
    gru: nn.GRU, x: torch.Tensor, hidden: torch.Tensor, reset: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`gru_replay`'s ground truth: one ``nn.GRU`` call per step, the state zeroed at resets.

    Slow (``T`` calls) and plain; the tests hold :func:`gru_replay` and ``GRUTrunk.sequence`` to it.
    """
    _check(gru, x, hidden, reset)
    reset = reset.to(torch.bool)
    # [L, B, H]
    h = hidden.transpose(0, 1)
    outs = []
    for t in range(x.shape[1]):
        h = torch.where(reset[None, :, t, None], 0.0, h).contiguous()
        step_in = x[:, t : t + 1] if gru.batch_first else x[:, t][None]
        out, h = gru(step_in, h)
        outs.append(out.reshape(x.shape[0], -1))
    return torch.stack(outs, 1), h.transpose(0, 1)
