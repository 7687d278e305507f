"""Kernel tests: Triton kernels run on CPU tensors through the interpreter when there is no GPU.

Without CUDA, :func:`~mamba_rl.kernels.triton_interpret.enable_cpu_interpreter` sets
``TRITON_INTERPRET=1`` before any kernel module is imported (``triton.jit`` reads it when a kernel
module is imported), copes with Triton having been imported earlier (TorchRL imports it), and
vectorizes the interpreter's associative scan. With CUDA the real kernels are compiled and run.
"""

import pytest
import torch

if not torch.cuda.is_available():
    from mamba_rl.kernels.triton_interpret import enable_cpu_interpreter

    enable_cpu_interpreter()


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
