"""Capturing a step that updates tensors in place as a CUDA graph (rollouts and evaluation replay it)."""

from __future__ import annotations

import torch

__all__ = ["capture_cuda_graph"]


def capture_cuda_graph(step, tensors: list[torch.Tensor], warmup: int = 3) -> torch.cuda.CUDAGraph:
    """A CUDA graph of ``step()``, a step that updates ``tensors`` in place (it must read and write
    only tensors that stay where they are). ``warmup`` steps run first on a side stream, since lazy
    initialisations (Triton compiles, cuBLAS handles) cannot happen during a capture; ``tensors``
    are then restored to what they held before (the step's other writes are not undone)."""
    snapshot = [t.clone() for t in tensors]
    device = tensors[0].device
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(warmup):
            step()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        step()
    for t, saved in zip(tensors, snapshot):
        t.copy_(saved)
    return graph
