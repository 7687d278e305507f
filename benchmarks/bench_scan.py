"""Benchmark of the stateful selective scan, the causal conv and the rollout step.

Compares, in one run and on one device: the PyTorch reference loop, the fused Triton kernels,
TorchRL's ``GRUModule`` (hidden 128) in recurrent mode with the same resets (each backend), cuDNN
``nn.GRU`` without resets, and mamba-ssm's ``selective_scan_fn`` / ``mamba_chunk_scan_combined``
when they import. Every Triton result is checked against the reference before it is timed.

Cases (the issue's targets, one H100, fp32 unless noted):
- scan forward+backward, B=64, d_inner=256, d_state=16, resets at 0.5% of steps, h0 given,
  T=1024 (target <= 2 ms) and T=20000 (target <= 15 ms, peak <= 4 GB);
- one policy step of a 1-layer d_model=128 MambaModule for 4096 envs in a CUDA graph (<= 50 us).

For each case the JSON records device, dtype, shapes, median ms, peak memory and the fewest bytes
the case must move, as a fraction of the measured copy bandwidth and of 3 TB/s.

    python benchmarks/bench_scan.py                 # everything, JSON to benchmarks/results/
    python benchmarks/bench_scan.py --sweep         # also try the kernels' tile configurations
    python benchmarks/bench_scan.py --quick         # T=1024 only, fewer repeats
    python benchmarks/bench_scan.py --policy-step   # only the policy step cases
    python benchmarks/bench_scan.py --scan-only     # scan variants, then fp32/bf16, both input layouts
    python benchmarks/bench_scan.py --host-profile  # host time of one scan fwd+bwd at T=1024, cProfile
    python benchmarks/bench_scan.py --conv-only     # conv variants (one- and two-pass backward), both layouts
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mamba_rl.kernels import naive  # noqa: E402

PEAK_BW = 3.0e12
# "cpu" only for --dry-run (tiny shapes through TRITON_INTERPRET=1: checks the script, times nothing)
DEV = "cuda"
RESULTS: list[dict] = []
SWEEP: list[dict] = []
BANDWIDTH: dict = {}
# filled by main(); the JSON is rewritten after every result, so a run cut short keeps what it measured
META: dict = {}


def write_json():
    if not META.get("out"):
        return
    from mamba_rl.kernels import triton_conv, triton_scan, triton_step

    payload = dict(META, copy_bandwidth_bytes_per_s=BANDWIDTH.get("copy_bytes_per_s"), peak_bandwidth_assumed=PEAK_BW,
                   configs=dict(scan=triton_scan.SCAN_CONFIG, conv=triton_conv.CONV_CONFIG,
                                step=triton_step.STEP_CONFIG),
                   seconds=time.time() - META["started"], results=RESULTS, sweep=SWEEP)
    with open(META["out"], "w") as f:
        json.dump(payload, f, indent=1)


# --- measuring ------------------------------------------------------------------------------


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, *, grad_to_none=None, slow=False, rep_ms=200):
    """Median milliseconds of ``fn`` (CUDA events). ``slow``: 1 warm-up and 3 timed calls."""
    if DEV == "cpu":
        start = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - start)
    if slow:
        fn()
        sync()
        times = []
        for _ in range(3):
            if grad_to_none:
                for t in grad_to_none:
                    t.grad = None
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            sync()
            times.append(start.elapsed_time(end))
        return sorted(times)[1]
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=rep_ms, grad_to_none=grad_to_none, return_mode="median")


def profile_kernels(fn, reps=20):
    """Average device time per call (us) of each kernel that ``fn`` launches (torch.profiler);
    nothing in a dry run on the CPU."""
    from torch.profiler import ProfilerActivity, profile

    if DEV == "cpu":
        return {}
    fn()
    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        sync()
    times = {}
    for event in prof.key_averages():
        total = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if total > 0 and not event.key.startswith(("Activity", "cuda", "cuLaunch")):
            times[event.key] = total / reps
    return times


def peak_memory_gb(fn):
    """(peak allocated during ``fn`` in GB, the part of it above what was allocated before)."""
    if DEV == "cpu":
        fn()
        return 0.0, 0.0
    sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    sync()
    peak = torch.cuda.max_memory_allocated()
    return peak / 1e9, (peak - base) / 1e9


def graph_replay_ms(fn, warmup=3):
    """Capture ``fn`` in a CUDA graph and time its replays (median, CUDA events)."""
    if DEV == "cpu":
        return time_ms(fn), None
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    import triton.testing

    ms = triton.testing.do_bench(graph.replay, warmup=25, rep=200, return_mode="median")
    return ms, graph


def measure_copy_bandwidth():
    """Device-to-device copy of 1 GiB: bytes read + written per second."""
    n = 1 << 28 if DEV == "cuda" else 1 << 10
    a = torch.empty(n, device=DEV, dtype=torch.float32).normal_()
    b = torch.empty_like(a)
    ms = time_ms(lambda: b.copy_(a))
    BANDWIDTH["copy_bytes_per_s"] = 2 * a.numel() * 4 / (ms * 1e-3)
    del a, b


def record(case, impl, *, dtype, shapes, ms=None, min_bytes=None, peak_gb=None, peak_over_inputs_gb=None,
           peak_over_io_gb=None, saved_gb=None, check=None, note=None, error=None):
    row = dict(case=case, impl=impl, dtype=str(dtype).replace("torch.", ""), shapes=shapes, ms=ms,
               min_bytes=min_bytes, peak_gb=peak_gb, peak_over_inputs_gb=peak_over_inputs_gb,
               peak_over_io_gb=peak_over_io_gb, saved_gb=saved_gb, check=check, note=note, error=error)
    if ms is not None and min_bytes:
        row["bound_ms_3tbs"] = min_bytes / PEAK_BW * 1e3
        row["fraction_of_3tbs"] = min_bytes / (ms * 1e-3) / PEAK_BW
        if BANDWIDTH.get("copy_bytes_per_s"):
            row["fraction_of_copy_bw"] = min_bytes / (ms * 1e-3) / BANDWIDTH["copy_bytes_per_s"]
    RESULTS.append(row)
    write_json()
    parts = [f"{case:28s} {impl:34s} {row['dtype']:9s}"]
    parts.append(f"{ms:9.3f} ms" if ms is not None else " " * 12)
    if row.get("fraction_of_3tbs") is not None:
        parts.append(f"{100 * row['fraction_of_3tbs']:5.1f}% of 3TB/s")
    if peak_gb is not None:
        parts.append(f"peak {peak_gb:6.2f} GB")
    if peak_over_io_gb is not None:
        parts.append(f"({peak_over_io_gb:.2f} GB above inputs, outputs, grads)")
    if check:
        parts.append(f"maxrel {max(check.values()):.1e}")
    if note:
        parts.append(note)
    if error:
        parts.append(f"ERROR {error}")
    print("  ".join(parts), flush=True)
    return row


@contextlib.contextmanager
def guarded(case, impl, dtype, shapes):
    try:
        yield
    except Exception as e:  # a failing comparison must not hide the others
        traceback.print_exc()
        record(case, impl, dtype=dtype, shapes=shapes, error=f"{type(e).__name__}: {str(e)[:300]}")
    finally:
        if DEV == "cuda":
            torch.cuda.empty_cache()


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


# --- the scan -------------------------------------------------------------------------------


def scan_inputs(b, d, n, L, dtype, *, seed=0, reset_rate=0.005, layout="channels_last"):
    """The issue's scan inputs. ``layout``: ``"channels_last"``: ``u, delta, z`` stored ``[b, L, d]``
    and ``B, C`` ``[b, L, n]`` (transposed views, as ``MambaMixer`` passes them); ``"time_major"``:
    all stored ``[b, d, L]`` / ``[b, n, L]`` (contiguous in the ``[b, d, L]`` signature)."""
    if layout not in ("channels_last", "time_major"):
        raise ValueError(f"layout must be 'channels_last' or 'time_major', got {layout!r}")
    g = torch.Generator(device=DEV).manual_seed(seed)

    def r(*s):
        x = torch.randn(*s, device=DEV, generator=g)
        return x.transpose(1, 2).contiguous().transpose(1, 2) if layout == "channels_last" and len(s) == 3 else x

    dt = torch.exp(torch.rand(d, device=DEV, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    inputs = dict(
        u=r(b, d, L).to(dtype),
        delta=(0.1 * r(b, d, L)).to(dtype),
        A=-torch.arange(1, n + 1, device=DEV, dtype=torch.float32).repeat(d, 1),
        B=r(b, n, L).to(dtype),
        C=r(b, n, L).to(dtype),
        D=torch.ones(d, device=DEV),
        z=r(b, d, L).to(dtype),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),
        h0=0.1 * torch.randn(b, d, n, device=DEV, generator=g),
    )
    for t in inputs.values():
        t.requires_grad_(True)
    reset = torch.rand(b, L, device=DEV, generator=g) < reset_rate
    return inputs, reset


def scan_min_bytes(b, d, n, L, dtype):
    """Forward reads u, delta, z, B, C and writes y; backward reads them and dy, writes 5 grads."""
    es = torch.empty((), dtype=dtype).element_size()
    return (11 * b * d * L + 6 * b * n * L) * es + 4 * b * d * n * 4


def scan_call(fn, inputs, reset):
    return fn(**inputs, delta_softplus=True, reset=reset)


def scan_fwd_bwd(fn, inputs, reset, dy, dh):
    y, h = scan_call(fn, inputs, reset)
    torch.autograd.backward([y, h], [dy, dh])


def check_scan(b, d, n, L, dtype, seed=11, layout="channels_last"):
    """Triton vs the float64 reference on fresh inputs: max relative error over outputs and grads."""
    from mamba_rl.kernels.triton_scan import selective_scan_triton

    inputs, reset = scan_inputs(b, d, n, L, dtype, seed=seed, reset_rate=0.01, layout=layout)
    g = torch.Generator(device=DEV).manual_seed(seed + 1)
    dy = torch.randn(b, d, L, device=DEV, generator=g)
    dh = torch.randn(b, d, n, device=DEV, generator=g)
    ref_in = {k: v.detach().double().requires_grad_(True) for k, v in inputs.items()}
    y_ref, h_ref = scan_call(naive.selective_scan_ref, ref_in, reset)
    torch.autograd.backward([y_ref, h_ref], [dy.double(), dh.double()])
    y, h = scan_call(selective_scan_triton, inputs, reset)
    torch.autograd.backward([y, h], [dy.to(y.dtype), dh])
    errs = {"y": rel_err(y, y_ref), "h_last": rel_err(h, h_ref)}
    for k in inputs:
        errs["d" + k] = rel_err(inputs[k].grad, ref_in[k].grad)
    tol = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}[dtype]
    bad = {k: v for k, v in errs.items() if not v <= tol}
    if bad:
        raise AssertionError(f"Triton scan differs from the reference at B{b}-T{L}-D{d}-N{n} {dtype}: {bad}")
    return errs


def bench_scan(L, dtype, *, b=64, d=256, n=16, with_reference=False, check_shape=None, layout="channels_last"):
    from mamba_rl.kernels.triton_scan import selective_scan_triton

    case = f"scan fwd+bwd T={L}"
    shapes = dict(B=b, d_inner=d, d_state=n, T=L, reset_rate=0.005, h0=True, layout=layout)
    errs = check_scan(*(check_shape or (b, d, n, L)), dtype, layout=layout)
    inputs, reset = scan_inputs(b, d, n, L, dtype, layout=layout)
    dy = torch.randn(b, d, L, device=DEV, dtype=dtype)
    if layout == "channels_last":
        dy = dy.transpose(1, 2).contiguous().transpose(1, 2)
    dh = torch.randn(b, d, n, device=DEV)
    leaves = list(inputs.values())
    min_bytes = scan_min_bytes(b, d, n, L, dtype)

    # settle first (one untimed run of each): the first timing after a variant's compile or a long
    # case read up to 1.5x slow at T=1024 (host-bound there) in earlier runs
    time_ms(lambda: scan_call(selective_scan_triton, inputs, reset), rep_ms=50)
    time_ms(lambda: scan_fwd_bwd(selective_scan_triton, inputs, reset, dy, dh), grad_to_none=leaves, rep_ms=50)
    ms_fwd = time_ms(lambda: scan_call(selective_scan_triton, inputs, reset), rep_ms=100)
    es = torch.empty((), dtype=dtype).element_size()
    record(f"scan fwd T={L}", "triton", dtype=dtype, shapes=shapes, ms=ms_fwd,
           min_bytes=(4 * b * d * L + 2 * b * n * L) * es + 2 * b * d * n * 4, check=errs)

    ms = time_ms(lambda: scan_fwd_bwd(selective_scan_triton, inputs, reset, dy, dh), grad_to_none=leaves)
    for t in leaves:
        t.grad = None
    if DEV == "cuda":
        # the GPU's share alone: at T=1024 the host's launches (5 Triton kernels, ~20 small torch ops,
        # autograd) take about as long as the kernels, so the timing above can include idle gaps
        def fwd_bwd_fresh_grads():
            for t in leaves:
                t.grad = None
            scan_fwd_bwd(selective_scan_triton, inputs, reset, dy, dh)

        kernels = profile_kernels(fwd_bwd_fresh_grads)
        record(case, "triton, sum of kernel times (torch.profiler)", dtype=dtype, shapes=shapes,
               ms=sum(kernels.values()) / 1e3, min_bytes=min_bytes,
               note="; ".join(f"{k} {v:.0f} us" for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:8]))
        for t in leaves:
            t.grad = None
    peak, over = peak_memory_gb(lambda: scan_fwd_bwd(selective_scan_triton, inputs, reset, dy, dh))
    for t in leaves:
        t.grad = None
    # the scan's own working memory at the peak: above the inputs (allocated before) and the outputs
    # y, h_last and the inputs' gradients, which the caller holds whatever computes them
    io_gb = (sum(t.numel() * t.element_size() for t in leaves) + b * d * L * es + b * d * n * 4) / 1e9
    # memory held between forward and backward, beyond the outputs: the checkpoints
    sync()
    before = torch.cuda.memory_allocated()
    y, h = scan_call(selective_scan_triton, inputs, reset)
    sync()
    saved = (torch.cuda.memory_allocated() - before - y.numel() * y.element_size() - h.numel() * 4) / 1e9
    del y, h
    record(case, "triton", dtype=dtype, shapes=shapes, ms=ms, min_bytes=min_bytes, peak_gb=peak,
           peak_over_inputs_gb=over, peak_over_io_gb=over - io_gb if DEV == "cuda" else None, saved_gb=saved,
           check=errs)

    if with_reference:
        with guarded(case, "torch reference loop", dtype, shapes):
            ms_ref = time_ms(lambda: scan_fwd_bwd(naive.selective_scan_ref, inputs, reset, dy, dh),
                             grad_to_none=leaves, slow=True)
            for t in leaves:
                t.grad = None
            peak_ref, over_ref = peak_memory_gb(lambda: scan_fwd_bwd(naive.selective_scan_ref, inputs, reset, dy, dh))
            record(case, "torch reference loop", dtype=dtype, shapes=shapes, ms=ms_ref, min_bytes=min_bytes,
                   peak_gb=peak_ref, peak_over_inputs_gb=over_ref)
    del inputs, dy, dh, leaves


def conv_inputs(b, d, L, dtype, *, seed=3, reset_rate=0.005, layout="channels_last"):
    """The conv's inputs (width 4, bias, initial state, resets) in ``layout`` (as :func:`scan_inputs`:
    ``"channels_last"`` is how ``MambaMixer`` passes ``x``)."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(b, d, L, device=DEV, generator=g)
    if layout == "channels_last":
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    inputs = dict(
        x=x.to(dtype),
        weight=0.5 * torch.randn(d, 4, device=DEV, generator=g),
        bias=torch.randn(d, device=DEV, generator=g),
        initial_state=torch.randn(b, d, 3, device=DEV, generator=g).to(dtype),
    )
    for t in inputs.values():
        t.requires_grad_(True)
    return inputs, torch.rand(b, L, device=DEV, generator=g) < reset_rate


def check_conv(b, d, L, dtype, layout="channels_last"):
    """Triton conv vs the float64 reference: max relative error over both outputs and all grads."""
    from mamba_rl.kernels.triton_conv import causal_conv1d_triton

    inputs, reset = conv_inputs(b, d, L, dtype, seed=13, reset_rate=0.01, layout=layout)
    g = torch.Generator(device=DEV).manual_seed(14)
    dy = torch.randn(b, d, L, device=DEV, generator=g, dtype=torch.float64)
    ds = torch.randn(b, d, 3, device=DEV, generator=g, dtype=torch.float64)
    ref_in = {k: v.detach().double().requires_grad_(True) for k, v in inputs.items()}
    y_ref, s_ref = naive.causal_conv1d_ref(**ref_in, reset=reset, activation="silu")
    torch.autograd.backward([y_ref, s_ref], [dy, ds])
    y, state = causal_conv1d_triton(**inputs, reset=reset, activation="silu")
    torch.autograd.backward([y, state], [dy.to(y.dtype), ds.to(state.dtype)])
    errs = {"y": rel_err(y, y_ref), "final_state": rel_err(state, s_ref)}
    errs.update({"d" + k: rel_err(v.grad, ref_in[k].grad) for k, v in inputs.items()})
    tol = {torch.float32: 1e-4, torch.bfloat16: 2e-2}[dtype]
    bad = {k: v for k, v in errs.items() if not v <= tol}
    if bad:
        raise AssertionError(f"Triton conv differs from the reference at B{b}-T{L}-D{d} {dtype} {layout}: {bad}")
    return errs


def count_torch_ops(fn) -> dict:
    """The torch ops one call of ``fn`` dispatches (the Triton launches are not among them), by
    name: the host work around the kernels."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func.overloadpacket.__name__)] += 1
            return func(*args, **(kwargs or {}))

    with _Count() as mode:
        fn()
    return dict(mode.ops)


def bench_conv_and_mixer_inner(L, dtype, *, b=64, d=256, n=16, layout="channels_last", check_shape=None):
    """The conv alone, and conv -> scan as the mixer runs them (unfused), forward+backward."""
    from mamba_rl.kernels.triton_conv import causal_conv1d_triton
    from mamba_rl.kernels.triton_scan import selective_scan_triton

    shapes = dict(B=b, d_inner=d, T=L, width=4, reset_rate=0.005, initial_state=True, layout=layout)
    es = torch.empty((), dtype=dtype).element_size()
    errs = check_conv(*(check_shape or (min(b, 4), d, L)), dtype, layout=layout)
    conv_in, reset = conv_inputs(b, d, L, dtype, layout=layout)
    dy = torch.randn(b, d, L, device=DEV, dtype=dtype)

    def conv_fwd_bwd():
        y, state = causal_conv1d_triton(**conv_in, reset=reset, activation="silu")
        torch.autograd.backward([y], [dy])

    ms = time_ms(conv_fwd_bwd, grad_to_none=list(conv_in.values()))
    record(f"conv fwd+bwd T={L}", "triton", dtype=dtype, shapes=shapes, ms=ms,
           min_bytes=4 * b * d * L * es, check=errs)
    ms_f = time_ms(lambda: causal_conv1d_triton(**conv_in, reset=reset, activation="silu"), rep_ms=100)
    record(f"conv fwd T={L}", "triton", dtype=dtype, shapes=shapes, ms=ms_f, min_bytes=2 * b * d * L * es)
    if DEV == "cuda":  # (the interpreter's own tensor ops would be counted on the CPU)
        ops = count_torch_ops(conv_fwd_bwd)
        record(f"conv fwd+bwd T={L}", "triton: torch ops per call besides the kernels", dtype=dtype,
               shapes=shapes, note=f"{sum(ops.values())} ops: {ops}")

    inputs, _ = scan_inputs(b, d, n, L, dtype, layout=layout)
    inputs.pop("u")
    dys = torch.randn(b, d, L, device=DEV, dtype=dtype)
    dh = torch.randn(b, d, n, device=DEV)

    def conv_scan_fwd_bwd():
        xc, _ = causal_conv1d_triton(**conv_in, reset=reset, activation="silu")
        y, h = selective_scan_triton(xc, **inputs, delta_softplus=True, reset=reset)
        torch.autograd.backward([y, h], [dys, dh])

    leaves = [*conv_in.values(), *inputs.values()]
    ms2 = time_ms(conv_scan_fwd_bwd, grad_to_none=leaves)
    record(f"conv+scan fwd+bwd T={L}", "triton (two kernels)", dtype=dtype,
           shapes=dict(shapes, d_state=n, h0=True), ms=ms2,
           min_bytes=scan_min_bytes(b, d, n, L, dtype) + 2 * b * d * L * es,
           note="conv output written and re-read: +4 b*d*L bytes vs a fused kernel")


# --- the GRU baselines and mamba-ssm ---------------------------------------------------------


def bench_gru_module(L, backend, *, b=64, hidden=128):
    from tensordict import TensorDict
    from torchrl.modules import GRUModule, set_recurrent_mode

    case = f"GRU fwd+bwd T={L}"
    shapes = dict(B=b, hidden=hidden, input=hidden, T=L, reset_rate=0.005, h0=True)
    impl = f"torchrl GRUModule ({backend})"
    with guarded(case, impl, torch.float32, shapes):
        gru = GRUModule(input_size=hidden, hidden_size=hidden, in_key="x", out_key="y",
                        recurrent_backend=backend, device=DEV)
        g = torch.Generator(device=DEV).manual_seed(0)
        x = torch.randn(b, L, hidden, device=DEV, generator=g).requires_grad_(True)
        h0 = torch.zeros(b, L, 1, hidden, device=DEV)
        h0[:, 0] = 0.1 * torch.randn(b, 1, hidden, device=DEV, generator=g)
        h0.requires_grad_(True)
        reset = torch.rand(b, L, device=DEV, generator=g) < 0.005
        dy = torch.randn(b, L, hidden, device=DEV)

        def fwd_bwd():
            td = TensorDict({"x": x, "is_init": reset[..., None], "recurrent_state": h0}, batch_size=[b, L])
            with set_recurrent_mode(True):
                y = gru(td)["y"]
            y.backward(dy)

        ms = time_ms(fwd_bwd, grad_to_none=[x, h0], slow=True)
        peak, over = peak_memory_gb(fwd_bwd)
        record(case, impl, dtype=torch.float32, shapes=shapes, ms=ms, peak_gb=peak, peak_over_inputs_gb=over)


def bench_cudnn_gru(L, *, b=64, hidden=128):
    case = f"GRU fwd+bwd T={L}"
    shapes = dict(B=b, hidden=hidden, input=hidden, T=L, resets="none (cuDNN cannot)", h0=True)
    with guarded(case, "cuDNN nn.GRU (no resets)", torch.float32, shapes):
        gru = torch.nn.GRU(hidden, hidden, batch_first=True, device=DEV)
        x = torch.randn(b, L, hidden, device=DEV, requires_grad=True)
        h0 = (0.1 * torch.randn(1, b, hidden, device=DEV)).requires_grad_(True)
        dy = torch.randn(b, L, hidden, device=DEV)

        def fwd_bwd():
            y, _ = gru(x, h0)
            y.backward(dy)

        ms = time_ms(fwd_bwd, grad_to_none=[x, h0], slow=L > 5000)
        peak, over = peak_memory_gb(fwd_bwd)
        record(case, "cuDNN nn.GRU (no resets)", dtype=torch.float32, shapes=shapes, ms=ms, peak_gb=peak,
               peak_over_inputs_gb=over)


def bench_mamba_ssm(L, *, b=64, d=256, n=16):
    shapes = dict(B=b, d_inner=d, d_state=n, T=L)
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception as e:
        record(f"scan fwd+bwd T={L}", "mamba-ssm selective_scan_fn", dtype=torch.float32, shapes=shapes,
               note=f"unavailable: {type(e).__name__}: {str(e)[:80]}")
    else:
        inputs, _ = scan_inputs(b, d, n, L, torch.float32)
        dy = torch.randn(b, d, L, device=DEV)

        def fwd_bwd():
            # mamba-ssm's Mamba-1 scan has no resets; initial state unsupported in the fused path
            y = selective_scan_fn(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                                  inputs["D"], inputs["z"], inputs["delta_bias"], delta_softplus=True)
            y.backward(dy)

        ms = time_ms(fwd_bwd, grad_to_none=list(inputs.values()))
        record(f"scan fwd+bwd T={L}", "mamba-ssm selective_scan_fn (no resets, no h0)", dtype=torch.float32,
               shapes=shapes, ms=ms, min_bytes=scan_min_bytes(b, d, n, L, torch.float32))
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # noqa: F401
    except Exception as e:
        record(f"scan fwd+bwd T={L}", "mamba-ssm mamba_chunk_scan_combined", dtype=torch.float32, shapes=shapes,
               note=f"unavailable: {type(e).__name__}: {str(e)[:80]}")


# --- the rollout step -----------------------------------------------------------------------


def bench_policy_step(num_envs=4096, d_model=128, input_size=32):
    from mamba_rl import MambaModule
    from mamba_rl.kernels.triton_step import MixerStepWorkspace, mamba_mixer_step

    case = f"policy step {num_envs} envs" + ("" if d_model == 128 else f", d_model {d_model}")
    shapes = dict(envs=num_envs, d_model=d_model, d_inner=2 * d_model, d_state=16, d_conv=4, layers=1,
                  input_size=input_size, reset_rate=0.01)
    torch.manual_seed(0)
    module = MambaModule(input_size, d_model, 1, in_key="observation", out_key="features", backend="torch", device=DEV)
    block = module.layers[0]
    mixer = block.mixer
    d, n = mixer.d_inner, mixer.d_state
    g = torch.Generator(device=DEV).manual_seed(1)
    x = torch.randn(num_envs, input_size, device=DEV, generator=g)
    reset = torch.rand(num_envs, device=DEV, generator=g) < 0.01
    state0 = module.zero_state((num_envs,))
    state0 = type(state0)(torch.randn_like(state0.ssm), torch.randn_like(state0.conv))

    # in place: states and every buffer preallocated, one Triton launch between the matmuls
    ssm = state0.ssm[:, 0].clone()
    conv = state0.conv[:, 0].clone()
    out = torch.empty(num_envs, d, device=DEV)
    workspace = MixerStepWorkspace(num_envs, mixer.dt_rank, n, DEV)
    conv_w = mixer.conv1d.weight.squeeze(1).contiguous()
    with torch.no_grad():
        A = mixer.A.contiguous()

    def mixer_kernels():
        mamba_mixer_step(xz_static, conv, ssm, conv_w, mixer.conv1d.bias, mixer.x_proj.weight,
                                 mixer.dt_proj.weight, mixer.dt_proj.bias, A, mixer.D, reset, out, workspace)

    def fused_policy_step():
        h = module.input_proj(x)
        xz = mixer.in_proj(block.norm(h))
        mamba_mixer_step(xz, conv, ssm, conv_w, mixer.conv1d.bias, mixer.x_proj.weight,
                                 mixer.dt_proj.weight, mixer.dt_proj.bias, A, mixer.D, reset, out, workspace)
        return module.norm_f(h + mixer.out_proj(out))

    with torch.no_grad():
        y_ref, s_ref = module.step(x, state0, reset)
        y_fused = fused_policy_step()
        errs = {"y": rel_err(y_fused, y_ref), "ssm": rel_err(ssm, s_ref.ssm[:, 0]),
                "conv": rel_err(conv, s_ref.conv[:, 0])}
        if not max(errs.values()) <= 1e-4:
            raise AssertionError(f"fused policy step differs from MambaModule.step: {errs}")
        xz_static = mixer.in_proj(block.norm(module.input_proj(x)))

        state_bytes = num_envs * d * (2 * n * 4 + 2 * 3 * 4)
        act_bytes = num_envs * d * 4 * 3 + num_envs * (mixer.dt_rank + 2 * n) * 4 * 2
        for kernel, us in profile_kernels(mixer_kernels).items():
            record(case, f"kernel {kernel} (eager, torch.profiler)", dtype=torch.float32,
                   shapes=shapes, ms=us / 1e3)
        state_copy = torch.empty_like(ssm)
        ms = time_ms(lambda: state_copy.copy_(ssm), rep_ms=100)
        record(case, "torch copy of the fp32 SSM state (reference)", dtype=torch.float32,
               shapes=shapes, ms=ms, min_bytes=2 * ssm.numel() * 4,
               note="reading and writing the state alone: the floor of any step that updates it")
        ms, _ = graph_replay_ms(mixer_kernels)
        record(case, "mixer step kernels only (graph)", dtype=torch.float32, shapes=shapes,
               ms=ms, min_bytes=state_bytes + act_bytes, check=errs,
               note="between in_proj and out_proj; states in place")
        for kernel, us in profile_kernels(fused_policy_step).items():
            record(case, f"whole step: kernel {kernel} (eager, torch.profiler)", dtype=torch.float32,
                   shapes=shapes, ms=us / 1e3)
        ms, _ = graph_replay_ms(fused_policy_step)
        policy_bytes = state_bytes + act_bytes + num_envs * (input_size + 2 * d_model + 2 * d + d + 2 * d_model) * 4
        record(case, "fused in-place step (graph)", dtype=torch.float32, shapes=shapes, ms=ms,
               min_bytes=policy_bytes, check=errs, note="input_proj, norm, in_proj, mixer kernel, out_proj, norm")

        # MambaModule.step without a gradient: on Triton each layer is the fused step above
        for backend in ("torch", "triton"):
            module.backend = backend
            y_b, s_b = module.step(x, state0, reset)
            check = {"y": rel_err(y_b, y_ref), "ssm": rel_err(s_b.ssm, s_ref.ssm),
                     "conv": rel_err(s_b.conv, s_ref.conv)}
            if not max(check.values()) <= 1e-4:
                raise AssertionError(f"MambaModule.step {backend} differs from the torch step: {check}")
            state = type(state0)(state0.ssm.clone(), state0.conv.clone())

            def pure_step():
                y, new = module.step(x, state, reset)
                state.ssm.copy_(new.ssm)
                state.conv.copy_(new.conv)
                return y

            def step_in_place():
                return module.step(x, state, reset, out_state=state)[0]

            for impl, fn, note in ((f"MambaModule.step {backend}", pure_step, "pure step + copy into the state"),
                                   (f"MambaModule.step {backend} in place", step_in_place, "out_state=state")):
                with guarded(case, f"{impl} (graph)", torch.float32, shapes):
                    ms, _ = graph_replay_ms(fn)
                    record(case, f"{impl} (graph)", dtype=torch.float32, shapes=shapes, ms=ms,
                           min_bytes=policy_bytes, check=check, note=note)
                with guarded(case, f"{impl} (eager)", torch.float32, shapes):
                    ms = time_ms(fn, rep_ms=100)
                    record(case, f"{impl} (eager)", dtype=torch.float32, shapes=shapes, ms=ms,
                           min_bytes=policy_bytes, note=note)
        module.backend = "torch"


# --- tile sweeps ----------------------------------------------------------------------------


SCAN_VARIANTS = [
    # (name, overrides of SCAN_CONFIG): time ranges run in parallel in the forward (F) and the
    # backward (B); r: ptxas register cap (maxnreg); `seq` is one range each way (version 5);
    # `tl.sum dBC`: the backward's dB / dC lane sums as one butterfly per value (version 6);
    # `accurate math`: softplus and sigmoid from the accurate exp / log / division (version 7);
    # `bwd 16 channels`: a channel's states split over two lanes in the backward (fewer registers,
    # more warps; its dB / dC sums are tl.sum)
    ("F4r128 B2 ck16", {}),
    ("accurate math", {"fast_math": False}),
    ("tl.sum dBC", {"bwd_reduce_scatter": False}),
    ("seq", {"fwd_ranges": 1, "bwd_ranges": 1, "fwd_maxnreg": None}),
    ("F8r128 B2", {"fwd_ranges": 8}),
    ("F4r128 B2r232", {"bwd_maxnreg": 232}),
    ("F4r128 B3r168", {"bwd_ranges": 3, "bwd_maxnreg": 168}),
    ("local8", {"local_block_t": 8}),
    ("no h prefetch", {"bwd_prefetch_h": False}),
    ("bwd 16 channels", {"bwd_block_d": 16}),
    ("prefetch 2", {"prefetch_chunks": 2}),
    # `1-step`: backward chunks of one step, whose entering state is read back from the segment's
    # scratch (no rerun; fewer values live per chunk, so more warps when the registers are capped)
    ("1-step B2", {"bwd_chunk_steps": 1}),
    ("1-step B3r168", {"bwd_chunk_steps": 1, "bwd_ranges": 3, "bwd_maxnreg": 168}),
    ("1-step B4r128", {"bwd_chunk_steps": 1, "bwd_ranges": 4, "bwd_maxnreg": 128}),
    # the backward's per-segment scratch of chunk states (`hseg`, written by the rebuild, read back
    # by the adjoint; version 9: segments of 16 steps, the scratch stored evict-last in L2 and the
    # gradients evict-first, so that the scratch stays in L2): `v8 scratch` is version 8's (segments
    # of 32 steps, default policies); `cg` reads it from L2 without allocating in L1; `discard`
    # drops it from L2 once read (no write-back). (`hseg scalar` and `pipe delta` in
    # results/scan_H100_hseg_sweep.json and scan_H100_v7.json were measured at d0f07e8 and then
    # removed: both spilled and were slower.)
    ("v8 scratch", {"ck_steps": 32, "bwd_hseg_keep": False, "bwd_out_evict_first": False}),
    ("ck32", {"ck_steps": 32}),
    ("ck8", {"ck_steps": 8}),
    ("no L2 policies", {"bwd_hseg_keep": False, "bwd_out_evict_first": False}),
    ("hseg cg", {"bwd_hseg_cg": True}),
    ("hseg discard", {"bwd_hseg_discard": True}),
    # version 10: the loops named in `pipe_delta` (default: the forward's local pass and the
    # backward's rebuild) load each chunk's raw deltas one chunk ahead (ncu on version 9: the first
    # use of each step's delta was the most stalled instruction of the kernels)
    ("no delta pipe", {"pipe_delta": ()}),
    ("pipe all", {"pipe_delta": ("fwd_local", "fwd", "bwd_local", "bwd_rebuild", "bwd_adjoint")}),
    ("pipe all but adjoint", {"pipe_delta": ("fwd_local", "fwd", "bwd_local", "bwd_rebuild")}),
]


def sweep_variant(kernel, L, name, overrides, fwd, fwd_bwd, leaves, check=None):
    """Time one tile variant (``fwd`` and ``fwd_bwd`` are calls), record it in SWEEP and print it."""
    try:
        if check is not None:
            check()
        ms_f = time_ms(fwd, rep_ms=60)
        ms = time_ms(fwd_bwd, grad_to_none=leaves, rep_ms=100)
        row = dict(kernel=kernel, T=L, variant=name, overrides=overrides, fwd_ms=ms_f, fwd_bwd_ms=ms)
        def fwd_bwd_fresh_grads():  # (accumulating into .grad would add an elementwise kernel)
            for t in leaves:
                t.grad = None
            fwd_bwd()

        kernels = profile_kernels(fwd_bwd_fresh_grads, reps=10)
        if kernels:  # device time per fwd+bwd of each kernel (us)
            row["kernels_us"] = {k: round(v, 1) for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:8]}
    except Exception as e:
        row = dict(kernel=kernel, T=L, variant=name, overrides=overrides, error=f"{type(e).__name__}: {str(e)[:200]}")
    SWEEP.append(row)
    write_json()
    print(f"sweep {kernel} T={L:6d} {name:36s} "
          + (f"fwd {row['fwd_ms']:8.3f} ms  fwd+bwd {row['fwd_bwd_ms']:8.3f} ms" if "error" not in row
             else row["error"])
          + "".join(f"\n    {k[:40]:40s} {v:9.1f} us" for k, v in row.get("kernels_us", {}).items()), flush=True)


def sweep_scan(lengths, b=64, d=256, n=16, apply_best=False, variants=None):
    """Time each SCAN_VARIANTS entry; with ``apply_best`` keep the fastest at the longest T."""
    from mamba_rl.kernels import triton_scan

    base = dict(triton_scan.SCAN_CONFIG)
    for L in lengths:
        inputs, reset = scan_inputs(b, d, n, L, torch.float32)
        dy = torch.randn(b, L, d, device=DEV).transpose(1, 2)
        dh = torch.randn(b, d, n, device=DEV)
        leaves = list(inputs.values())
        for name, overrides in variants or SCAN_VARIANTS:
            triton_scan.SCAN_CONFIG.clear()
            triton_scan.SCAN_CONFIG.update(base, **overrides)
            sweep_variant(
                "scan", L, name, overrides,
                lambda: scan_call(triton_scan.selective_scan_triton, inputs, reset),
                lambda: scan_fwd_bwd(triton_scan.selective_scan_triton, inputs, reset, dy, dh),
                leaves, check=lambda: check_scan(4, d, n, 300, torch.float32),
            )
        del inputs, dy, dh, leaves
        if DEV == "cuda":
            torch.cuda.empty_cache()
    triton_scan.SCAN_CONFIG.clear()
    triton_scan.SCAN_CONFIG.update(base)
    if apply_best:
        timed = [r for r in SWEEP if r["kernel"] == "scan" and r["T"] == lengths[-1] and "error" not in r]
        if timed:
            best = min(timed, key=lambda r: r["fwd_bwd_ms"])
            triton_scan.SCAN_CONFIG.update(best["overrides"])
            META["scan_config_applied"] = best["variant"]
            print(f"applying scan variant {best['variant']}: {triton_scan.SCAN_CONFIG}", flush=True)


CONV_VARIANTS = [
    # forward tile (channels x steps, warps), then the backward's ("1p": dx recomputing dy' at
    # every shift, as the backward did before the two-pass one; "r": time tiles per program of the
    # dy' / dweight kernel)
    ("f16x64w4 b16x32w4 r32", {}),
    ("f16x64w4 1p b16x32w4", {"bwd_two_pass": False}),
    ("f16x64w4 b16x32w4 r8", {"bwd_range_tiles": 8}),
    ("f16x64w4 b16x32w4 r128", {"bwd_range_tiles": 128}),
    ("f16x64w4 b16x64w4", {"bwd_block_t": 64}),
    ("f16x64w4 b32x32w4", {"bwd_block_d": 32}),
    ("f32x64w4 b32x64w8", {"fwd_block_d": 32, "bwd_block_d": 32, "bwd_block_t": 64, "bwd_warps": 8}),
    ("f16x128w4 b16x128w4", {"fwd_block_t": 128, "bwd_block_t": 128}),
    ("f16x64w2 b16x32w2", {"fwd_warps": 2, "bwd_warps": 2}),
]


def sweep_conv(L, b=64, d=256, layout="channels_last"):
    from mamba_rl.kernels import triton_conv

    base = dict(triton_conv.CONV_CONFIG)
    conv_in, reset = conv_inputs(b, d, L, torch.float32, layout=layout)
    dy = torch.randn(b, d, L, device=DEV)
    for name, overrides in CONV_VARIANTS:
        triton_conv.CONV_CONFIG.clear()
        triton_conv.CONV_CONFIG.update(base, **overrides)

        def fwd_bwd():
            y, _ = triton_conv.causal_conv1d_triton(**conv_in, reset=reset, activation="silu")
            y.backward(dy)

        sweep_variant("conv", L, f"{name} {layout}", overrides,
                      lambda: triton_conv.causal_conv1d_triton(**conv_in, reset=reset, activation="silu"),
                      fwd_bwd, list(conv_in.values()),
                      check=lambda: check_conv(min(b, 4), d, min(L, 300), torch.float32, layout=layout))
    triton_conv.CONV_CONFIG.clear()
    triton_conv.CONV_CONFIG.update(base)


STEP_VARIANTS = [
    # envs e per program, channels k per conv/x_proj loop step, channels d per SSM tile, warps w
    # (tl.dot for x_proj from 16 envs a program). Two launches (conv and x_proj, then the SSM
    # update), x_proj split over channel ranges, and the states loaded before the conv lost in
    # results/policy_step_H100_v4_sweep.json.
    ("e2 k64 d64 w4", {}),
    ("e1 k64 d64 w4", {"block_e": 1}),
    ("e4 k64 d64 w4", {"block_e": 4}),
    ("e2 k32 d64 w4", {"block_k": 32}),
    ("e2 k64 d128 w4", {"block_d": 128}),
    ("e4 k64 d64 w8", {"block_e": 4, "warps": 8}),
    ("e1 k128 d128 w4", {"block_e": 1, "block_k": 128, "block_d": 128}),
    ("e16 k32 d32 w4 (tl.dot)", {"block_e": 16, "block_k": 32, "block_d": 32}),
]


def sweep_step(num_envs=4096, d_model=128):
    """Each of STEP_VARIANTS on the mixer step alone (CUDA graph), checked first against the
    PyTorch step on the same inputs."""
    from mamba_rl.kernels import naive, triton_step

    base = dict(triton_step.STEP_CONFIG)
    d, n, R = 2 * d_model, 16, math.ceil(d_model / 16)
    g = torch.Generator(device=DEV).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=DEV, generator=g)  # noqa: E731
    xz, conv, ssm = r(num_envs, 2 * d), r(num_envs, d, 3), r(num_envs, d, n)
    cw, cb, wx, wdt, bdt = r(d, 4), r(d), 0.1 * r(R + 2 * n, d), r(d, R), r(d)
    A, D = -torch.rand(d, n, device=DEV) - 0.1, r(d)
    reset = torch.rand(num_envs, device=DEV) < 0.01
    out = torch.empty(num_envs, d, device=DEV)
    ws = triton_step.MixerStepWorkspace(num_envs, R, n, DEV)

    def one_step(conv_state, ssm_state):
        triton_step.mamba_mixer_step(xz, conv_state, ssm_state, cw, cb, wx, wdt, bdt, A, D, reset, out, ws)
        return out.clone(), conv_state, ssm_state

    # the PyTorch reference of the same step
    x_conv, conv_ref = naive.causal_conv1d_step_ref(xz[:, :d], conv, cw, cb, "silu", reset)
    dt, B, C = torch.split(x_conv @ wx.T, [R, n, n], dim=-1)
    y_ref, ssm_ref = naive.selective_state_step_ref(ssm, x_conv, dt @ wdt.T, A, B, C, D, xz[:, d:], bdt, True, reset)
    reference = (y_ref, conv_ref, ssm_ref)
    conv_t, ssm_t = conv.clone(), ssm.clone()  # the timed steps' states (conv and ssm stay as drawn)
    for name, overrides in STEP_VARIANTS:
        triton_step.STEP_CONFIG.clear()
        triton_step.STEP_CONFIG.update(base, **overrides)
        try:
            check = max(rel_err(a, b) for a, b in zip(one_step(conv.clone(), ssm.clone()), reference))
            if not check <= 1e-5:
                raise AssertionError(f"differs from the PyTorch step: max rel err {check:.2e}")
            ms, _ = graph_replay_ms(lambda: one_step(conv_t, ssm_t))
            row = dict(kernel="mixer step", envs=num_envs, d_model=d_model, variant=name, overrides=overrides,
                       graph_us=1e3 * ms, check=check)
        except Exception as e:
            row = dict(kernel="mixer step", envs=num_envs, d_model=d_model, variant=name, overrides=overrides,
                       error=f"{type(e).__name__}: {str(e)[:200]}")
        SWEEP.append(row)
        write_json()
        print(f"sweep step {num_envs} envs d_model {d_model} {name:30s} "
              + (f"{row['graph_us']:8.1f} us" if "error" not in row else row["error"]), flush=True)
    triton_step.STEP_CONFIG.clear()
    triton_step.STEP_CONFIG.update(base)


def report_kernels():
    """Registers and spills of every compiled variant (from Triton's in-process kernel cache)."""
    from mamba_rl.kernels import triton_conv, triton_scan, triton_step

    rows = []
    for module in (triton_scan, triton_conv, triton_step):
        for name in dir(module):
            fn = getattr(module, name)
            caches = getattr(fn, "device_caches", None)
            if not name.endswith("_kernel") or not caches:
                continue
            for cache in caches.values():
                for kernel in cache[0].values():
                    consts = {k: v for k, v in getattr(kernel, "src", None).constants.items()
                              if isinstance(k, str) and k.isupper()} if hasattr(kernel, "src") else {}
                    rows.append(dict(kernel=name, n_regs=getattr(kernel, "n_regs", None),
                                     n_spills=getattr(kernel, "n_spills", None),
                                     num_warps=getattr(kernel.metadata, "num_warps", None), constants=str(consts)))
    META["compiled_kernels"] = rows
    for row in rows:
        print(f"compiled {row['kernel']:28s} regs {row['n_regs']} spills {row['n_spills']} warps {row['num_warps']} "
              f"{row['constants'][:120]}")


# --- main -----------------------------------------------------------------------------------


SIZES = dict(b=64, d=256, lengths=[1024, 20000], check_long=(1, 32, 16), envs=4096, d_model=128)
DRY_SIZES = dict(b=2, d=8, lengths=[40, 70], check_long=(1, 4, 16), envs=16, d_model=16)


def host_profile(L=1024, b=64, d=256, n=16, calls=50):
    """Where the host's time goes in one scan forward+backward (the GPU left to queue: one sync at
    the end): the whole call with the kernels' binaries launched directly (the default) and through
    the JIT, the forward and the backward alone, each Triton launch through the JIT
    (``kernel[grid](...)``, which binds and specialises every argument) against the same launch
    through its compiled binary (``compiled[grid](*args)``), the torch ops (torch.profiler, host
    side) and a cProfile (top 25 by own time). Recorded in the JSON under ``host_profile``."""
    import cProfile
    import io
    import pstats

    import triton

    from mamba_rl.kernels.triton_launch import launch_config
    from mamba_rl.kernels.triton_scan import selective_scan_triton

    inputs, reset = scan_inputs(b, d, n, L, torch.float32)
    dy = torch.randn(b, L, d, device=DEV).transpose(1, 2)
    dh = torch.randn(b, d, n, device=DEV)
    leaves = list(inputs.values())
    shapes = dict(B=b, d_inner=d, d_state=n, T=L)

    def run(k):
        for _ in range(k):
            for t in leaves:
                t.grad = None
            scan_fwd_bwd(selective_scan_triton, inputs, reset, dy, dh)

    def host_ms(fn, k=calls):
        sync()
        start = time.perf_counter()
        for _ in range(k):
            fn()
        host = time.perf_counter() - start
        sync()
        return 1e3 * host / k, 1e3 * (time.perf_counter() - start) / k

    report = {}
    for direct in (False, True):  # True (the default) last: the rest runs with it
        launch_config["direct"] = direct
        run(5)
        host, wall = host_ms(lambda: run(1))
        how = "direct launches" if direct else "JIT launches"
        print(f"scan fwd+bwd T={L} ({how}): host {host:.3f} ms per call, wall {wall:.3f} ms per call "
              f"({calls} calls queued)", flush=True)
        record(f"scan fwd+bwd T={L}", f"triton ({how}), host time per call (no sync)", dtype=torch.float32,
               shapes=shapes, ms=host, note=f"wall {wall:.3f} ms per call with {calls} calls queued")
        report[f"fwd_bwd_host_ms_{'direct' if direct else 'jit'}"] = host
        report[f"fwd_bwd_wall_ms_{'direct' if direct else 'jit'}"] = wall

    # the forward alone, and the backward alone (on a graph made beforehand)
    with torch.no_grad():
        report["forward_no_grad_host_ms"] = host_ms(lambda: scan_call(selective_scan_triton, inputs, reset))[0]
    report["forward_host_ms"] = host_ms(lambda: scan_call(selective_scan_triton, inputs, reset))[0]
    graphs = []
    for _ in range(calls):
        graphs.append(scan_call(selective_scan_triton, inputs, reset))
    sync()
    report["backward_host_ms"] = host_ms(lambda: torch.autograd.backward(list(graphs.pop()), [dy, dh]))[0]
    del graphs

    # each Triton launch: through the JIT, then the same arguments through the compiled binary
    from triton.runtime.jit import JITFunction

    launches: dict = {}
    jit_run = JITFunction.run

    def timed_run(self, *args, grid, warmup, **kwargs):
        t0 = time.perf_counter()
        kernel = jit_run(self, *args, grid=grid, warmup=warmup, **kwargs)
        row = launches.setdefault(self.__name__, dict(calls=0, jit_s=0.0))
        row["calls"] += 1
        row["jit_s"] += time.perf_counter() - t0
        params = dict(zip(self.arg_names, args))
        params.update({k: v for k, v in kwargs.items() if k in self.arg_names})
        row["last"] = (kernel, grid, [params[name] for name in self.arg_names])
        return kernel

    JITFunction.run = timed_run
    launch_config["direct"] = False
    try:
        run(calls)
    finally:
        JITFunction.run = jit_run
        launch_config["direct"] = True
    sync()
    for name, row in launches.items():
        kernel, grid, full = row.pop("last")
        grid = tuple(grid) + (1,) * (3 - len(grid))
        row["jit_us"] = 1e6 * row.pop("jit_s") / row["calls"]
        row["compiled_us"] = 1e3 * host_ms(lambda: kernel[grid](*full), k=200)[0]
        row["args"] = len(full)
        print(f"  launch {name:28s} {row['calls'] // calls} per call: JIT {row['jit_us']:6.1f} us, "
              f"compiled binary {row['compiled_us']:6.1f} us ({len(full)} arguments)", flush=True)
    report["launches"] = launches
    report["triton"] = triton.__version__

    # torch ops (host side) and kernels per call
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run(10)
        sync()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    report["torch_ops"] = [dict(name=e.key, calls=e.count // 10, self_cpu_us=e.self_cpu_time_total / 10)
                           for e in rows[:30]]
    kernels = [e for e in prof.key_averages() if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
               and e.device_time_total > 0]
    report["gpu_kernels_per_call"] = sum(e.count for e in kernels) / 10
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30), flush=True)

    prof = cProfile.Profile()
    prof.enable()
    run(calls)
    prof.disable()
    sync()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
    report["cprofile_top25"] = buf.getvalue().splitlines()
    print(buf.getvalue(), flush=True)
    META["host_profile"] = report
    print(json.dumps({k: v for k, v in report.items() if k not in ("cprofile_top25", "torch_ops")}, indent=1),
          flush=True)


def main():
    global DEV
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/scan_<gpu>.json)")
    parser.add_argument("--quick", action="store_true", help="T=1024 only")
    parser.add_argument("--sweep", action="store_true", help="also time the kernels' tile configurations")
    parser.add_argument("--only-sweep", action="store_true", help="only the tile sweeps")
    parser.add_argument("--final", action="store_true",
                        help="a few scan variants, the fastest applied, then the benchmark (no conv/step sweeps)")
    parser.add_argument("--apply-best", action="store_true",
                        help="after --sweep, run the benchmark with the fastest scan variant")
    parser.add_argument("--policy-step", action="store_true", help="only the policy step cases")
    parser.add_argument("--scan-only", action="store_true",
                        help="only the scan: its variants (fastest applied), then each layout and dtype")
    parser.add_argument("--conv-only", action="store_true",
                        help="only the conv: its variants at each T, then each layout (and conv -> scan)")
    parser.add_argument("--host-profile", action="store_true",
                        help="only the host side of the scan at T=1024: time per call and a cProfile")
    parser.add_argument("--variants", default=None,
                        help="comma-separated names of SCAN_VARIANTS to sweep (default all)")
    parser.add_argument("--lengths", default=None, help="comma-separated sequence lengths (default 1024,20000)")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny shapes on the CPU through TRITON_INTERPRET=1: checks the script, times nothing")
    args = parser.parse_args()
    sizes = SIZES
    if args.dry_run:
        from mamba_rl.kernels.triton_interpret import enable_cpu_interpreter

        enable_cpu_interpreter()
        DEV = "cpu"
        sizes = DRY_SIZES
    elif not torch.cuda.is_available():
        raise SystemExit("bench_scan.py needs a CUDA device (or --dry-run)")
    import triton

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    started = time.time()
    measure_copy_bandwidth()
    if DEV == "cuda":
        props = torch.cuda.get_device_properties(0)
        device_name, sms = props.name, props.multi_processor_count
    else:
        device_name, sms = "cpu (dry run, TRITON_INTERPRET=1)", 0
    print(f"device {device_name}, {sms} SMs, torch {torch.__version__}, "
          f"triton {triton.__version__}, copy bandwidth {BANDWIDTH['copy_bytes_per_s'] / 1e12:.2f} TB/s", flush=True)

    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"scan_{device_name.split(' (')[0].replace(' ', '_')}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    META.update(out=out, started=started, device=device_name, sms=sms, torch=torch.__version__,
                triton=triton.__version__, python=platform.python_version(), command=" ".join(sys.argv))
    b, d = sizes["b"], sizes["d"]
    lengths = sizes["lengths"][:1] if args.quick else sizes["lengths"]
    if args.lengths:
        lengths = [int(x) for x in args.lengths.split(",")]
    scan_variants = SCAN_VARIANTS
    if args.variants:
        names = args.variants.split(",")
        unknown = sorted(set(names) - {name for name, _ in SCAN_VARIANTS})
        if unknown:
            raise SystemExit(f"--variants: unknown names {unknown}; expected names from SCAN_VARIANTS: "
                             f"{[name for name, _ in SCAN_VARIANTS]}")
        scan_variants = [v for v in SCAN_VARIANTS if v[0] in names]
    if args.host_profile:
        host_profile(L=lengths[0], b=b, d=d, calls=3 if args.dry_run else 50)
        write_json()
        return
    if args.scan_only:
        sweep_scan(lengths, b=b, d=d, apply_best=True, variants=scan_variants)
        if args.only_sweep:
            write_json()
            return
        for i, L in enumerate(lengths):
            check_shape = None if i == 0 else (*sizes["check_long"], L)
            for dtype, layout in ((torch.float32, "channels_last"), (torch.float32, "time_major"),
                                  (torch.bfloat16, "channels_last")):
                with guarded(f"scan fwd+bwd T={L}", "triton", dtype, {"layout": layout}):
                    bench_scan(L, dtype, b=b, d=d, layout=layout,
                               check_shape=check_shape or ((min(b, 8), d, 16, L) if dtype != torch.float32 else None))
        write_json()
        return
    if args.conv_only:
        for L in lengths:
            sweep_conv(L, b=b, d=d)
        for L in lengths:
            for layout in ("channels_last", "time_major"):
                with guarded(f"conv fwd+bwd T={L}", "triton", torch.float32, {"layout": layout}):
                    bench_conv_and_mixer_inner(L, torch.float32, b=b, d=d, layout=layout)
        write_json()
        return
    if args.final:
        sweep_scan(lengths, b=b, d=d, apply_best=True, variants=scan_variants)
    elif args.sweep or args.only_sweep:
        sweep_scan(lengths, b=b, d=d, apply_best=args.apply_best, variants=scan_variants)
        sweep_conv(lengths[-1], b=b, d=d)
        sweep_step(sizes["envs"], sizes["d_model"])
    if args.policy_step:
        # the case, then the GPU trainer's (configs/h1000_gpu.yaml: 1,024 envs, d_model 64)
        for envs, d_model in ((sizes["envs"], sizes["d_model"]), (sizes["envs"] // 4, sizes["d_model"] // 2)):
            sweep_step(envs, d_model)
            with guarded("policy step", "fused", torch.float32, {}):
                bench_policy_step(envs, d_model)
    elif not args.only_sweep:
        for i, L in enumerate(lengths):
            short = i == 0
            with guarded(f"scan fwd+bwd T={L}", "triton", torch.float32, {}):
                bench_scan(L, torch.float32, b=b, d=d, with_reference=short,
                           check_shape=None if short else (*sizes["check_long"], L))
            with guarded(f"scan fwd+bwd T={L}", "triton", torch.bfloat16, {}):
                bench_scan(L, torch.bfloat16, b=b, d=d,
                           check_shape=(min(b, 8), d, 16, L) if short else (*sizes["check_long"], L))
            with guarded(f"conv fwd+bwd T={L}", "triton", torch.float32, {}):
                bench_conv_and_mixer_inner(L, torch.float32, b=b, d=d)
            if short and DEV == "cuda":
                for backend in ("pad", "triton"):
                    bench_gru_module(L, backend, b=b)
            bench_cudnn_gru(L, b=b)
            bench_mamba_ssm(L, b=b, d=d)
        with guarded("policy step", "fused", torch.float32, {}):
            bench_policy_step(sizes["envs"], sizes["d_model"])

    if DEV == "cuda":
        try:
            report_kernels()
        except Exception as e:
            print(f"could not list compiled kernels: {type(e).__name__}: {e}")
    write_json()
    print(f"wrote {out} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
