import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test runs torch on one intra-op thread: the tensors here are tiny, so a second thread
    only adds a synchronisation per op, which costs milliseconds when the other core is busy (a
    second pytest worker, or another process). A test that sets threads (a preset's
    ``num_threads``) does not leak them into the next."""
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def assert_close(actual, expected, dtype=None, msg=""):
    """One tolerance per dtype: float64 for gradchecks, float32 for the rest."""
    dtype = dtype or expected.dtype
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}[dtype]
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol, msg=msg or None)


def step_through(module, td, steps):
    """Yield what ``module`` writes at each of the first ``steps`` steps of ``td`` (time the last
    batch dim), each step fed the recurrent state the previous one wrote under ``"next"``: how a
    TorchRL collector steps a recurrent module."""
    carry = None
    for t in range(steps):
        step = td[..., t].clone()
        if carry is not None:
            step.update(carry["next"].select("recurrent_state_ssm", "recurrent_state_conv"))
        carry = module(step)
        yield carry
