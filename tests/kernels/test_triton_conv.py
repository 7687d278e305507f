"""The fused Triton causal conv against the PyTorch reference: outputs, final state, every gradient."""

import pytest
import torch

from tests.kernels.conftest import assert_rel_close

pytest.importorskip("triton")

from mamba_rl.kernels import naive, ops  # noqa: E402
from mamba_rl.kernels.triton_conv import CONV_CONFIG, causal_conv1d_triton  # noqa: E402
from tests.kernels.test_triton_scan import make_reset  # noqa: E402

GRAD_NAMES = ("x", "weight", "bias", "initial_state")


def make_inputs(b, d, L, width, dtype, *, bias=True, init=True, reset="several", seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    inputs = dict(
        x=r(b, d, L).to(dtype),
        weight=(0.5 * r(d, width)).to(dtype),
        bias=r(d).to(dtype) if bias else None,
        initial_state=r(b, d, width - 1).to(dtype) if init else None,
    )
    inputs = {k: None if v is None else v.to(device) for k, v in inputs.items()}
    reset_mask = make_reset(reset, b, L, g)
    return inputs, None if reset_mask is None else reset_mask.to(device)


def run_and_grad(fn, inputs, reset, activation, dy, dstate):
    leaves = {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    y, final_state = fn(**leaves, reset=reset, activation=activation)
    ((y.double() * dy).sum() + (final_state.double() * dstate).sum()).backward()
    return y, final_state, {k: None if v is None else v.grad for k, v in leaves.items()}


def check_against_reference(inputs, reset, dtype, activation="silu", seed=1):
    g = torch.Generator().manual_seed(seed)
    b, d, L = inputs["x"].shape
    width = inputs["weight"].shape[1]
    dev = inputs["x"].device
    dy = torch.randn(b, d, L, generator=g, dtype=torch.float64).to(dev)
    dstate = torch.randn(b, d, width - 1, generator=g, dtype=torch.float64).to(dev)
    ref_inputs = {k: None if v is None else v.double() for k, v in inputs.items()}
    y_ref, s_ref, g_ref = run_and_grad(naive.causal_conv1d_ref, ref_inputs, reset, activation, dy, dstate)
    y, state, g_tri = run_and_grad(causal_conv1d_triton, inputs, reset, activation, dy, dstate)
    assert y.dtype == dtype and state.dtype == dtype
    assert_rel_close("y", y, y_ref, dtype)
    assert_rel_close("final_state", state, s_ref, dtype)
    for name in (*GRAD_NAMES, "reset_state"):
        if inputs.get(name) is not None:
            assert g_tri[name] is not None and g_tri[name].dtype == inputs[name].dtype, name
            assert_rel_close(f"d{name}", g_tri[name], g_ref[name], dtype)


# (b, d, L, width, reset, options)
CASES = [
    (2, 5, 1, 4, "none", {}),
    (2, 5, 1, 4, "t0", {}),
    (2, 5, 2, 4, "last", {}),
    (2, 5, 63, 4, "several", {}),
    (2, 5, 63, 4, "t0", {}),
    (2, 5, 63, 4, "last", {}),
    (2, 5, 63, 4, "everywhere", {}),
    (2, 5, 63, 4, "none", {"init": False}),
    (2, 5, 63, 4, "several", {"bias": False, "init": False}),
    (2, 5, 63, 2, "several", {}),
    (2, 5, 63, 3, "several", {}),
    (1, 3, 257, 4, "several", {}),
    (1, 2, 70, 36, "none", {}),  # a window wider than a time tile, reaching the initial state
]


def case_id(case):
    b, d, L, width, reset, opts = case
    off = "".join(f"-no{k}" for k, v in opts.items() if v is False)
    return f"B{b}-T{L}-D{d}-W{width}-reset_{reset}{off}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_conv_matches_reference_fp32(case, device):
    b, d, L, width, reset, opts = case
    inputs, reset_mask = make_inputs(b, d, L, width, torch.float32, reset=reset, device=device, **opts)
    check_against_reference(inputs, reset_mask, torch.float32)


@pytest.mark.parametrize("L", [31, 32, 33, 64, 65, 66], ids=lambda L: f"T{L}")
def test_conv_final_state_across_time_tiles(L, device):
    """The last W - 1 inputs may straddle two time tiles (32 and 64 steps wide): the final state
    and its gradient must come out whole, with a reset just before the end."""
    inputs, reset_mask = make_inputs(2, 5, L, 4, torch.float32, reset="none", device=device)
    reset_mask = torch.zeros(2, L, dtype=torch.bool, device=device)
    reset_mask[0, L - 2] = True
    reset_mask[1, 3] = True
    check_against_reference(inputs, reset_mask, torch.float32)


@pytest.mark.parametrize("range_tiles", [1, 3])
def test_conv_weight_gradient_over_uneven_time_ranges(range_tiles, device, monkeypatch):
    """The dy' / dweight kernel walks ``bwd_range_tiles`` time tiles per program: 7 tiles in ranges
    of 1, or of 3, 3 and 1, give the same gradients."""
    monkeypatch.setitem(CONV_CONFIG, "bwd_range_tiles", range_tiles)
    inputs, reset_mask = make_inputs(2, 5, 200, 4, torch.float32, device=device)
    check_against_reference(inputs, reset_mask, torch.float32)


@pytest.mark.parametrize("used", ["y", "final_state"])
def test_conv_gradient_through_one_output_only(used, device):
    """Backward through ``y`` alone or the final state alone (the other's gradient is None)."""
    inputs, reset_mask = make_inputs(2, 5, 40, 4, torch.float32, device=device)
    grads = {}
    for name, fn in (("ref", naive.causal_conv1d_ref), ("triton", causal_conv1d_triton)):
        leaves = {
            k: v.detach().double().clone().requires_grad_(True)
            if name == "ref"
            else v.detach().clone().requires_grad_(True)
            for k, v in inputs.items()
        }
        y, final_state = fn(**leaves, reset=reset_mask, activation="silu")
        out = y if used == "y" else final_state
        (
            out.double() * torch.linspace(-1, 1, out.numel(), dtype=torch.float64, device=device).view_as(out)
        ).sum().backward()
        grads[name] = {k: v.grad for k, v in leaves.items()}
    for k in GRAD_NAMES:
        if used == "final_state" and k in ("weight", "bias"):
            assert grads["triton"][k] is None or not grads["triton"][k].any(), k
            continue
        assert_rel_close(f"d{k}", grads["triton"][k], grads["ref"][k], torch.float32)


def with_reset_states(inputs, reset, seed=2):
    """``inputs`` plus ``reset_state`` ``[R, d, w - 1]``: a random history entering every reset."""
    g = torch.Generator().manual_seed(seed)
    d, width = inputs["weight"].shape
    history = torch.randn(int(reset.sum()), d, width - 1, generator=g)
    return dict(inputs, reset_state=history.to(inputs["x"].dtype).to(inputs["x"].device))


# (b, d, L, width, reset): resets at t=0, in a run, at t=L-1 and a row without any (``runs``);
# sequences shorter than the window; a reset at every step; two time tiles (32 and 64 steps) with
# the final state straddling them
RESTART_CASES = [
    (2, 5, 63, 4, "runs"),
    (2, 5, 2, 4, "t0"),
    (2, 5, 2, 4, "last"),
    (2, 5, 63, 4, "everywhere"),
    (2, 5, 63, 3, "several"),
    (2, 5, 65, 4, "several"),
]


@pytest.mark.parametrize("case", RESTART_CASES, ids=[f"B{c[0]}-T{c[2]}-D{c[1]}-W{c[3]}-{c[4]}" for c in RESTART_CASES])
def test_conv_restarts_from_reset_state_like_the_reference(case, device):
    """With ``reset_state`` the window entering each reset step is that reset's history: the
    reference's outputs, final state and every gradient, ``reset_state``'s included."""
    b, d, L, width, reset = case
    inputs, reset_mask = make_inputs(b, d, L, width, torch.float32, reset=reset, device=device)
    check_against_reference(with_reset_states(inputs, reset_mask), reset_mask, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_conv_restarts_from_reset_state_half(dtype, device):
    inputs, reset_mask = make_inputs(2, 5, 63, 4, dtype, reset="runs", device=device)
    check_against_reference(with_reset_states(inputs, reset_mask), reset_mask, dtype)


def test_conv_reset_state_of_width_one_has_no_history(device):
    """A window of one input keeps no history: ``reset_state`` ``[R, d, 0]`` changes nothing and
    gets an empty gradient."""
    inputs, reset_mask = make_inputs(2, 5, 20, 1, torch.float32, device=device)
    inputs = with_reset_states(inputs, reset_mask)
    history = inputs["reset_state"].requires_grad_(True)
    assert history.shape == (int(reset_mask.sum()), 5, 0)
    y, final_state = causal_conv1d_triton(**inputs, reset=reset_mask, activation="silu")
    y_ref, _ = naive.causal_conv1d_ref(**inputs, reset=reset_mask, activation="silu")
    assert_rel_close("y", y, y_ref, torch.float32)
    assert final_state.shape == (2, 5, 0)
    y.sum().backward()
    assert history.grad is None or history.grad.shape == history.shape


def test_conv_empty_sequence_keeps_the_initial_state(device):
    inputs, _ = make_inputs(2, 5, 0, 4, torch.float32, reset="none", device=device)
    check_against_reference(inputs, None, torch.float32)
    y, final_state = causal_conv1d_triton(**inputs, activation="silu")
    assert y.shape == (2, 5, 0) and torch.equal(final_state, inputs["initial_state"])


def test_conv_without_activation(device):
    inputs, reset_mask = make_inputs(2, 5, 63, 4, torch.float32, device=device)
    check_against_reference(inputs, reset_mask, torch.float32, activation=None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_conv_matches_reference_half(dtype, device):
    inputs, reset_mask = make_inputs(2, 5, 63, 4, dtype, device=device)
    check_against_reference(inputs, reset_mask, dtype)


def test_conv_on_channel_last_view_as_the_mixer_passes_it(device):
    inputs, reset_mask = make_inputs(2, 5, 63, 4, torch.float32, device=device)
    inputs["x"] = inputs["x"].transpose(1, 2).contiguous().transpose(1, 2)
    check_against_reference(inputs, reset_mask, torch.float32)


def test_conv_rejects_unknown_activation(device):
    inputs, _ = make_inputs(1, 2, 4, 4, torch.float32, device=device)
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_triton(**inputs, activation="relu")


def test_dispatcher_routes_to_triton(device):
    inputs, reset_mask = make_inputs(1, 3, 9, 4, torch.float32, device=device)
    inputs = with_reset_states(inputs, reset_mask)
    y_ops, s_ops = ops.causal_conv1d(**inputs, reset=reset_mask, activation="silu", backend="triton")
    y_tri, s_tri = causal_conv1d_triton(**inputs, reset=reset_mask, activation="silu")
    assert torch.equal(y_ops, y_tri) and torch.equal(s_ops, s_tri)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "b,d,L,dtype",
    [(64, 256, 1000, torch.float32), (8, 256, 20000, torch.bfloat16)],
    ids=["B64-T1000-D256-fp32", "B8-T20000-D256-bf16"],
)
def test_conv_matches_reference_realistic(b, d, L, dtype):
    inputs, reset_mask = make_inputs(b, d, L, 4, dtype, device="cuda")
    reset_mask |= torch.rand(b, L, device="cuda") < 0.005
    check_against_reference(inputs, reset_mask, dtype)


# the interpreter computes on NaN and inf with numpy, which warns
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_conv_nonfinite_values_before_a_reset_do_not_survive_it(device):
    """A NaN input inside the window of the reset step, an inf input and an inf initial state
    before a reset: the outputs and the ``dx`` that no bad value reaches (the outputs from the
    reset on, and the inputs whose outputs are those), the final state and ``d initial_state`` are
    finite and the reference's; the outputs the bad values reach before the reset are not."""
    inputs, _ = make_inputs(2, 5, 63, 4, torch.float32, reset="none")
    reset = torch.zeros(2, 63, dtype=torch.bool)
    reset[0, 5] = reset[1, 0] = reset[1, 41] = True
    inputs["x"][0, :, 3] = float("nan")
    inputs["x"][1, :, 40] = float("inf")
    inputs["initial_state"][1] = float("inf")
    # [b, L]: the steps no bad value reaches
    clean = torch.ones(2, 63, dtype=torch.bool)
    clean[0, 3:5] = clean[1, 40:41] = False
    # the inputs whose outputs (the next W - 1 steps up to a reset) no bad value reaches
    clean_dx = clean.clone()
    clean_dx[0, 0:5] = clean_dx[1, 37:41] = False
    inputs = {k: None if v is None else v.to(device) for k, v in inputs.items()}
    reset, clean, clean_dx = reset.to(device), clean.to(device), clean_dx.to(device)
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(2, 5, 63, generator=g, dtype=torch.float64).to(device)
    dstate = torch.randn(2, 5, 3, generator=g, dtype=torch.float64).to(device)
    ref_inputs = {k: None if v is None else v.double() for k, v in inputs.items()}
    y_ref, s_ref, g_ref = run_and_grad(naive.causal_conv1d_ref, ref_inputs, reset, "silu", dy, dstate)
    y, state, g_tri = run_and_grad(causal_conv1d_triton, inputs, reset, "silu", dy, dstate)

    def at(t, mask):  # [b, c, L] -> the values at the steps of mask [b, L], [steps, c]
        return t.transpose(1, 2)[mask]

    assert not torch.isfinite(y[~clean.unsqueeze(1).expand_as(y)]).any()
    assert_rel_close("y", at(y, clean), at(y_ref, clean), torch.float32)
    assert_rel_close("final_state", state, s_ref, torch.float32)
    assert_rel_close("dx", at(g_tri["x"], clean_dx), at(g_ref["x"], clean_dx), torch.float32)
    assert_rel_close("dinitial_state", g_tri["initial_state"], g_ref["initial_state"], torch.float32)
