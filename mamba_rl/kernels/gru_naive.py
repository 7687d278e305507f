"""The reset-aware GRU recurrence in plain PyTorch: the ground truth of ``triton_gru``.

One layer of ``nn.GRU`` after its input projection: given ``xg = x @ W_ih^T + b_ih`` for every
step, run the hidden-to-hidden part over time with the state zeroed entering every reset step.
"""

from __future__ import annotations

import torch

__all__ = ["gru_recurrence_ref"]


def gru_recurrence_ref(
    xg: torch.Tensor,
    h0: torch.Tensor,
    reset: torch.Tensor,
    w_hh: torch.Tensor,
    b_hh: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``nn.GRU``'s recurrence, one step at a time, the state zeroed at resets.

    Args:
        xg: ``[N, T, 3H]`` input projections, gates in ``nn.GRU``'s order (r, z, n).
        h0: ``[N, H]`` the state entering ``t = 0``.
        reset: ``[N, T]`` bool; True at ``t`` zeroes the state entering ``t``.
        w_hh: ``[3H, H]`` hidden-to-hidden weights (``nn.GRU.weight_hh_l*``).
        b_hh: ``[3H]`` hidden-to-hidden bias, or None.

    Returns:
        ``(out [N, T, H], final [N, H])``: the state after every step, and after ``t = T-1``.

    >>> xg, h0, w = torch.randn(2, 5, 24), torch.randn(2, 8), torch.randn(24, 8)
    >>> reset = torch.zeros(2, 5, dtype=torch.bool); reset[1, 3] = True
    >>> out, final = gru_recurrence_ref(xg, h0, reset, w)
    >>> out.shape, final.shape
    (torch.Size([2, 5, 8]), torch.Size([2, 8]))
    """
    reset = reset.to(torch.bool)
    h = h0
    outs = []
    # unbind/stack rather than slicing: a slice's backward zero-fills the whole tensor
    for t, gate_in in enumerate(xg.unbind(1)):
        h = torch.where(reset[:, t, None], 0.0, h)
        gate_h = torch.nn.functional.linear(h, w_hh, b_hh)
        i_r, i_z, i_n = gate_in.chunk(3, dim=-1)
        h_r, h_z, h_n = gate_h.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs, 1), h
