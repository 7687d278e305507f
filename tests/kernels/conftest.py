"""Kernel tests: Triton kernels run on CPU tensors through the interpreter when there is no GPU.

``TRITON_INTERPRET=1`` must be set before the kernels are defined (``triton.jit`` reads it when a
kernel module is imported), so it is set here, at collection time, unless a GPU is present (then
the real kernels are compiled and run).

The interpreter runs ``tl.associative_scan`` with a user combine function one element at a time in
Python; the scan kernels would take minutes even at tiny shapes. :func:`_vectorize_interpreter_scan`
replaces that loop with one step per position along the scanned axis, calling the same combine
function on whole slices: the same arithmetic in the same order, about a thousand times fewer
Python calls.
"""

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _vectorize_interpreter_scan() -> None:
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    scan_ops = getattr(interpreter, "ScanOps", None)
    if scan_ops is None or not hasattr(scan_ops, "generic_scan") or not hasattr(scan_ops, "to_tensor"):
        return

    def generic_scan(self, input):
        data = [arg.handle.data for arg in input]
        axis = self.axis
        outs = [np.empty_like(x) for x in data]
        acc = None
        for i in range(data[0].shape[axis]):
            cur = tuple(self.to_tensor(np.take(x, i, axis=axis), arg.dtype) for x, arg in zip(data, input))
            if acc is None:
                acc = cur
            else:
                ret = self.combine_fn.fn(*acc, *cur)
                acc = ret if isinstance(ret, tuple) else (ret,)
            index = [slice(None)] * data[0].ndim
            index[axis] = i
            for out, value in zip(outs, acc):
                out[tuple(index)] = np.reshape(value.handle.data, out[tuple(index)].shape)
        return [self.to_tensor(out, arg.dtype) for out, arg in zip(outs, input)]

    scan_ops.generic_scan = generic_scan


if os.environ.get("TRITON_INTERPRET") == "1":
    _vectorize_interpreter_scan()


# relative Frobenius error allowed against a float64 reference fed the same (rounded) inputs
KERNEL_TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 1.5e-2, torch.float16: 3e-3}


def assert_rel_close(name: str, actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """``|actual - expected| <= tol(dtype) * |expected|`` (Frobenius), NaN-free; exact when expected is 0."""
    tol = KERNEL_TOLERANCE[dtype]
    assert actual.shape == expected.shape, f"{name}: shape {list(actual.shape)} != {list(expected.shape)}"
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    err = (actual - expected).norm().item()
    ref = expected.norm().item()
    assert err <= tol * ref or err == 0.0, f"{name}: relative error {err / max(ref, 1e-300):.3e} > {tol:.1e} ({dtype})"


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
