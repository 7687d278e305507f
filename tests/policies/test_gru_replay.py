"""``gru_replay``, both methods (packed episodes; the step loop over rows), against
``GRUTrunk.sequence`` (TorchRL's pad backend) and the per-step reference: outputs, final states
and every gradient."""

import re

import pytest
import torch
from torch import nn

from mamba_rl.policies.gru_replay import REPLAY_METHODS, gru_replay, gru_replay_ref, pack_episodes
from mamba_rl.policies.trunks import GRUState, GRUTrunk
from tests.conftest import assert_close

INPUT, HIDDEN = 5, 6
METHODS = ("packed", "loop")


def _reset(kind: str, batch: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """``[B, T]`` bool resets of one named pattern; every pattern keeps a row without resets
    when ``B > 1``, except ``"every_step"``."""
    reset = torch.zeros(batch, steps, dtype=torch.bool)
    if kind == "first":
        reset[0, 0] = True
    elif kind == "last":
        reset[0, steps - 1] = True
    elif kind == "first_and_last":
        reset[0, 0] = reset[0, steps - 1] = True
    elif kind == "several":
        reset[:-1] = torch.rand(batch - 1, steps, generator=generator) < 0.3
        reset[0, 0] = reset[0, steps - 1] = True
    elif kind == "every_step":
        reset[:] = True
    elif kind != "none":
        raise ValueError(f"unknown reset pattern {kind!r}")
    return reset


CASES = [
    # (B, T, num_layers, reset pattern)
    (3, 1, 1, "none"),
    (3, 1, 2, "first"),
    (2, 7, 1, "none"),
    (3, 7, 1, "first"),
    (3, 7, 2, "last"),
    (4, 13, 1, "several"),
    (4, 13, 2, "several"),
    (3, 10, 2, "first_and_last"),
    (2, 5, 2, "every_step"),
    (5, 63, 2, "several"),
]


def _id(case):
    batch, steps, layers, kind = case
    return f"B{batch}-T{steps}-L{layers}-{kind}"


def _inputs(batch, steps, layers, kind, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, INPUT, generator=generator, dtype=dtype)
    hidden = torch.randn(batch, layers, HIDDEN, generator=generator, dtype=dtype)
    return x, hidden, _reset(kind, batch, steps, generator)


def _grads(run, module: nn.Module, x, hidden, reset, seed=1):
    """Outputs, final state and the gradients of a random projection of both, for params, x and h."""
    x = x.detach().clone().requires_grad_(True)
    hidden = hidden.detach().clone().requires_grad_(True)
    module.zero_grad()
    out, final = run(x, hidden, reset)
    generator = torch.Generator().manual_seed(seed)
    w_out = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)
    w_final = torch.randn(final.shape, generator=generator, dtype=final.dtype).to(final.device)
    ((out * w_out).sum() + (final * w_final).sum()).backward()
    params = {name: p.grad.clone() for name, p in module.named_parameters()}
    return out.detach(), final.detach(), x.grad, hidden.grad, params


def _assert_same(actual, expected, dtype, method):
    names = ("out", "final", "grad x", "grad hidden")
    for name, a, e in zip(names, actual[:4], expected[:4]):
        assert_close(a, e, dtype, msg=f"{method}: {name} differs")
    assert actual[4].keys() == expected[4].keys()
    for name in expected[4]:
        assert_close(actual[4][name], expected[4][name], dtype, msg=f"{method}: grad {name} differs")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_replay_equals_gru_trunk_sequence_pad_backend(case, dtype):
    batch, steps, layers, kind = case
    torch.manual_seed(0)
    trunk = GRUTrunk(INPUT, HIDDEN, layers, recurrent_backend="pad").to(dtype)
    x, hidden, reset = _inputs(batch, steps, layers, kind, dtype)
    expected = _grads(
        lambda x, h, r: (lambda o, s: (o, s.hidden))(*trunk.sequence(x, GRUState(h), r)), trunk, x, hidden, reset
    )
    for method in METHODS:
        actual = _grads(lambda x, h, r: gru_replay(trunk.core.gru, x, h, r, method=method), trunk, x, hidden, reset)
        _assert_same(actual, expected, dtype, method)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("case", [CASES[1], CASES[6], CASES[8]], ids=_id)
def test_replay_equals_per_step_reference(case, batch_first):
    batch, steps, layers, kind = case
    torch.manual_seed(0)
    gru = nn.GRU(INPUT, HIDDEN, layers, batch_first=batch_first).double()
    x, hidden, reset = _inputs(batch, steps, layers, kind, torch.float64)
    expected = _grads(lambda x, h, r: gru_replay_ref(gru, x, h, r), gru, x, hidden, reset)
    for method in METHODS:
        actual = _grads(lambda x, h, r: gru_replay(gru, x, h, r, method=method), gru, x, hidden, reset)
        _assert_same(actual, expected, torch.float64, method)


@pytest.mark.parametrize("method", METHODS)
def test_replay_gradcheck_inputs_and_hidden(method):
    torch.manual_seed(0)
    gru = nn.GRU(2, 3, 2, batch_first=True).double()
    x, hidden = torch.randn(3, 5, 2, dtype=torch.float64), torch.randn(3, 2, 3, dtype=torch.float64)
    reset = torch.tensor([[0, 0, 1, 0, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    x.requires_grad_(True)
    hidden.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, h: gru_replay(gru, x, h, reset, method=method), (x, hidden))


def test_pack_episodes_layout_by_hand():
    # row 0: episodes [0, 2) and [2, 5); row 1: one episode [0, 5), reset at t=0
    reset = torch.tensor([[0, 0, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    packed = pack_episodes(reset)
    # episodes in row-major order: e0 (row 0, len 2), e1 (row 0, len 3), e2 (row 1, len 5);
    # packed longest first: e2, e1, e0
    assert packed.batch_sizes.tolist() == [3, 3, 2, 1, 1]
    assert packed.batch_sizes.device.type == "cpu"
    assert packed.row.tolist() == [1, 0, 0]
    assert packed.is_first.tolist() == [True, False, True]
    assert packed.last.tolist() == [1, 0]
    # packed step k of the episode at packed position r sits at sum(batch_sizes[:k]) + r
    assert packed.index.tolist() == [2, 5, 1, 4, 7, 0, 3, 6, 8, 9]
    assert packed.perm[packed.index].tolist() == list(range(10))


@pytest.mark.parametrize("method", METHODS)
def test_nothing_before_a_reset_reaches_the_steps_after_it(method):
    gru = nn.GRU(INPUT, HIDDEN, 2, batch_first=True)
    x, hidden = torch.randn(2, 9, INPUT), torch.randn(2, 2, HIDDEN)
    reset = torch.zeros(2, 9, dtype=torch.bool)
    reset[0, 4] = True
    x[0, :4] = float("nan")
    out, final = gru_replay(gru, x, hidden, reset, method=method)
    assert out[0, :4].isnan().all()
    assert out[0, 4:].isfinite().all() and final.isfinite().all()
    expected, _ = gru_replay_ref(gru, x[:1, 4:], torch.zeros(1, 2, HIDDEN), torch.zeros(1, 5, dtype=torch.bool))
    assert_close(out[:1, 4:], expected)


def test_shared_layout_equals_own_layout():
    gru = nn.GRU(INPUT, HIDDEN, 1, batch_first=True)
    x, hidden, reset = _inputs(4, 13, 1, "several", torch.float32)
    out, final = gru_replay(gru, x, hidden, reset, packed=pack_episodes(reset), method="packed")
    out_own, final_own = gru_replay(gru, x, hidden, reset, method="packed")
    assert torch.equal(out, out_own) and torch.equal(final, final_own)


@pytest.mark.parametrize(
    "x_shape, hidden_shape, reset_shape, match",
    [
        ((2, 5), (2, 1, HIDDEN), (2, 5), "x must be"),
        ((2, 5, INPUT), (2, 1, HIDDEN), (2, 4), "reset must be"),
        ((2, 5, INPUT), (1, 2, HIDDEN), (2, 5), "hidden must be"),
    ],
)
def test_replay_rejects_wrong_shapes(x_shape, hidden_shape, reset_shape, match):
    gru = nn.GRU(INPUT, HIDDEN, 1, batch_first=True)
    with pytest.raises(ValueError, match=match):
        gru_replay(gru, torch.randn(x_shape), torch.randn(hidden_shape), torch.zeros(reset_shape, dtype=torch.bool))


def test_replay_rejects_bidirectional_gru():
    gru = nn.GRU(INPUT, HIDDEN, 1, batch_first=True, bidirectional=True)
    with pytest.raises(ValueError, match="unidirectional"):
        gru_replay(gru, torch.randn(2, 3, INPUT), torch.randn(2, 1, HIDDEN), torch.zeros(2, 3, dtype=torch.bool))


@pytest.mark.gpu
@pytest.mark.parametrize("layers", [1, 2])
def test_replay_on_cuda_equals_gru_trunk_sequence_pad_backend(layers):
    """cuDNN's packed kernels (the training path) against the pad backend, TF32 off."""
    torch.manual_seed(0)
    trunk = GRUTrunk(INPUT, HIDDEN, layers, recurrent_backend="pad", device="cuda")
    x, hidden, reset = _inputs(6, 40, layers, "several", torch.float32)
    x, hidden, reset = x.cuda(), hidden.cuda(), reset.cuda()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        expected = _grads(
            lambda x, h, r: (lambda o, s: (o, s.hidden))(*trunk.sequence(x, GRUState(h), r)), trunk, x, hidden, reset
        )
        actual = _grads(lambda x, h, r: gru_replay(trunk.core.gru, x, h, r), trunk, x, hidden, reset)
    _assert_same(actual, expected, torch.float32, "auto on CUDA")


def test_auto_picks_the_loop_on_the_cpu():
    gru = nn.GRU(INPUT, HIDDEN, 1, batch_first=True)
    x, hidden, reset = _inputs(3, 9, 1, "several", torch.float32)
    auto = gru_replay(gru, x, hidden, reset)
    loop = gru_replay(gru, x, hidden, reset, method="loop")
    assert torch.equal(auto[0], loop[0]) and torch.equal(auto[1], loop[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    ("dtype", "hidden_size", "expected"),
    [(torch.float32, HIDDEN, "triton"), (torch.float64, HIDDEN, "packed"), (torch.float32, 256, "packed")],
)
def test_auto_on_cuda_picks_triton_where_it_applies(dtype, hidden_size, expected):
    gru = nn.GRU(INPUT, hidden_size, 1, batch_first=True).to("cuda", dtype)
    x = torch.randn(2, 7, INPUT, device="cuda", dtype=dtype)
    hidden = torch.randn(2, 1, hidden_size, device="cuda", dtype=dtype)
    reset = torch.zeros(2, 7, dtype=torch.bool, device="cuda")
    reset[0, 3] = True
    auto = gru_replay(gru, x, hidden, reset)
    chosen = gru_replay(gru, x, hidden, reset, method=expected)
    assert torch.equal(auto[0], chosen[0]) and torch.equal(auto[1], chosen[1])


@pytest.mark.parametrize("method", METHODS)
def test_replay_accepts_integer_resets(method):
    gru = nn.GRU(INPUT, HIDDEN, 1, batch_first=True)
    x, hidden, reset = _inputs(4, 13, 1, "several", torch.float32)
    out, final = gru_replay(gru, x, hidden, reset.to(torch.uint8), method=method)
    out_bool, final_bool = gru_replay(gru, x, hidden, reset, method=method)
    assert torch.equal(out, out_bool) and torch.equal(final, final_bool)


def test_replay_rejects_unknown_method():
    gru = nn.GRU(INPUT, HIDDEN, 1, batch_first=True)
    with pytest.raises(ValueError, match=re.escape(f"method must be one of {REPLAY_METHODS}")):
        gru_replay(
            gru,
            torch.randn(2, 3, INPUT),
            torch.randn(2, 1, HIDDEN),
            torch.zeros(2, 3, dtype=torch.bool),
            method="cudnn",
        )


def test_loop_backward_is_linear_in_steps_not_quadratic():
    """The loop's backward runs no per-step zero fill of a ``[B, T, ...]`` tensor (what made the
    CPU packed GRU's backward quadratic in T): its autograd graph has O(T) nodes, none of them a
    slice of the whole sequence."""
    gru = nn.GRU(INPUT, HIDDEN, 1, batch_first=True)
    x, hidden, reset = _inputs(2, 17, 1, "several", torch.float32)
    out, _ = gru_replay(gru, x.requires_grad_(True), hidden, reset, method="loop")
    seen, stack, names = set(), [out.grad_fn], []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.append(type(fn).__name__)
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    assert not [n for n in names if n.startswith("Slice")], "a slice of the sequence in the loop's graph"
    assert sum(n.startswith("Unbind") for n in names) == 1


def test_docstring_examples_run():
    import doctest

    import mamba_rl.policies.gru_replay as module

    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
