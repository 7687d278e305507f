"""The fused Triton selective scan against the PyTorch reference: outputs, final state, every gradient.

Without a GPU the kernels run on the CPU through ``TRITON_INTERPRET=1`` (see conftest), so the
shapes here are tiny; realistic shapes are marked ``gpu``.
"""

import pytest
import torch

from tests.kernels.conftest import assert_rel_close

pytest.importorskip("triton")

from mamba_rl.kernels import naive, ops, triton_math, triton_scan, triton_scan_bwd  # noqa: E402
from mamba_rl.kernels.triton_scan import selective_scan_triton  # noqa: E402
from mamba_rl.kernels.triton_scan_restart import add_restart_states  # noqa: E402

# Long sequences run with longer chunks: the interpreter's cost is per chunk, and the kernels are
# the same code whatever the tile sizes. Several checkpoint segments are exercised on purpose.
LONG_CONFIG = {"ck_steps": 32, "fwd_block_t": 32}
MULTI_SEGMENT_CONFIG = {"ck_steps": 12}


@pytest.fixture
def scan_config(monkeypatch):
    """Override :data:`SCAN_CONFIG` entries for one test (on a GPU the default tiles are kept)."""

    def apply(overrides):
        if not torch.cuda.is_available():
            for key, value in overrides.items():
                monkeypatch.setitem(triton_scan.SCAN_CONFIG, key, value)

    return apply


GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0")


def make_reset(kind: str, b: int, L: int, generator: torch.Generator) -> torch.Tensor | None:
    if kind == "none":
        return None
    reset = torch.zeros(b, L, dtype=torch.bool)
    if kind == "t0":
        reset[:, 0] = True
    elif kind == "last":
        reset[:, L - 1] = True
    elif kind == "several":
        reset[0, [0, L // 3, L - 1]] = True
        reset[-1, [L // 2]] = True
        reset |= torch.rand(b, L, generator=generator) < 0.02
    elif kind == "everywhere":
        reset[:] = True
    elif kind == "runs":
        # resets at t=0, in a run of three, and at t=L-1 in the first row; none in the last
        reset[0, [0, 1, 2, L // 2, L - 1]] = True
    else:
        raise ValueError(kind)
    return reset


def make_inputs(b, d, n, L, dtype, *, z=True, D=True, bias=True, h0=True, reset="several", seed=0, device="cpu"):
    """Inputs in ``dtype`` (A and the small vectors in fp32, as a mixer passes them)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    inputs = dict(
        u=r(b, d, L).to(dtype),
        delta=(0.5 * r(b, d, L) - 1.0).to(dtype),
        A=-torch.exp(0.5 * r(d, n)),
        B=r(b, n, L).to(dtype),
        C=r(b, n, L).to(dtype),
        D=r(d) if D else None,
        z=r(b, d, L).to(dtype) if z else None,
        delta_bias=0.5 * r(d) if bias else None,
        h0=r(b, d, n) if h0 else None,
    )
    inputs = {k: None if v is None else v.to(device) for k, v in inputs.items()}
    reset_mask = make_reset(reset, b, L, g)
    return inputs, None if reset_mask is None else reset_mask.to(device)


def run_and_grad(fn, inputs, reset, softplus, dy, dh):
    """Forward, then backward of ``<y, dy> + <h_last, dh>``; returns outputs and input grads."""
    leaves = {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    y, h_last = fn(**leaves, delta_softplus=softplus, reset=reset)
    loss = (y.double() * dy).sum() + (h_last.double() * dh).sum()
    loss.backward()
    grads = {k: None if v is None else v.grad for k, v in leaves.items()}
    return y, h_last, grads


def with_reset_states(inputs, reset, seed=2):
    """``inputs`` plus ``reset_state`` ``[R, d, n]``: a random restart state for every reset."""
    g = torch.Generator().manual_seed(seed)
    d, n = inputs["A"].shape
    reset_state = torch.randn(int(reset.sum()), d, n, generator=g).to(inputs["u"].device)
    return dict(inputs, reset_state=reset_state)


def check_against_reference(inputs, reset, dtype, softplus=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    b, d, L = inputs["u"].shape
    n = inputs["A"].shape[1]
    dev = inputs["u"].device
    dy = torch.randn(b, d, L, generator=g, dtype=torch.float64).to(dev)
    dh = torch.randn(b, d, n, generator=g, dtype=torch.float64).to(dev)
    ref_inputs = {k: None if v is None else v.double() for k, v in inputs.items()}
    y_ref, h_ref, g_ref = run_and_grad(naive.selective_scan_ref, ref_inputs, reset, softplus, dy, dh)
    y, h_last, g_tri = run_and_grad(selective_scan_triton, inputs, reset, softplus, dy, dh)

    assert y.dtype == dtype and h_last.dtype == torch.float32
    assert_rel_close("y", y, y_ref, dtype)
    assert_rel_close("h_last", h_last, h_ref, dtype)
    for name in (*GRAD_NAMES, "reset_state"):
        if inputs.get(name) is None:
            continue
        assert g_tri[name] is not None, f"no gradient for {name}"
        assert g_tri[name].dtype == inputs[name].dtype, f"d{name} dtype {g_tri[name].dtype}"
        assert_rel_close(f"d{name}", g_tri[name], g_ref[name], dtype)


# (b, d, n, L, reset, options)
CASES = [
    (2, 4, 16, 1, "none", {}),
    (2, 4, 16, 1, "t0", {}),
    (2, 4, 16, 63, "several", {}),
    (2, 4, 16, 63, "t0", {}),
    (2, 4, 16, 63, "last", {}),
    (2, 4, 16, 63, "everywhere", {}),
    (2, 4, 16, 63, "none", {"h0": False}),
    (2, 3, 16, 63, "several", {"z": False, "D": False, "bias": False}),
    (2, 4, 16, 63, "several", {"z": False}),
    (1, 2, 16, 257, "several", {}),
    (2, 4, 1, 63, "several", {}),
    (2, 4, 1, 63, "none", {"h0": False, "z": False, "D": False, "bias": False}),
    (1, 2, 64, 63, "several", {}),
    (1, 1, 64, 200, "several", {}),
]


def case_id(case):
    b, d, n, L, reset, opts = case
    off = "".join(f"-no{k}" for k, v in opts.items() if v is False)
    return f"B{b}-T{L}-N{n}-D{d}-reset_{reset}{off}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_scan_matches_reference_fp32(case, device, scan_config):
    b, d, n, L, reset, opts = case
    if L > 100:
        scan_config(LONG_CONFIG)
    inputs, reset_mask = make_inputs(b, d, n, L, torch.float32, reset=reset, device=device, **opts)
    check_against_reference(inputs, reset_mask, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("L", [1, 63, 1000], ids=["T1", "T63", "T1000"])
def test_scan_matches_reference_half(dtype, L, device, scan_config):
    if L > 100 and device.type == "cpu":
        pytest.skip("the interpreter runs T=1000 in fp32 only (minutes per case); half dtypes at T=1000 run on a GPU")
    if L > 100:
        scan_config(LONG_CONFIG)
    b, d = (2, 4) if L < 1000 else (1, 2)
    inputs, reset_mask = make_inputs(b, d, 16, L, dtype, reset="several" if L > 1 else "none", device=device)
    check_against_reference(inputs, reset_mask, dtype)


@pytest.mark.parametrize("config", [MULTI_SEGMENT_CONFIG, LONG_CONFIG], ids=["CK6", "CK16-F32"])
def test_scan_across_checkpoint_segments(config, device, scan_config):
    """Checkpoint segments of 6 backward chunks (12 steps: several segments, a partial last one),
    and of 16 chunks with forward chunks of 32 steps."""
    scan_config(config)
    inputs, reset_mask = make_inputs(
        2, 4, 16, 30 if config is MULTI_SEGMENT_CONFIG else 100, torch.float32, device=device
    )
    check_against_reference(inputs, reset_mask, torch.float32)


# Segments of 4 steps (T=63: 16 segments, the last one partial) split into time ranges: 4 ranges
# of 2 local ranges each, 16 ranges of one segment each, and forward and backward split differently.
RANGE_CONFIGS = {
    "R4-local2": {"ck_steps": 4, "fwd_ranges": 4, "bwd_ranges": 4, "local_ranges": 8},
    "R16-local1": {"ck_steps": 4, "fwd_ranges": 16, "bwd_ranges": 16, "local_ranges": 16},
    "F3-B2-local4": {"ck_steps": 4, "fwd_ranges": 3, "bwd_ranges": 2, "local_ranges": 4},
    # 16 segments in ranges of 6: the last range is shorter than the others
    "F3-B3-local8": {"ck_steps": 4, "fwd_ranges": 3, "bwd_ranges": 3, "local_ranges": 8},
}


@pytest.mark.parametrize("reset", ["several", "everywhere", "none"])
@pytest.mark.parametrize("name", list(RANGE_CONFIGS))
def test_scan_in_parallel_time_ranges(name, reset, device, monkeypatch):
    """Time ranges run in parallel, each from what enters it (the state in the forward, the
    gradient in the backward) chained from local ranges run alone: the reference outputs, final
    state and gradients, h0's included, on the GPU too."""
    config = RANGE_CONFIGS[name]
    for key, value in config.items():
        monkeypatch.setitem(triton_scan.SCAN_CONFIG, key, value)
    n_seg = -(-63 // 4)
    for want in (config["fwd_ranges"], config["bwd_ranges"]):
        ranges, range_segs, local_segs = triton_scan._time_ranges(n_seg, want)[:3]
        assert ranges > 1 and range_segs % local_segs == 0 and (ranges - 1) * range_segs < n_seg
    if name == "R4-local2":
        assert triton_scan._time_ranges(n_seg, 4)[:3] == (4, 4, 2)
    if name == "F3-B3-local8":
        assert triton_scan._time_ranges(n_seg, 3)[:3] == (3, 6, 2)
    inputs, reset_mask = make_inputs(2, 4, 16, 63, torch.float32, reset=reset, device=device)
    check_against_reference(inputs, reset_mask, torch.float32)


# Odd checkpoint segments (5 steps, rounded up to 6: 11 of them at T=63, the last one partial),
# one-step forward chunks and uneven time ranges both ways.
@pytest.mark.parametrize("reset", ["several", "everywhere", "last"])
@pytest.mark.parametrize("L", [1, 63], ids=["T1", "T63"])
def test_scan_odd_segments_in_uneven_ranges(L, reset, device, monkeypatch):
    """The backward over odd checkpoint segments and uneven time ranges gives the reference
    gradients, on the GPU too."""
    config = {"ck_steps": 5, "fwd_block_t": 1, "fwd_ranges": 3, "bwd_ranges": 3, "local_ranges": 8}
    for key, value in config.items():
        monkeypatch.setitem(triton_scan.SCAN_CONFIG, key, value)
    inputs, reset_mask = make_inputs(2, 4, 16, L, torch.float32, reset=reset, device=device)
    check_against_reference(inputs, reset_mask, torch.float32)


def test_time_ranges_only_for_channels_last_streams():
    """Time-major rows are read one lane per row: they keep one range (more warps thrash L1)."""
    u = torch.zeros(2, 8, 64)
    assert triton_scan._ranges_for("fwd_ranges", u, u) == 1
    u_cl = u.transpose(1, 2).contiguous().transpose(1, 2)
    assert triton_scan._ranges_for("fwd_ranges", u_cl, u_cl) == triton_scan.SCAN_CONFIG["fwd_ranges"]
    assert triton_scan._ranges_for("bwd_ranges", u_cl, u) == 1


def _run_warp_ptx(asm: str, n_out: int, inputs: torch.Tensor) -> torch.Tensor:
    """Execute the PTX subset that :func:`triton_scan_bwd.lane_sum_asm` emits on 32 simulated
    lanes in lockstep (``inputs`` ``[32, n_in]`` are operands ``$n_out ..``); returns the outputs
    ``[32, n_out]``."""
    regs = [dict() for _ in range(32)]
    outs = torch.full((32, n_out), float("nan"), dtype=inputs.dtype)

    def val(lane, x):
        if x.startswith("$"):
            return inputs[lane, int(x[1:]) - n_out]
        if x.startswith("%"):
            return lane if x == "%laneid" else regs[lane][x]
        return int(x)

    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, args = line.split(None, 1)
        a = [x.strip() for x in args.split(",")]
        if op.startswith("shfl.sync.bfly"):
            src = [val(lane, a[1]) for lane in range(32)]
            new = [src[lane ^ int(a[2])] for lane in range(32)]
        else:
            new = []
            for lane in range(32):
                if op.startswith("mov"):
                    new.append(val(lane, a[1]))
                elif op == "and.b32":
                    new.append(val(lane, a[1]) & val(lane, a[2]))
                elif op == "setp.ne.u32":
                    new.append(val(lane, a[1]) != val(lane, a[2]))
                elif op == "selp.f32":
                    new.append(val(lane, a[1]) if val(lane, a[3]) else val(lane, a[2]))
                elif op == "add.f32":
                    new.append(val(lane, a[1]) + val(lane, a[2]))
                else:
                    raise AssertionError(f"unexpected PTX instruction {line!r}")
        for lane in range(32):
            if a[0].startswith("$"):
                outs[lane, int(a[0][1:])] = new[lane]
            else:
                regs[lane][a[0]] = new[lane]
    return outs


@pytest.mark.parametrize("n_state", [1, 8, 16, 32, 64])
def test_reduce_scatter_ptx_sums_each_value_over_the_lanes(n_state):
    """The backward's dB / dC lane sums (inline PTX, GPU only): simulated here on 32 lanes, lane
    ``l`` must hold the sum over lanes of values ``j + l V / 32`` (``V = 2 n_state``)."""
    asm, constraints = triton_scan_bwd.lane_sum_asm(n_state)
    v = 2 * n_state
    assert constraints.split(",") == ["=f"] * n_state + ["f"] * v
    assert asm.count("shfl.sync") == v - max(1, v // 32) + max(0, 5 - (v.bit_length() - 1))
    values = torch.randn(32, v, generator=torch.Generator().manual_seed(n_state), dtype=torch.float64)
    out = _run_warp_ptx(asm, n_state, values)
    total = values.sum(0)
    for lane in range(32):
        for j in range(max(1, v // 32)):
            assert torch.allclose(out[lane, j], total[j + lane * v // 32]), (lane, j)


def test_scan_without_softplus(device):
    inputs, reset_mask = make_inputs(2, 4, 16, 63, torch.float32, device=device)
    # step sizes must be positive without the softplus
    inputs["delta"] = inputs["delta"].abs() * 0.3
    inputs["delta_bias"] = inputs["delta_bias"].abs() * 0.1
    check_against_reference(inputs, reset_mask, torch.float32, softplus=False)


def test_scan_on_channel_last_views_as_the_mixer_passes_them(device):
    """The mixer passes ``[b, L, d]`` tensors transposed to ``[b, d, L]``: strided, not copied."""
    inputs, reset_mask = make_inputs(2, 4, 16, 63, torch.float32, device=device)
    for name in ("u", "delta", "z", "B", "C"):
        inputs[name] = inputs[name].transpose(1, 2).contiguous().transpose(1, 2)
    assert inputs["u"].stride(1) == 1
    check_against_reference(inputs, reset_mask, torch.float32)


def test_scan_chunks_with_carried_state_equal_whole(device, scan_config):
    """Splitting a sequence and passing h_last as the next h0 gives the same outputs."""
    scan_config(LONG_CONFIG)
    inputs, reset_mask = make_inputs(2, 4, 16, 100, torch.float32, device=device)
    y_whole, h_whole = selective_scan_triton(**inputs, delta_softplus=True, reset=reset_mask)
    h, ys = inputs["h0"], []
    for sl in (slice(0, 37), slice(37, 100)):
        part = dict(inputs, h0=h)
        for name in ("u", "delta", "z", "B", "C"):
            part[name] = inputs[name][..., sl]
        y, h = selective_scan_triton(**part, delta_softplus=True, reset=reset_mask[:, sl])
        ys.append(y)
    assert_rel_close("y", torch.cat(ys, -1), y_whole, torch.float32)
    assert_rel_close("h_last", h, h_whole, torch.float32)


def test_dispatcher_routes_to_triton(device):
    inputs, reset_mask = make_inputs(1, 2, 16, 9, torch.float32, device=device)
    inputs = with_reset_states(inputs, reset_mask)
    y_ops, h_ops = ops.selective_scan(**inputs, delta_softplus=True, reset=reset_mask, backend="triton")
    y_tri, h_tri = selective_scan_triton(**inputs, delta_softplus=True, reset=reset_mask)
    assert torch.equal(y_ops, y_tri) and torch.equal(h_ops, h_tri)


# (b, d, n, L, reset, dtype): resets at t=0, in a run, at t=L-1 and a row without any (``runs``);
# random ones (``several``) in a half dtype
RESTART_CASES = [
    (2, 5, 16, 63, "runs", torch.float32),
    (2, 4, 16, 63, "several", torch.bfloat16),
]


@pytest.mark.parametrize(
    "case", RESTART_CASES, ids=[f"B{c[0]}-T{c[3]}-D{c[1]}-{c[4]}-{str(c[5])[6:]}" for c in RESTART_CASES]
)
def test_scan_restarts_from_reset_state_like_the_reference(case, device):
    """With ``reset_state`` each reset step starts from its restart state: the reference's outputs,
    final state and every gradient, ``reset_state``'s and ``h0``'s included."""
    b, d, n, L, reset, dtype = case
    inputs, reset_mask = make_inputs(b, d, n, L, dtype, reset=reset, device=device)
    check_against_reference(with_reset_states(inputs, reset_mask), reset_mask, dtype)


def _restart_part_reference(inputs, reset, softplus, dy, dh):
    """What ``reset_state`` adds to the reference's outputs and gradients (the scan is linear in its
    states): the scan with the restart states minus the one that restarts from zero (the gradient
    of ``reset_state`` is the first one's)."""
    ref_inputs = {k: None if v is None else v.double() for k, v in inputs.items()}
    with_rs = run_and_grad(naive.selective_scan_ref, ref_inputs, reset, softplus, dy, dh)
    zero = dict(ref_inputs, reset_state=torch.zeros_like(ref_inputs["reset_state"]))
    without = run_and_grad(naive.selective_scan_ref, zero, reset, softplus, dy, dh)
    grads = {k: None if v is None else v - without[2][k] for k, v in with_rs[2].items()}
    grads["reset_state"] = with_rs[2]["reset_state"]
    return with_rs[0] - without[0], with_rs[1] - without[1], grads


# (d, n, L, reset, options): one step; masked channels over two programs and padded states; no
# gate, bias or softplus; a restart at every step
RESTART_PART_CASES = [
    (4, 16, 1, "t0", {}),
    (33, 3, 20, "several", {}),
    (4, 16, 20, "several", {"z": False, "bias": False, "softplus": False}),
    (4, 16, 20, "everywhere", {}),
]


@pytest.mark.parametrize(
    "case",
    RESTART_PART_CASES,
    ids=[f"B2-T{c[2]}-N{c[1]}-D{c[0]}-{c[3]}" + "".join(f"-no{k}" for k in c[4]) for c in RESTART_PART_CASES],
)
def test_restart_part_adds_what_reset_state_adds_to_the_reference(case, device):
    """The restart kernels alone (:func:`add_restart_states` on zero outputs) against the
    reference's difference with and without restart states: outputs, final state, the gradients
    of ``delta, A, C, z, delta_bias, reset_state``, and ``dy``, ``dh`` passed through."""
    d, n, L, reset, opts = case
    softplus = opts.pop("softplus", True)
    inputs, reset_mask = make_inputs(2, d, n, L, torch.float32, reset=reset, device=device, **opts)
    if not softplus:
        inputs["delta"] = inputs["delta"].abs() * 0.3
    inputs = with_reset_states(inputs, reset_mask)
    g = torch.Generator().manual_seed(3)
    dy = torch.randn(2, d, L, generator=g, dtype=torch.float64).to(device)
    dh = torch.randn(2, d, n, generator=g, dtype=torch.float64).to(device)
    y_ref, h_ref, g_ref = _restart_part_reference(inputs, reset_mask, softplus, dy, dh)

    names = ("delta", "A", "C", "z", "delta_bias", "reset_state")
    leaves = {k: None if inputs[k] is None else inputs[k].detach().clone().requires_grad_(True) for k in names}
    y0 = torch.zeros(2, d, L, device=device, requires_grad=True)
    h0 = torch.zeros(2, d, n, device=device, requires_grad=True)
    y, h_last = add_restart_states(
        y0,
        h0,
        leaves["delta"],
        leaves["A"],
        leaves["C"],
        leaves["z"],
        leaves["delta_bias"],
        softplus,
        reset_mask,
        leaves["reset_state"],
    )
    ((y.double() * dy).sum() + (h_last.double() * dh).sum()).backward()
    assert_rel_close("y", y, y_ref, torch.float32)
    assert_rel_close("h_last", h_last, h_ref, torch.float32)
    assert torch.equal(y0.grad, dy.float()) and torch.equal(h0.grad, dh.float())
    for name in names:
        if leaves[name] is not None:
            assert_rel_close(f"d{name}", leaves[name].grad, g_ref[name], torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "b,d,n,L,dtype",
    [
        (64, 256, 16, 1000, torch.float32),
        (8, 256, 16, 1000, torch.bfloat16),
        (4, 64, 64, 1000, torch.float16),
        (1, 32, 16, 20000, torch.float32),
        # the dB / dC lane sums for 2, 16 and 64 values per step (fewer, as many and more than
        # lanes), with a partly masked last group of channels
        (4, 64, 1, 300, torch.float32),
        (2, 80, 8, 300, torch.float32),
        (2, 40, 32, 300, torch.float32),
    ],
    ids=[
        "B64-T1000-N16-D256-fp32",
        "B8-T1000-N16-D256-bf16",
        "B4-T1000-N64-D64-fp16",
        "B1-T20000-N16-D32-fp32",
        "B4-T300-N1-D64-fp32",
        "B2-T300-N8-D80-fp32",
        "B2-T300-N32-D40-fp32",
    ],
)
def test_scan_matches_reference_realistic(b, d, n, L, dtype):
    inputs, reset_mask = make_inputs(b, d, n, L, dtype, device="cuda")
    reset_mask |= torch.rand(b, L, device="cuda") < 0.005
    check_against_reference(inputs, reset_mask, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the approximations are inline PTX)")
def test_fast_softplus_and_sigmoid_stay_within_a_few_ulp_of_torch(monkeypatch):
    import triton
    import triton.language as tl

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)

    @triton.jit
    def apply(p_x, p_sp, p_sg, n, BLOCK: tl.constexpr):
        o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(p_x + o, mask=o < n)
        tl.store(p_sp + o, triton_math._softplus_fast(x, True), mask=o < n)
        tl.store(p_sg + o, triton_math._sigmoid_fast(x, True), mask=o < n)

    # every regime: exp(-|x|) rounding 1 + y to 1, small and large |x|, the sigmoid's saturation
    x = torch.cat(
        [
            torch.linspace(-120, 120, 200001, device="cuda"),
            torch.tensor([0.0, -0.0, 1e-30, -1e-30, -17.0, -87.0, -88.7, 88.7], device="cuda"),
        ]
    )
    sp, sg = torch.empty_like(x), torch.empty_like(x)
    apply[(triton.cdiv(x.numel(), 1024),)](x, sp, sg, x.numel(), BLOCK=1024)
    xd = x.double()
    sp_ref = torch.nn.functional.softplus(xd, threshold=1e9)
    sg_ref = torch.sigmoid(xd)
    # relative error where the true value is a normal float (with a factor 2 of margin: the rounded
    # exponent may land below -126); below that the approximations flush to zero (ftz). The bound:
    # the fp32 product x log2(e) is off by up to half an ulp of ~125 (2^-18) near |x| = 87, ~3e-6
    # relative in exp(-|x|) (tl.exp does the same); a log1p from lg2.approx would be off by 0.6
    for got, ref in ((sp, sp_ref), (sg, sg_ref)):
        err = (got.double() - ref).abs()
        normal = ref >= 2.0**-125
        assert (err[normal] / ref[normal]).max() < 5e-6
        assert torch.where(normal, 0.0, err).max() < 2.0**-125


# the interpreter computes on NaN and inf with numpy, which warns
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("restart", [False, True], ids=["zero-restart", "reset_state"])
def test_scan_nonfinite_values_before_a_reset_do_not_survive_it(restart, device, monkeypatch):
    """A NaN input, an inf input and an inf ``h0`` before a reset (``0 * NaN`` is NaN: the kernels
    must select, not multiply by a zero decay): outputs and per-step gradients from the reset on,
    the final state, ``dh0`` and ``d reset_state`` are finite and the reference's; the outputs
    between the bad value and the reset are NaN in both. Time ranges of 16 steps, so that the bad
    state also crosses the chaining of ranges."""
    for key, value in {"ck_steps": 4, "fwd_ranges": 4, "bwd_ranges": 4, "local_ranges": 8}.items():
        monkeypatch.setitem(triton_scan.SCAN_CONFIG, key, value)
    inputs, _ = make_inputs(2, 4, 16, 63, torch.float32, reset="none")
    reset = torch.zeros(2, 63, dtype=torch.bool)
    reset[0, 20] = reset[1, 0] = reset[1, 40] = True
    inputs["u"][0, :, 3] = float("nan")
    inputs["u"][1, :, 30] = float("inf")
    inputs["h0"][1] = float("inf")
    # [b, L]: the steps no bad value reaches
    clean = torch.ones(2, 63, dtype=torch.bool)
    clean[0, 3:20] = clean[1, 30:40] = False
    if restart:
        inputs = with_reset_states(inputs, reset)
    inputs = {k: None if v is None else v.to(device) for k, v in inputs.items()}
    reset, clean = reset.to(device), clean.to(device)
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(2, 4, 63, generator=g, dtype=torch.float64).to(device)
    dh = torch.randn(2, 4, 16, generator=g, dtype=torch.float64).to(device)
    ref_inputs = {k: None if v is None else v.double() for k, v in inputs.items()}
    y_ref, h_ref, g_ref = run_and_grad(naive.selective_scan_ref, ref_inputs, reset, True, dy, dh)
    y, h_last, g_tri = run_and_grad(selective_scan_triton, inputs, reset, True, dy, dh)

    def at_clean(t):  # [b, c, L] -> the clean steps' values, [steps, c]
        return t.transpose(1, 2)[clean]

    assert torch.isnan(y[0, :, 3:20]).all() and torch.isnan(y_ref[0, :, 3:20]).all()
    assert_rel_close("y", at_clean(y), at_clean(y_ref), torch.float32)
    assert_rel_close("h_last", h_last, h_ref, torch.float32)
    for name in ("u", "delta", "z", "B", "C"):
        assert_rel_close(f"d{name}", at_clean(g_tri[name]), at_clean(g_ref[name]), torch.float32)
    for name in ("h0", "reset_state") if restart else ("h0",):
        assert_rel_close(f"d{name}", g_tri[name], g_ref[name], torch.float32)
