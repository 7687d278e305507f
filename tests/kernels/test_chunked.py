"""The chunked scan and conv against the references: outputs, final state and every gradient."""

import pytest
import torch

from mamba_rl.kernels import chunked, ops
from mamba_rl.kernels.chunked import causal_conv1d_chunked, selective_scan_chunked
from mamba_rl.kernels.naive import causal_conv1d_ref, selective_scan_ref
from tests.conftest import assert_close
from tests.kernels.conftest import assert_rel_close

CHUNK = 16
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0", "reset_state")


def make_inputs(b, d, n, L, dtype=torch.float64, seed=0, with_h0=True, with_reset_state=True):
    """Scan inputs with resets at t = 0 and t = L - 1 (row 0), none (row 1), one mid-row and
    several close together (row 2), and per-step random resets in later rows."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    reset = torch.zeros(b, L, dtype=torch.bool)
    reset[0, [0, L - 1]] = True
    reset[0, L // 2] = True
    if b > 2:
        reset[2, [min(t, L - 1) for t in (L // 3, L // 3 + 1, (2 * L) // 3)]] = True
    if b > 3:
        reset[3:] = torch.rand(b - 3, L, generator=g) < 0.1
    R = int(reset.sum())
    return dict(
        u=r(b, d, L),
        delta=r(b, d, L),
        A=-torch.rand(d, n, generator=g, dtype=dtype) * 4 - 0.1,
        B=r(b, n, L),
        C=r(b, n, L),
        D=r(d),
        z=r(b, d, L),
        delta_bias=r(d),
        delta_softplus=True,
        h0=r(b, d, n) if with_h0 else None,
        reset=reset,
        reset_state=r(R, d, n) if with_reset_state else None,
    )


def run_with_grads(scan, inputs, seed=1):
    """``(y, h_last, {name: gradient})`` of ``<y, gy> + <h_last, gh>`` for fixed random ``gy, gh``."""
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if k in GRAD_NAMES and v is not None}
    y, h = scan(**{**inputs, **leaves})
    g = torch.Generator().manual_seed(seed)
    # drawn in float64 whatever the dtype, so that every dtype gets the same weights
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    gh = torch.randn(h.shape, generator=g, dtype=torch.float64).to(h.dtype)
    grads = torch.autograd.grad((y * gy).sum() + (h * gh).sum(), list(leaves.values()))
    return y.detach(), h.detach(), dict(zip(leaves, grads))


def assert_scans_agree(actual, expected, dtype=None):
    y, h, grads = actual
    y_ref, h_ref, grads_ref = expected
    assert_close(y, y_ref, dtype=dtype, msg="y")
    assert_close(h, h_ref, dtype=dtype, msg="h_last")
    assert grads.keys() == grads_ref.keys()
    for name in grads_ref:
        assert_close(grads[name], grads_ref[name], dtype=dtype, msg=f"gradient of {name}")


@pytest.mark.parametrize("L", [1, 63, CHUNK, CHUNK + 1, 200], ids=lambda L: f"T{L}")
@pytest.mark.parametrize(
    "with_h0,with_reset_state",
    [(True, True), (False, False), (True, False), (False, True)],
    ids=["h0-restarts", "zeros", "h0", "restarts"],
)
def test_chunked_equals_reference_with_every_gradient(L, with_h0, with_reset_state):
    inputs = make_inputs(4, 5, 3, L, with_h0=with_h0, with_reset_state=with_reset_state)
    expected = run_with_grads(selective_scan_ref, inputs)
    # segments of 3 chunks: the state and the restart rows cross segment boundaries too
    actual = run_with_grads(lambda **k: selective_scan_chunked(**k, chunk_size=CHUNK, segment_size=3 * CHUNK), inputs)
    assert_scans_agree(actual, expected)


@pytest.mark.parametrize(
    "chunk_size,segment_size", [(1, 1), (2, 5), (7, 7), (4, 20), (200, 200), (None, None)], ids=lambda v: str(v)
)
def test_chunked_does_not_depend_on_chunk_or_segment_size(chunk_size, segment_size):
    inputs = make_inputs(4, 3, 2, 50)
    expected = run_with_grads(selective_scan_ref, inputs)
    actual = run_with_grads(
        lambda **k: selective_scan_chunked(**k, chunk_size=chunk_size, segment_size=segment_size), inputs
    )
    assert_scans_agree(actual, expected)


@pytest.mark.parametrize("chunk_size,segment_size", [(7, 7), (4, 20)], ids=["one-chunk", "chunks"])
def test_chunked_backward_twice_through_a_retained_graph_equals_reference(chunk_size, segment_size):
    # the segments' backwards share buffers: a second backward through the same graph reuses them
    inputs = make_inputs(4, 3, 2, 50)
    expected = run_with_grads(selective_scan_ref, inputs)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if k in GRAD_NAMES and v is not None}
    y, h = selective_scan_chunked(**{**inputs, **leaves}, chunk_size=chunk_size, segment_size=segment_size)
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    gh = torch.randn(h.shape, generator=g, dtype=torch.float64)
    loss = (y * gy).sum() + (h * gh).sum()
    first = torch.autograd.grad(loss, list(leaves.values()), retain_graph=True)
    second = torch.autograd.grad(loss, list(leaves.values()))
    for name, a, b in zip(leaves, first, second):
        assert_close(a, expected[2][name], msg=f"first gradient of {name}")
        assert_close(b, expected[2][name], msg=f"second gradient of {name}")


def test_chunked_without_resets_or_optional_inputs_equals_reference():
    inputs = make_inputs(2, 4, 3, 40, with_reset_state=False)
    inputs.update(reset=None, D=None, z=None, delta_bias=None, delta_softplus=False)
    inputs["delta"] = inputs["delta"].abs()
    expected = run_with_grads(selective_scan_ref, inputs)
    actual = run_with_grads(lambda **k: selective_scan_chunked(**k, chunk_size=CHUNK), inputs)
    assert_scans_agree(actual, expected)


def test_chunked_float32_is_as_close_to_float64_as_the_reference():
    inputs64 = make_inputs(4, 8, 4, 300, seed=3)
    inputs32 = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in inputs64.items()}
    y64, h64, grads64 = run_with_grads(selective_scan_ref, inputs64)
    y, h, grads = run_with_grads(lambda **k: selective_scan_chunked(**k, chunk_size=CHUNK), inputs32)
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    assert_rel_close("y", y, y64, torch.float32)
    assert_rel_close("h_last", h, h64, torch.float32)
    for name, grad in grads.items():
        assert_rel_close(f"gradient of {name}", grad, grads64[name], torch.float32)


def test_chunked_stays_finite_where_decays_underflow():
    # delta * |A| up to ~200 per step: the decay over a chunk is far below float32's smallest number
    inputs = make_inputs(4, 5, 3, 100, dtype=torch.float32, seed=4)
    inputs["delta"] = inputs["delta"].abs() * 20
    inputs["A"] = inputs["A"] * 10
    expected = run_with_grads(selective_scan_ref, inputs)
    actual = run_with_grads(lambda **k: selective_scan_chunked(**k, chunk_size=CHUNK), inputs)
    for name, a, e in [
        ("y", actual[0], expected[0]),
        ("h_last", actual[1], expected[1]),
        *[(f"gradient of {k}", actual[2][k], expected[2][k]) for k in expected[2]],
    ]:
        assert torch.isfinite(a).all(), name
        assert_rel_close(name, a, e.double(), torch.float32)


@pytest.mark.parametrize(
    "chunk_size,segment_size", [(CHUNK, None), (40, 40), (8, 8)], ids=["chunks", "one-chunk", "one-chunk-segments"]
)
def test_chunked_nonfinite_before_a_reset_reaches_nothing_after_it(chunk_size, segment_size):
    L = 40
    inputs = make_inputs(2, 5, 3, L, seed=5)
    reset = torch.zeros(2, L, dtype=torch.bool)
    # row 0 restarts mid-chunk after a NaN input; row 1 restarts at t = 0 from an infinite h0
    reset[0, 21] = reset[1, 0] = True
    inputs.update(reset=reset, reset_state=torch.randn(2, 5, 3, dtype=torch.float64))
    inputs["u"][0, :, 18] = float("nan")
    inputs["h0"][1] = float("inf")
    leaves = {k: inputs[k].clone().requires_grad_() for k in ("u", "delta", "B", "C", "z", "reset_state")}
    y, h = selective_scan_chunked(**{**inputs, **leaves}, chunk_size=chunk_size, segment_size=segment_size)
    assert torch.isnan(y[0, :, 18:21]).all()
    assert torch.isfinite(y[0, :, 21:]).all() and torch.isfinite(y[1]).all() and torch.isfinite(h).all()
    # a loss on the outputs after the resets: every step after them gets a finite gradient
    y_ref, _ = selective_scan_ref(**{**inputs, **leaves})
    assert_close(y[0, :, 21:], y_ref[0, :, 21:])
    assert_close(y[1], y_ref[1])
    grads = torch.autograd.grad(y[0, :, 21:].sum() + y[1].sum() + h.sum(), list(leaves.values()))
    for name, grad in zip(leaves, grads):
        after = grad[0, ..., 21:] if name != "reset_state" else grad
        assert torch.isfinite(after).all(), name
        if name != "reset_state":
            assert torch.isfinite(grad[1]).all(), name


def test_ops_auto_picks_chunked_on_cpu_and_it_equals_torch():
    assert ops.resolve_backend("auto", torch.device("cpu")) == "chunked"
    inputs = make_inputs(4, 5, 3, 30)
    y_ref, h_ref = ops.selective_scan(**inputs, backend="torch")
    for backend in ("auto", "chunked"):
        y, h = ops.selective_scan(**inputs, backend=backend)
        assert_close(y, y_ref)
        assert_close(h, h_ref)


def test_chunk_and_segment_size_must_be_positive_ints():
    inputs = make_inputs(1, 2, 2, 5)
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        selective_scan_chunked(**inputs, chunk_size=0)
    with pytest.raises(ValueError, match="segment_size must be a positive int, got 2.5"):
        selective_scan_chunked(**inputs, segment_size=2.5)


def test_default_sizes_fill_the_segment_budget_with_one_chunk_or_square_root_chunks():
    # the Mamba trunk of d_model 64 (d_inner 128, d_state 16) at batch 8: 16 steps of 1 MB, one chunk
    assert chunked.default_sizes(8, 128, 16, 1024) == (16, 16)
    assert chunked.default_sizes(8, 128, 16, 10) == (10, 10)
    # small states (b * d * n below ONE_CHUNK_ELEMENTS): chunks of about sqrt(S) steps
    assert chunked.default_sizes(1, 64, 16, 1024) == (16, 256)
    assert chunked.default_sizes(2, 5, 3, 200) == (16, 200)
    # a state larger than the budget: one step per segment
    assert chunked.default_sizes(512, 256, 16, 100) == (1, 1)


CONV_GRAD_NAMES = ("x", "weight", "bias", "initial_state", "reset_state")


def make_conv_inputs(b, d, L, width, seed=0, with_state=True, with_reset_state=True):
    """Conv inputs with resets at t = 0, t = 1 and t = L - 1 (row 0), none (row 1), two resets
    closer than the width (row 2) and random ones in later rows."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    reset = torch.zeros(b, L, dtype=torch.bool)
    reset[0, [0, min(1, L - 1), L - 1]] = True
    if b > 2:
        reset[2, [min(t, L - 1) for t in (L // 3, L // 3 + 2)]] = True
    if b > 3:
        reset[3:] = torch.rand(b - 3, L, generator=g) < 0.2
    R = int(reset.sum())
    return dict(
        x=r(b, d, L),
        weight=r(d, width),
        bias=r(d),
        initial_state=r(b, d, width - 1) if with_state else None,
        reset=reset,
        activation="silu",
        reset_state=r(R, d, width - 1) if with_reset_state else None,
    )


def conv_with_grads(conv, inputs, seed=1):
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if k in CONV_GRAD_NAMES and v is not None}
    y, state = conv(**{**inputs, **leaves})
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    gs = torch.randn(state.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((y * gy).sum() + (state * gs).sum(), list(leaves.values()))
    return y.detach(), state.detach(), dict(zip(leaves, grads))


@pytest.mark.parametrize("L", [1, 2, 5, 40], ids=lambda L: f"T{L}")
@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize(
    "with_state,with_reset_state",
    [(True, True), (False, False), (False, True)],
    ids=["state-restarts", "zeros", "restarts"],
)
def test_chunked_conv_equals_reference_with_every_gradient(L, width, with_state, with_reset_state):
    inputs = make_conv_inputs(5, 3, L, width, with_state=with_state, with_reset_state=with_reset_state)
    y_ref, state_ref, grads_ref = conv_with_grads(causal_conv1d_ref, inputs)
    y, state, grads = conv_with_grads(causal_conv1d_chunked, inputs)
    assert_close(y, y_ref, msg="y")
    assert_close(state, state_ref, msg="final state")
    assert grads.keys() == grads_ref.keys()
    for name in grads_ref:
        assert_close(grads[name], grads_ref[name], msg=f"gradient of {name}")


def test_chunked_conv_without_resets_bias_or_activation_equals_reference():
    inputs = make_conv_inputs(2, 4, 9, 4, with_reset_state=False)
    inputs.update(reset=None, bias=None, activation=None)
    expected = conv_with_grads(causal_conv1d_ref, inputs)
    y, state, grads = conv_with_grads(causal_conv1d_chunked, inputs)
    assert_close(y, expected[0], msg="y")
    assert_close(state, expected[1], msg="final state")
    for name in expected[2]:
        assert_close(grads[name], expected[2][name], msg=f"gradient of {name}")


def test_chunked_conv_nonfinite_before_a_reset_reaches_nothing_after_it():
    inputs = make_conv_inputs(2, 3, 12, 4, seed=2)
    reset = torch.zeros(2, 12, dtype=torch.bool)
    # row 0 restarts one step after a NaN input; row 1 at t = 0 after an infinite initial state
    reset[0, 6] = reset[1, 0] = True
    inputs.update(reset=reset, reset_state=torch.randn(2, 3, 3, dtype=torch.float64))
    inputs["x"][0, :, 5] = float("nan")
    inputs["initial_state"][1] = float("inf")
    results = {}
    for conv in (causal_conv1d_ref, causal_conv1d_chunked):
        leaves = {k: inputs[k].clone().requires_grad_() for k in CONV_GRAD_NAMES}
        y, state = conv(**{**inputs, **leaves})
        grads = torch.autograd.grad(y[0, :, 6:].sum() + y[1].sum() + state.sum(), list(leaves.values()))
        results[conv] = (y.detach(), state.detach(), dict(zip(leaves, grads)))
    y, state, grads = results[causal_conv1d_chunked]
    assert torch.isnan(y[0, :, 5]).all()
    assert torch.isfinite(y[0, :, 6:]).all() and torch.isfinite(y[1]).all() and torch.isfinite(state).all()
    # the steps at and after the resets, and the states restarted from, get finite gradients
    assert torch.isfinite(grads["x"][0, :, 6:]).all() and torch.isfinite(grads["x"][1]).all()
    assert torch.isfinite(grads["initial_state"]).all() and torch.isfinite(grads["reset_state"]).all()
    # and every value, finite or not, is the reference's
    y_ref, state_ref, grads_ref = results[causal_conv1d_ref]
    torch.testing.assert_close(y, y_ref, equal_nan=True)
    torch.testing.assert_close(state, state_ref, equal_nan=True)
    for name in grads_ref:
        torch.testing.assert_close(grads[name], grads_ref[name], equal_nan=True, msg=f"gradient of {name}")


def test_ops_auto_and_chunked_run_the_chunked_conv_on_cpu(monkeypatch):
    calls = []

    def recording(*args):
        calls.append(args)
        return causal_conv1d_chunked(*args)

    monkeypatch.setattr(chunked, "causal_conv1d_chunked", recording)
    inputs = make_conv_inputs(4, 3, 10, 4)
    y_ref, state_ref = ops.causal_conv1d(**inputs, backend="torch")
    assert not calls
    for backend in ("auto", "chunked"):
        y, state = ops.causal_conv1d(**inputs, backend=backend)
        assert_close(y, y_ref)
        assert_close(state, state_ref)
    assert len(calls) == 2
