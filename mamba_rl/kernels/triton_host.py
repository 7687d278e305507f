"""Host-side helpers shared by the Triton kernels' Python wrappers (scan, conv, step)."""

from __future__ import annotations

import torch

__all__ = ["empty_same_order", "next_pow2"]


def next_pow2(x: int) -> int:
    """The smallest power of two ``>= x`` (1 for ``x <= 1``): Triton tile sizes."""
    return 1 << max(0, (int(x) - 1).bit_length())


def empty_same_order(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An empty tensor shaped like ``t`` ``[b, c, L]`` in ``t``'s memory order: channels innermost
    (``[b, L, c]`` memory) if ``t``'s are, else time innermost. Outputs and gradients written in
    their input's order keep the kernels' stores as coalesced as its loads."""
    dtype = t.dtype if dtype is None else dtype
    b, c, L = t.shape
    if t.stride(1) == 1 and c > 1:
        return torch.empty(b, L, c, device=t.device, dtype=dtype).transpose(1, 2)
    return torch.empty(b, c, L, device=t.device, dtype=dtype)
