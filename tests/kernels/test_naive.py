"""Properties of the PyTorch reference scan and conv, the ground truth for every fused kernel."""

import pytest
import torch
import torch.nn.functional as F

from mamba_rl.kernels import causal_conv1d, causal_conv1d_step, selective_scan, selective_state_step
from tests.conftest import assert_close


def make_scan_inputs(b=2, d=5, n=3, L=17, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return dict(
        u=r(b, d, L),
        delta=r(b, d, L),
        A=-torch.rand(d, n, generator=g, dtype=dtype) - 0.1,
        B=r(b, n, L),
        C=r(b, n, L),
        D=r(d),
        z=r(b, d, L),
        delta_bias=r(d),
        delta_softplus=True,
    )


def reset_mask(b, L, positions):
    reset = torch.zeros(b, L, dtype=torch.bool)
    for row, t in positions:
        reset[row, t] = True
    return reset


def test_scan_matches_closed_form_for_one_step():
    inp = make_scan_inputs(b=1, d=2, n=3, L=1)
    h0 = torch.randn(1, 2, 3, dtype=torch.float64)
    y, h = selective_scan(**inp, h0=h0, backend="torch")
    delta = F.softplus(inp["delta"][..., 0] + inp["delta_bias"])
    h_expected = (
        torch.exp(delta[..., None] * inp["A"]) * h0 + (delta * inp["u"][..., 0])[..., None] * inp["B"][:, None, :, 0]
    )
    y_expected = (h_expected * inp["C"][:, None, :, 0]).sum(-1) + inp["D"] * inp["u"][..., 0]
    y_expected = y_expected * F.silu(inp["z"][..., 0])
    assert_close(h, h_expected)
    assert_close(y[..., 0], y_expected)


@pytest.mark.parametrize("splits", [[1, 16], [5, 6, 6], [8, 9]], ids=str)
def test_scan_chunks_with_carried_state_equal_whole(splits):
    inp = make_scan_inputs()
    reset = reset_mask(2, 17, [(0, 0), (1, 6), (0, 16)])
    h0 = torch.randn(2, 5, 3, dtype=torch.float64)
    y_whole, h_whole = selective_scan(**inp, h0=h0, reset=reset, backend="torch")
    ys, h, start = [], h0, 0
    for size in splits:
        sl = slice(start, start + size)
        part = {k: (v[..., sl] if k in ("u", "delta", "B", "C", "z") else v) for k, v in inp.items()}
        y, h = selective_scan(**part, h0=h, reset=reset[:, sl], backend="torch")
        ys.append(y)
        start += size
    assert_close(torch.cat(ys, -1), y_whole)
    assert_close(h, h_whole)


def test_scan_reset_forgets_everything_before():
    inp = make_scan_inputs(L=12)
    reset = reset_mask(2, 12, [(0, 7), (1, 7)])
    y, h = selective_scan(**inp, h0=torch.randn(2, 5, 3, dtype=torch.float64), reset=reset, backend="torch")
    tail = {k: (v[..., 7:] if k in ("u", "delta", "B", "C", "z") else v) for k, v in inp.items()}
    y_fresh, h_fresh = selective_scan(**tail, backend="torch")
    assert_close(y[..., 7:], y_fresh)
    assert_close(h, h_fresh)


def test_scan_step_equals_sequence():
    inp = make_scan_inputs(L=6)
    reset = reset_mask(2, 6, [(0, 0), (1, 3), (1, 5)])
    y_seq, h_seq = selective_scan(**inp, reset=reset, backend="torch")
    h = torch.zeros(2, 5, 3, dtype=torch.float64)
    for t in range(6):
        y, h = selective_state_step(
            h,
            inp["u"][..., t],
            inp["delta"][..., t],
            inp["A"],
            inp["B"][..., t],
            inp["C"][..., t],
            D=inp["D"],
            z=inp["z"][..., t],
            delta_bias=inp["delta_bias"],
            delta_softplus=True,
            reset=reset[:, t],
            backend="torch",
        )
        assert_close(y, y_seq[..., t])
    assert_close(h, h_seq)


def test_scan_gradients_match_finite_differences_including_h0_and_final_state():
    inp = make_scan_inputs(b=1, d=2, n=2, L=5)
    reset = reset_mask(1, 5, [(0, 3)])
    h0 = torch.randn(1, 2, 2, dtype=torch.float64, requires_grad=True)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    tensors = [inp[k].clone().requires_grad_() for k in names]

    def f(h0, *args):
        kwargs = dict(zip(names, args))
        y, h = selective_scan(**kwargs, delta_softplus=True, h0=h0, reset=reset, backend="torch")
        return y, h

    assert torch.autograd.gradcheck(f, (h0, *tensors))


def test_scan_h0_gets_no_gradient_after_a_reset_at_t0():
    inp = make_scan_inputs(L=4)
    h0 = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    y, h = selective_scan(**inp, h0=h0, reset=reset_mask(2, 4, [(0, 0), (1, 0)]), backend="torch")
    (y.sum() + h.sum()).backward()
    assert torch.equal(h0.grad, torch.zeros_like(h0))


@pytest.mark.parametrize("width", [2, 4])
def test_conv_without_reset_matches_torch_conv1d(width):
    x = torch.randn(2, 3, 9, dtype=torch.float64)
    w = torch.randn(3, width, dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float64)
    y, state = causal_conv1d(x, w, bias, activation="silu", backend="torch")
    expected = F.silu(F.conv1d(x, w[:, None], bias, padding=width - 1, groups=3)[..., :9])
    assert_close(y, expected)
    assert_close(state, x[..., -(width - 1) :])


@pytest.mark.parametrize("L", [1, 2, 10])
def test_conv_chunks_and_resets_equal_stepping(L):
    torch.manual_seed(L)
    x = torch.randn(3, 4, L, dtype=torch.float64)
    w = torch.randn(4, 4, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64)
    init = torch.randn(3, 4, 3, dtype=torch.float64)
    reset = torch.rand(3, L) < 0.3
    reset[1, 0] = True
    reset[2, L - 1] = True
    y, final = causal_conv1d(x, w, bias, init, reset, backend="torch")
    state = init
    for t in range(L):
        y_t, state = causal_conv1d_step(x[..., t], state, w, bias, reset=reset[:, t], backend="torch")
        assert_close(y_t, y[..., t])
    assert_close(final, state)


def test_conv_gradients_match_finite_differences():
    x = torch.randn(2, 2, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)
    init = torch.randn(2, 2, 2, dtype=torch.float64, requires_grad=True)
    reset = reset_mask(2, 6, [(0, 4)])
    assert torch.autograd.gradcheck(
        lambda *a: causal_conv1d(*a, reset=reset, activation="silu", backend="torch"), (x, w, bias, init)
    )


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(u=torch.randn(2, 5, dtype=torch.float64)), ValueError, ["u", "[b, d, L]", "[2, 5]"]),
        (dict(h0=torch.randn(2, 5, 4)), ValueError, ["h0", "[2, 5, 3]", "[2, 5, 4]"]),
        (dict(reset=torch.zeros(2, 17)), TypeError, ["reset", "bool"]),
        (dict(B=torch.randn(2, 3, 16, dtype=torch.float64)), ValueError, ["B", "[2, 3, 17]"]),
        (dict(u=torch.ones(2, 5, 17, dtype=torch.long)), TypeError, ["u", "floating"]),
        (dict(backend="cuda"), ValueError, ["backend", "cuda"]),
        (dict(reset=torch.zeros(2, 17, dtype=torch.bool, device="meta")), ValueError, ["reset", "device of u", "meta"]),
    ],
    ids=["u-rank", "h0-shape", "reset-dtype", "B-shape", "u-int", "backend", "reset-device"],
)
def test_scan_bad_input_names_argument(kwargs, error, words):
    inp = make_scan_inputs()
    inp.update(kwargs)
    with pytest.raises(error) as info:
        selective_scan(**inp)
    for word in words:
        assert word in str(info.value)


# --- restart states at resets (TorchRL's recurrent-mode rule) ------------------------------------

RESTART_RESETS = [(0, 0), (0, 6), (0, 7), (1, 16), (2, 3)]


def _split_rows(run, initial, reset, reset_state):
    """The rule stated directly: each row cut at its resets, each piece started from its restart
    state, with no reset inside any call. ``run(row, start, stop, state) -> (y, state)`` runs one
    piece of one row from ``state`` ``[1, ...]``; ``initial`` ``[b, ...]`` enters each row."""
    b, L = reset.shape
    rows = iter(reset_state)
    ys, finals = [], []
    for row in range(b):
        starts = [0] + [t for t in range(L) if reset[row, t] and t > 0]
        state = next(rows)[None] if reset[row, 0] else initial[row : row + 1]
        pieces = []
        for start, stop in zip(starts, starts[1:] + [L]):
            if start > 0:
                state = next(rows)[None]
            y, state = run(row, start, stop, state)
            pieces.append(y)
        ys.append(torch.cat(pieces, -1))
        finals.append(state)
    return torch.cat(ys), torch.cat(finals)


def _split_rows_scan(inp, h0, reset, reset_state):
    def run(row, start, stop, state):
        piece = {
            k: (v[row : row + 1, ..., start:stop] if torch.is_tensor(v) and v.dim() == 3 else v) for k, v in inp.items()
        }
        return selective_scan(**piece, h0=state, backend="torch")

    return _split_rows(run, h0, reset, reset_state)


def test_scan_restarts_from_reset_state_equals_split_rows():
    inp = make_scan_inputs(b=3, L=17)
    reset = reset_mask(3, 17, RESTART_RESETS)
    h0 = torch.randn(3, 5, 3, dtype=torch.float64)
    reset_state = torch.randn(int(reset.sum()), 5, 3, dtype=torch.float64)
    y, h = selective_scan(**inp, h0=h0, reset=reset, reset_state=reset_state, backend="torch")
    y_ref, h_ref = _split_rows_scan(inp, h0, reset, reset_state)
    assert_close(y, y_ref)
    assert_close(h, h_ref)


def test_scan_reset_state_gradients_match_finite_differences():
    inp = make_scan_inputs(b=2, d=2, n=2, L=6)
    reset = reset_mask(2, 6, [(0, 2), (1, 0), (1, 5)])
    reset_state = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    delta = inp.pop("delta").requires_grad_()

    def f(reset_state, delta):
        y, h = selective_scan(**inp, delta=delta, reset=reset, reset_state=reset_state, backend="torch")
        return y, h

    assert torch.autograd.gradcheck(f, (reset_state, delta))


def test_scan_nonfinite_before_a_reset_does_not_leak_after_it():
    inp = make_scan_inputs(b=2, L=9)
    reset = reset_mask(2, 9, [(0, 4), (1, 0)])
    inp["u"][0, :, 2] = float("nan")
    h0 = torch.full((2, 5, 3), float("inf"), dtype=torch.float64)
    reset_state = torch.randn(2, 5, 3, dtype=torch.float64)
    y, h = selective_scan(**inp, h0=h0, reset=reset, reset_state=reset_state, backend="torch")
    assert torch.isnan(y[0, :, 2:4]).all()
    assert torch.isfinite(y[0, :, 4:]).all() and torch.isfinite(y[1]).all() and torch.isfinite(h).all()


def _split_rows_conv(x, weight, bias, initial_state, reset, reset_state):
    def run(row, start, stop, state):
        return causal_conv1d(
            x[row : row + 1, :, start:stop], weight, bias, initial_state=state, activation="silu", backend="torch"
        )

    return _split_rows(run, initial_state, reset, reset_state)


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("L", [1, 2, 17])
def test_conv_restarts_from_reset_state_equals_split_rows(width, L):
    g = torch.Generator().manual_seed(width * 100 + L)
    x = torch.randn(3, 4, L, generator=g, dtype=torch.float64)
    weight = torch.randn(4, width, generator=g, dtype=torch.float64)
    bias = torch.randn(4, generator=g, dtype=torch.float64)
    initial_state = torch.randn(3, 4, width - 1, generator=g, dtype=torch.float64)
    reset = reset_mask(3, L, [(r, t) for r, t in RESTART_RESETS if t < L])
    reset_state = torch.randn(int(reset.sum()), 4, width - 1, generator=g, dtype=torch.float64)
    y, final = causal_conv1d(
        x,
        weight,
        bias,
        initial_state=initial_state,
        reset=reset,
        activation="silu",
        reset_state=reset_state,
        backend="torch",
    )
    y_ref, final_ref = _split_rows_conv(x, weight, bias, initial_state, reset, reset_state)
    assert_close(y, y_ref)
    assert_close(final, final_ref)


def test_conv_reset_state_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    weight = torch.randn(3, 4, generator=g, dtype=torch.float64)
    reset = reset_mask(2, 7, [(0, 1), (0, 5), (1, 0)])
    reset_state = torch.randn(3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s: causal_conv1d(x, weight, reset=reset, reset_state=s, activation="silu", backend="torch"),
        (reset_state,),
    )


def test_conv_nonfinite_before_a_reset_does_not_leak_after_it():
    x = torch.randn(2, 3, 9, dtype=torch.float64)
    x[0, :, 3] = float("nan")
    weight = torch.randn(3, 4, dtype=torch.float64)
    initial_state = torch.full((2, 3, 3), float("inf"), dtype=torch.float64)
    reset = reset_mask(2, 9, [(0, 4), (1, 0)])
    y, final = causal_conv1d(x, weight, initial_state=initial_state, reset=reset, backend="torch")
    assert torch.isnan(y[0, :, 3]).all()
    assert torch.isfinite(y[0, :, 4:]).all() and torch.isfinite(y[1]).all() and torch.isfinite(final).all()


def test_reset_state_with_wrong_row_count_names_argument():
    inp = make_scan_inputs(b=2, L=5)
    reset = reset_mask(2, 5, [(0, 1), (1, 3)])
    with pytest.raises(ValueError, match=r"reset_state must have shape \[R=2"):
        selective_scan(**inp, reset=reset, reset_state=torch.zeros(3, 5, 3, dtype=torch.float64), backend="torch")
    with pytest.raises(ValueError, match="reset_state needs reset"):
        selective_scan(**inp, reset_state=torch.zeros(0, 5, 3, dtype=torch.float64), backend="torch")
