"""DirectLauncher: which binary a call gets, checked with a stand-in kernel (no GPU), and on the GPU
that direct launches give the JIT's results bit for bit."""

from __future__ import annotations

import pytest
import torch

from mamba_rl.kernels import triton_launch
from mamba_rl.kernels.triton_launch import DirectLauncher


class _FakeBinary:
    def __init__(self, log, tag):
        self.log, self.tag = log, tag

    def __getitem__(self, grid):
        return lambda *args: self.log.append(("binary", self.tag, grid, args))


class _FakeKernel:
    """Records ``kernel[grid](...)`` calls and hands out a new binary for each."""

    __name__ = "fake_kernel"
    arg_names = ["p_x", "n", "s", "BLOCK", "FLAG"]

    def __init__(self):
        self.log = []
        self.compiled = 0

    def __getitem__(self, grid):
        def call(*args, **kwargs):
            self.compiled += 1
            self.log.append(("jit", grid, args, kwargs))
            return _FakeBinary(self.log, self.compiled)

        return call


@pytest.fixture
def direct(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setitem(triton_launch.launch_config, "direct", True)


def test_second_call_goes_to_the_binary_with_constexprs_in_signature_order(direct):
    kernel = _FakeKernel()
    launch = DirectLauncher(kernel)
    x = torch.zeros(8)
    launch[(4,)](x, 32, 1, FLAG=True, BLOCK=16, num_warps=1)
    launch[(4, 2)](x, 48, 1, FLAG=True, BLOCK=16, num_warps=1)
    assert kernel.compiled == 1
    assert kernel.log[1] == ("binary", 1, (4, 2, 1), (x, 48, 1, 16, True))


@pytest.mark.parametrize(
    "change", ["int_divisibility", "int_one", "int_width", "dtype", "alignment", "constexpr", "option", "tuple_element"]
)
def test_what_triton_specialises_on_picks_another_binary(direct, change):
    kernel = _FakeKernel()
    launch = DirectLauncher(kernel)
    x = torch.zeros(16)
    # s: a tuple of strides, specialised element by element as Triton does
    args, kwargs = [x, 32, (3, 1)], dict(BLOCK=16, FLAG=False, num_warps=1)
    launch[(1,)](*args, **kwargs)
    if change == "tuple_element":
        args[2] = (3, 16)
    elif change == "int_divisibility":
        args[1] = 33
    elif change == "int_one":
        args[1] = 1
    elif change == "int_width":
        args[1] = 2**32
    elif change == "dtype":
        args[0] = x.to(torch.float64)
    elif change == "alignment":
        args[0] = x[1:]
    elif change == "constexpr":
        kwargs["BLOCK"] = 32
    else:
        kwargs["num_warps"] = 2
    launch[(1,)](*args, **kwargs)
    assert kernel.compiled == 2
    launch[(1,)](*args, **kwargs)
    assert kernel.compiled == 2 and kernel.log[-1][:2] == ("binary", 2)


def test_missing_constexpr_and_bad_argument_are_named(direct):
    launch = DirectLauncher(_FakeKernel())
    with pytest.raises(TypeError, match=r"\['FLAG'\] must be passed by keyword"):
        launch[(1,)](torch.zeros(4), 16, 1, BLOCK=16)
    with pytest.raises(TypeError, match="runtime argument of type list"):
        launch[(1,)](torch.zeros(4), [16], 1, BLOCK=16, FLAG=True)


def test_off_or_interpreted_always_goes_through_the_jit(monkeypatch):
    kernel = _FakeKernel()
    launch = DirectLauncher(kernel)
    monkeypatch.setitem(triton_launch.launch_config, "direct", False)
    for _ in range(2):
        launch[(1,)](torch.zeros(4), 16, 1, BLOCK=16, FLAG=True)
    monkeypatch.setitem(triton_launch.launch_config, "direct", True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    launch[(1,)](torch.zeros(4), 16, 1, BLOCK=16, FLAG=True)
    assert kernel.compiled == 3 and all(row[0] == "jit" for row in kernel.log)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_direct_launches_match_the_jit_bit_for_bit(monkeypatch):
    from mamba_rl.kernels.triton_scan import selective_scan_triton

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    g = torch.Generator(device="cuda").manual_seed(3)
    b, d, n, L = 2, 64, 16, 300

    def r(*shape):
        return torch.randn(*shape, device="cuda", generator=g)

    inputs = dict(
        u=r(b, L, d).transpose(1, 2),
        delta=0.1 * r(b, L, d).transpose(1, 2),
        A=-torch.rand(d, n, device="cuda", generator=g) - 0.5,
        B=r(b, L, n).transpose(1, 2),
        C=r(b, L, n).transpose(1, 2),
        D=r(d),
        z=r(b, L, d).transpose(1, 2),
        delta_bias=r(d),
        h0=r(b, d, n),
    )
    reset = torch.rand(b, L, device="cuda", generator=g) < 0.02
    dy, dh = r(b, d, L), r(b, d, n)
    results = []
    for direct in (False, True, True):  # the second direct call launches the cached binaries
        monkeypatch.setitem(triton_launch.launch_config, "direct", direct)
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
        y, h = selective_scan_triton(**leaves, delta_softplus=True, reset=reset)
        torch.autograd.backward([y, h], [dy, dh])
        results.append([y, h] + [leaves[k].grad for k in inputs])
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert torch.equal(a, b_)
