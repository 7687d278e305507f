"""The fused Triton GRU recurrence against its plain-PyTorch twin: outputs, final state and the
gradients of the input projections, the initial state, ``W_hh`` and ``b_hh``; and
``gru_replay(method="triton")`` against the per-step ``nn.GRU`` reference."""

import copy
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from tests.kernels.conftest import assert_rel_close

pytest.importorskip("triton")

from mamba_rl.kernels.gru_naive import gru_recurrence_ref  # noqa: E402
from mamba_rl.kernels.triton_gru import GRU_CONFIG, gru_recurrence  # noqa: E402
from mamba_rl.policies.gru_replay import gru_replay, gru_replay_ref  # noqa: E402

GRAD_NAMES = ("xg", "h0", "w_hh", "b_hh")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# tf32 keeps 10 mantissa bits; the twin with the products' operands rounded so (forward and
# backward) is 2e-4 to 5e-4 off float64 at the tf32 test's size: 10x margin for truncation
TF32_TOLERANCE = 5e-3


def make_reset(kind: str, n: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """``[N, T]`` bool resets of one named pattern; all but ``"everywhere"`` leave the last row
    without resets when ``N > 1``."""
    reset = torch.zeros(n, steps, dtype=torch.bool)
    if kind == "t0":
        reset[0, 0] = True
    elif kind == "last":
        reset[0, steps - 1] = True
    elif kind == "several":
        reset[: max(n - 1, 1)] = torch.rand(max(n - 1, 1), steps, generator=generator) < 0.2
        reset[0, [0, steps // 2, steps - 1]] = True
    elif kind == "everywhere":
        reset[:] = True
    elif kind != "none":
        raise ValueError(f"unknown reset pattern {kind!r}")
    return reset


def make_inputs(n, steps, hidden, kind, *, bias=True, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    inputs = dict(
        xg=torch.randn(n, steps, 3 * hidden, generator=g),
        h0=0.5 * torch.randn(n, hidden, generator=g),
        # nn.GRU's init scale is 1/sqrt(H); twice that keeps the gates away from saturation
        w_hh=torch.randn(3 * hidden, hidden, generator=g) * 2 / hidden**0.5,
        b_hh=torch.randn(3 * hidden, generator=g) if bias else None,
    )
    reset = make_reset(kind, n, steps, g)
    return {k: None if v is None else v.to(device) for k, v in inputs.items()}, reset.to(device)


def run_and_grad(fn, inputs, reset, d_out, d_final, **kwargs):
    leaves = {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    out, final = fn(**leaves, reset=reset, **kwargs)
    ((out.double() * d_out).sum() + (final.double() * d_final).sum()).backward()
    return out, final, {k: None if v is None else v.grad for k, v in leaves.items()}


def check_against_twin(inputs, reset, precision="ieee", tol=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    n, steps, gates3 = inputs["xg"].shape
    device = inputs["xg"].device
    d_out = torch.randn(n, steps, gates3 // 3, generator=g, dtype=torch.float64).to(device)
    d_final = torch.randn(n, gates3 // 3, generator=g, dtype=torch.float64).to(device)
    ref_inputs = {k: None if v is None else v.double() for k, v in inputs.items()}
    out_ref, final_ref, g_ref = run_and_grad(gru_recurrence_ref, ref_inputs, reset, d_out, d_final)
    out, final, g_tri = run_and_grad(gru_recurrence, inputs, reset, d_out, d_final, precision=precision)

    def check(name, actual, expected):
        if tol is None:
            assert_rel_close(name, actual, expected, torch.float32)
        else:
            err = (actual.double() - expected).norm() / expected.norm()
            assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"

    assert out.dtype == final.dtype == torch.float32
    check("out", out, out_ref)
    check("final", final, final_ref)
    for name in GRAD_NAMES:
        if inputs[name] is not None:
            assert g_tri[name] is not None and g_tri[name].dtype == torch.float32, name
            check(f"d{name}", g_tri[name], g_ref[name])


# (N, T, H, reset pattern, options)
CASES = [
    (1, 1, 16, "none", {}),
    (3, 1, 16, "t0", {}),
    (3, 7, 16, "last", {}),
    (3, 7, 32, "t0", {}),
    (5, 7, 16, "everywhere", {}),
    (5, 33, 16, "several", {}),
    (5, 33, 32, "several", {}),
    (3, 33, 32, "none", {"bias": False}),
    (5, 33, 24, "several", {}),  # H not a power of two: masked tiles
    (17, 7, 16, "several", {}),  # more rows than a program holds: two programs, masked rows
]


def case_id(case):
    n, steps, hidden, kind, opts = case
    off = "".join(f"-no{k}" for k, v in opts.items() if v is False)
    return f"N{n}-T{steps}-H{hidden}-reset_{kind}{off}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_recurrence_matches_twin(case, device):
    n, steps, hidden, kind, opts = case
    inputs, reset = make_inputs(n, steps, hidden, kind, device=device, **opts)
    check_against_twin(inputs, reset)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_recurrence_tf32_matches_twin():
    inputs, reset = make_inputs(37, 65, 128, "several", device="cuda")
    check_against_twin(inputs, reset, precision="tf32", tol=TF32_TOLERANCE)


def test_nothing_before_a_reset_reaches_after_it(device):
    n, steps, hidden, at = 3, 12, 16, 5
    inputs, reset = make_inputs(n, steps, hidden, "none", device=device)
    reset[:, at] = True
    poisoned = dict(inputs, xg=inputs["xg"].clone(), h0=torch.full_like(inputs["h0"], float("nan")))
    poisoned["xg"][:, :at] = float("nan")
    outs, grads = [], []
    for values in (inputs, poisoned):
        xg = values["xg"].clone().requires_grad_(True)
        out, final = gru_recurrence(xg, values["h0"], reset, values["w_hh"], values["b_hh"], precision="ieee")
        # a loss on every step after the reset
        (out[:, at:].square().sum() + final.sum()).backward()
        outs.append(out.detach())
        grads.append(xg.grad)
    clean, dirty = outs
    assert torch.isnan(dirty[:, :at]).all()
    assert torch.equal(dirty[:, at:], clean[:, at:])
    assert torch.equal(grads[1][:, at:], grads[0][:, at:])


def test_no_grad_forward_equals_training_forward(device):
    inputs, reset = make_inputs(3, 7, 16, "several", device=device)
    with torch.no_grad():
        out, final = gru_recurrence(**inputs, reset=reset, precision="ieee")
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    out_grad, final_grad = gru_recurrence(**leaves, reset=reset, precision="ieee")
    assert out_grad.requires_grad and not out.requires_grad
    assert torch.equal(out, out_grad.detach()) and torch.equal(final, final_grad.detach())


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_gru_replay_triton_matches_per_step_gru(batch_first, bias, device):
    """Two layers, every gradient (input, initial state, every weight), against one ``nn.GRU``
    call per step in float64; cuDNN without TF32 on CUDA."""
    batch, steps, features, hidden = 4, 9, 5, 16
    torch.manual_seed(0)
    gru = nn.GRU(features, hidden, num_layers=2, batch_first=batch_first, bias=bias).to(device)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, steps, features, generator=g).to(device)
    h = (0.5 * torch.randn(batch, 2, hidden, generator=g)).to(device)
    reset = make_reset("several", batch, steps, g).to(device)
    d_out = torch.randn(batch, steps, hidden, generator=g, dtype=torch.float64).to(device)
    d_final = torch.randn(batch, 2, hidden, generator=g, dtype=torch.float64).to(device)

    def run(module, dtype, method):
        xs, hs = x.to(dtype).requires_grad_(True), h.to(dtype).requires_grad_(True)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            if method == "ref":
                out, final = gru_replay_ref(module, xs, hs, reset)
            else:
                out, final = gru_replay(module, xs, hs, reset, method=method)
            ((out.double() * d_out).sum() + (final.double() * d_final).sum()).backward()
        grads = {"x": xs.grad, "h": hs.grad, **{n: p.grad for n, p in module.named_parameters()}}
        return out, final, grads

    ref = copy.deepcopy(gru).double()
    out_ref, final_ref, g_ref = run(ref, torch.float64, "ref")
    out, final, g_tri = run(gru, torch.float32, "triton")
    assert_rel_close("out", out, out_ref, torch.float32)
    assert_rel_close("final", final, final_ref, torch.float32)
    assert g_tri.keys() == g_ref.keys()
    for name, grad in g_ref.items():
        assert_rel_close(f"d{name}", g_tri[name], grad, torch.float32)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(xg=torch.zeros(2, 4, 47)), "xg must be [N, T, 3H] with N, T, H >= 1, got shape (2, 4, 47)"),
        (dict(xg=torch.zeros(2, 0, 48)), "xg must be [N, T, 3H] with N, T, H >= 1, got shape (2, 0, 48)"),
        (dict(xg=torch.zeros(2, 4, 387)), "the hidden size H = xg.shape[2] / 3 must be <= 128, got 129"),
        (dict(h0=torch.zeros(2, 15)), "h0 must be [N, H] = (2, 16), got shape (2, 15)"),
        (dict(reset=torch.zeros(2, 5, dtype=torch.bool)), "reset must be [N, T] = (2, 4), got shape (2, 5)"),
        (dict(w_hh=torch.zeros(16, 48)), "w_hh must be [3H, H] = (48, 16), got shape (16, 48)"),
        (dict(b_hh=torch.zeros(16)), "b_hh must be [3H] = (48,), got shape (16,)"),
        (dict(h0=torch.zeros(2, 16, dtype=torch.float64)), "h0 must be float32, got torch.float64"),
        (dict(precision="fp16"), "precision must be one of ('ieee', 'tf32') or None, got 'fp16'"),
    ],
)
def test_errors_name_the_argument(change, message):
    args = dict(
        xg=torch.zeros(2, 4, 48),
        h0=torch.zeros(2, 16),
        reset=torch.zeros(2, 4, dtype=torch.bool),
        w_hh=torch.zeros(48, 16),
        b_hh=torch.zeros(48),
    )
    args.update(change)
    with pytest.raises(ValueError, match=re.escape(message)):
        gru_recurrence(**args)


def test_offsets_past_32_bits_are_refused(monkeypatch):
    """A block's offsets are 32-bit: BLOCK_N * T * 4H must stay below 2^31."""
    monkeypatch.setitem(GRU_CONFIG, "block_n", 2**24)
    xg, h0 = torch.zeros(2, 32, 48), torch.zeros(2, 16)
    with pytest.raises(ValueError, match=re.escape("T = xg.shape[1] must be < 2^31 / (4H * 16777216), got 32")):
        gru_recurrence(xg, h0, torch.zeros(2, 32, dtype=torch.bool), torch.zeros(48, 16))


# an H100's shared memory per block (227 KB)
SM90_SHARED_BYTES = 232448
# compiles both kernels for sm_90 at H=128 with GRU_CONFIG (no GPU needed) and prints their
# shared memory in bytes; run in a fresh process: compiling needs TRITON_INTERPRET unset
COMPILE_SM90 = """
import json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mamba_rl.kernels.triton_gru import GRU_CONFIG, _gru_bwd_kernel, _gru_fwd_kernel

constexprs = dict(HAS_BIAS=True, STORE_GATES=True, PRECISION="tf32", BLOCK_N=GRU_CONFIG["block_n"], BLOCK_H=128)
shared = {}
for name, kernel, warps, stages in (
    ("forward", _gru_fwd_kernel, GRU_CONFIG["fwd_warps"], 3),
    ("backward", _gru_bwd_kernel, GRU_CONFIG["bwd_warps"], GRU_CONFIG["bwd_stages"]),
):
    signature = {}
    for p in kernel.params:
        if p.is_constexpr:
            signature[p.name] = "constexpr"
        elif p.name.startswith("p_"):
            signature[p.name] = "*u8" if p.name == "p_reset" else "*fp32"
        else:
            signature[p.name] = "i32"
    consts = {k: v for k, v in constexprs.items() if k in signature}
    compiled = triton.compile(
        ASTSource(fn=kernel, signature=signature, constexprs=consts),
        target=GPUTarget("cuda", 90, 32),
        options=dict(num_warps=warps, num_stages=stages),
    )
    shared[name] = compiled.metadata.shared
print(json.dumps(shared))
"""


def test_kernels_fit_h100_shared_memory():
    """At H=128 the W_hh tiles take 192 KB: the software-pipelining buffers must leave the rest
    under an H100's 227 KB per block, or the launch fails (which only a GPU would show)."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", COMPILE_SM90], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shared = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(shared) == {"forward", "backward"}
    for name, size in shared.items():
        assert 3 * 128 * 128 * 4 <= size <= SM90_SHARED_BYTES, f"{name}: {size} bytes of shared memory"
