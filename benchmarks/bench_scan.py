"""Benchmark of the stateful selective scan, the causal conv and the rollout step.

Compares, in one run and on one device: the PyTorch reference loop, the fused Triton kernels,
TorchRL's ``GRUModule`` (hidden 128) in recurrent mode with the same resets (each backend), cuDNN
``nn.GRU`` without resets, and mamba-ssm's ``selective_scan_fn`` when it imports. Every Triton
result is checked against the reference before it is timed.

Cases (one H100, fp32 unless noted):
- scan forward+backward, B=64, d_inner=256, d_state=16, resets at 0.5% of steps, h0 given,
  T=1024 (target <= 2 ms) and T=20000 (target <= 15 ms, peak <= 4 GB);
- one policy step of a 1-layer d_model=128 MambaModule for 4096 envs in a CUDA graph (<= 50 us).

For each case the JSON records device, dtype, shapes, median ms, peak memory and the fewest bytes
the case must move, as a fraction of the measured copy bandwidth and of 3 TB/s. The JSON is
rewritten after every result, so a run cut short keeps what it measured.

    python benchmarks/bench_scan.py scan                  # fp32 / bf16, both layouts, T=1024 and 20000
    python benchmarks/bench_scan.py scan --variants default,"one range" --lengths 20000
                                                          # named SCAN_CONFIG variants: checked, then timed
    python benchmarks/bench_scan.py scan --host-profile --lengths 1024   # host time of one fwd+bwd
    python benchmarks/bench_scan.py conv [--sweep]        # the conv and conv -> scan, both layouts
    python benchmarks/bench_scan.py step [--sweep]        # the policy step (4,096 and 1,024 envs)
    python benchmarks/bench_scan.py sweep                 # every tile sweep: scan, conv, step
    python benchmarks/bench_scan.py all                   # every case with its baselines
    python benchmarks/bench_scan.py <command> --dry-run   # tiny shapes on the CPU (interpreter)
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
from dataclasses import dataclass, field

import torch

from mamba_rl.kernels import naive

PEAK_BW = 3.0e12


@dataclass
class Sizes:
    """Shapes of a run: the issue's, or tiny ones for a dry run on the CPU."""

    b: int = 64
    d: int = 256
    n: int = 16
    lengths: tuple = (1024, 20000)
    # (b, d, n) the long sequences are checked at (the float64 reference at full size is slow)
    check_long: tuple = (1, 32, 16)
    envs: int = 4096
    d_model: int = 128


DRY_SIZES = Sizes(b=2, d=8, lengths=(40, 70), check_long=(1, 4, 16), envs=16, d_model=16)


@dataclass
class Bench:
    """One run: the device, the rows measured so far and the JSON they are written to."""

    device: str
    out: str | None = None
    meta: dict = field(default_factory=dict)
    results: list = field(default_factory=list)
    sweep: list = field(default_factory=list)
    copy_bytes_per_s: float | None = None
    _flush: torch.Tensor | None = None

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time_ms(
        self, fn, *, grad_to_none=None, rep_ms: float = 200, warmup_ms: float = 25, reps: int | None = None
    ) -> float:
        """Median milliseconds of ``fn`` over CUDA-event-timed calls, L2 flushed before each (a
        256 MB write, as ``triton.testing.do_bench``). The number of calls fills ``rep_ms``
        after ``warmup_ms`` of warm-up, from a 5-call estimate; ``reps`` fixes it instead (one
        warm-up call). On the CPU (dry run) one call, by the wall clock."""
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return 1e3 * (time.perf_counter() - start)
        if self._flush is None:
            self._flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
        fn()
        self.sync()
        if reps is None:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(5):
                self._flush.zero_()
                fn()
            end.record()
            self.sync()
            estimate = start.elapsed_time(end) / 5
            warmup, reps = max(1, int(warmup_ms / estimate)), max(1, int(rep_ms / estimate))
        else:
            warmup = 0
        for _ in range(warmup):
            fn()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            for t in grad_to_none or ():
                t.grad = None
            self._flush.zero_()
            starts[i].record()
            fn()
            ends[i].record()
        self.sync()
        return float(torch.tensor([s.elapsed_time(e) for s, e in zip(starts, ends)]).median())

    def graph_ms(self, fn, warmup: int = 3) -> float:
        """Capture ``fn`` in a CUDA graph and time its replays (:meth:`time_ms`)."""
        if not self.cuda:
            return self.time_ms(fn)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return self.time_ms(graph.replay)

    def profile_kernels(self, fn, reps: int = 20) -> dict:
        """Device time per call (us) of each kernel ``fn`` launches (torch.profiler); nothing on
        the CPU."""
        from torch.profiler import ProfilerActivity, profile

        if not self.cuda:
            return {}
        fn()
        self.sync()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            self.sync()
        times = {}
        for event in prof.key_averages():
            total = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
            if total > 0 and not event.key.startswith(("Activity", "cuda", "cuLaunch")):
                times[event.key] = total / reps
        return times

    def peak_memory_gb(self, fn) -> tuple[float, float]:
        """(peak allocated during ``fn`` in GB, the part of it above what was allocated before)."""
        if not self.cuda:
            fn()
            return 0.0, 0.0
        self.sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        self.sync()
        peak = torch.cuda.max_memory_allocated()
        return peak / 1e9, (peak - base) / 1e9

    def measure_copy_bandwidth(self) -> None:
        """Device-to-device copy of 1 GiB: bytes read + written per second."""
        n = 1 << 28 if self.cuda else 1 << 10
        a = torch.empty(n, device=self.device, dtype=torch.float32).normal_()
        b = torch.empty_like(a)
        ms = self.time_ms(lambda: b.copy_(a))
        self.copy_bytes_per_s = 2 * a.numel() * 4 / (ms * 1e-3)

    def record(
        self,
        case,
        impl,
        *,
        dtype,
        shapes,
        ms=None,
        min_bytes=None,
        peak_gb=None,
        peak_over_inputs_gb=None,
        peak_over_io_gb=None,
        saved_gb=None,
        check=None,
        note=None,
        error=None,
    ) -> dict:
        row = dict(
            case=case,
            impl=impl,
            dtype=str(dtype).replace("torch.", ""),
            shapes=shapes,
            ms=ms,
            min_bytes=min_bytes,
            peak_gb=peak_gb,
            peak_over_inputs_gb=peak_over_inputs_gb,
            peak_over_io_gb=peak_over_io_gb,
            saved_gb=saved_gb,
            check=check,
            note=note,
            error=error,
        )
        if ms is not None and min_bytes:
            row["bound_ms_3tbs"] = min_bytes / PEAK_BW * 1e3
            row["fraction_of_3tbs"] = min_bytes / (ms * 1e-3) / PEAK_BW
            if self.copy_bytes_per_s:
                row["fraction_of_copy_bw"] = min_bytes / (ms * 1e-3) / self.copy_bytes_per_s
        self.results.append(row)
        self.write_json()
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

    def record_sweep(self, row: dict, line: str) -> None:
        self.sweep.append(row)
        self.write_json()
        print(line, flush=True)

    @contextlib.contextmanager
    def guarded(self, case, impl, dtype, shapes):
        """Record an exception as an error row and go on: a failing case must not hide the others."""
        try:
            yield
        except Exception as e:
            traceback.print_exc()
            self.record(case, impl, dtype=dtype, shapes=shapes, error=f"{type(e).__name__}: {str(e)[:300]}")
        finally:
            if self.cuda:
                torch.cuda.empty_cache()

    def write_json(self) -> None:
        if not self.out:
            return
        from mamba_rl.kernels import triton_conv, triton_scan, triton_step

        payload = dict(
            self.meta,
            copy_bandwidth_bytes_per_s=self.copy_bytes_per_s,
            peak_bandwidth_assumed=PEAK_BW,
            configs=dict(scan=triton_scan.SCAN_CONFIG, conv=triton_conv.CONV_CONFIG, step=triton_step.STEP_CONFIG),
            seconds=time.time() - self.meta["started"],
            results=self.results,
            sweep=self.sweep,
        )
        with open(self.out, "w") as f:
            json.dump(payload, f, indent=1)


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@contextlib.contextmanager
def overridden(config: dict, overrides: dict):
    """``config`` (a kernel module's tile dict) with ``overrides`` applied inside the block."""
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise KeyError(f"unknown configuration keys {unknown}; expected some of {sorted(config)}")
    saved = dict(config)
    config.update(overrides)
    try:
        yield
    finally:
        config.clear()
        config.update(saved)


# --- the scan -------------------------------------------------------------------------------


def scan_inputs(b, d, n, L, dtype, *, device="cuda", seed=0, reset_rate=0.005, layout="channels_last"):
    """The issue's scan inputs. ``layout``: ``"channels_last"``: ``u, delta, z`` stored ``[b, L, d]``
    and ``B, C`` ``[b, L, n]`` (transposed views, as ``MambaMixer`` passes them); ``"time_major"``:
    all stored ``[b, d, L]`` / ``[b, n, L]`` (contiguous in the ``[b, d, L]`` signature)."""
    if layout not in ("channels_last", "time_major"):
        raise ValueError(f"layout must be 'channels_last' or 'time_major', got {layout!r}")
    g = torch.Generator(device=device).manual_seed(seed)

    def r(*s):
        x = torch.randn(*s, device=device, generator=g)
        return x.transpose(1, 2).contiguous().transpose(1, 2) if layout == "channels_last" and len(s) == 3 else x

    dt = torch.exp(torch.rand(d, device=device, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    inputs = dict(
        u=r(b, d, L).to(dtype),
        delta=(0.1 * r(b, d, L)).to(dtype),
        A=-torch.arange(1, n + 1, device=device, dtype=torch.float32).repeat(d, 1),
        B=r(b, n, L).to(dtype),
        C=r(b, n, L).to(dtype),
        D=torch.ones(d, device=device),
        z=r(b, d, L).to(dtype),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),
        h0=0.1 * torch.randn(b, d, n, device=device, generator=g),
    )
    for t in inputs.values():
        t.requires_grad_(True)
    reset = torch.rand(b, L, device=device, generator=g) < reset_rate
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


def check_scan(bench, b, d, n, L, dtype, seed=11, layout="channels_last"):
    """Triton vs the float64 reference on fresh inputs: max relative error over outputs and grads."""
    from mamba_rl.kernels.triton_scan import selective_scan_triton

    inputs, reset = scan_inputs(b, d, n, L, dtype, device=bench.device, seed=seed, reset_rate=0.01, layout=layout)
    g = torch.Generator(device=bench.device).manual_seed(seed + 1)
    dy = torch.randn(b, d, L, device=bench.device, generator=g)
    dh = torch.randn(b, d, n, device=bench.device, generator=g)
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


def bench_scan(bench, L, dtype, *, b=64, d=256, n=16, with_reference=False, check_shape=None, layout="channels_last"):
    """The scan forward, and forward+backward: wall time, the kernels' device times, peak memory
    and what the forward saves for the backward (after a check against the reference)."""
    from mamba_rl.kernels.triton_scan import selective_scan_triton

    dev = bench.device
    case = f"scan fwd+bwd T={L}"
    shapes = dict(B=b, d_inner=d, d_state=n, T=L, reset_rate=0.005, h0=True, layout=layout)
    errs = check_scan(bench, *(check_shape or (b, d, n, L)), dtype, layout=layout)
    inputs, reset = scan_inputs(b, d, n, L, dtype, device=dev, layout=layout)
    dy = torch.randn(b, d, L, device=dev, dtype=dtype)
    if layout == "channels_last":
        dy = dy.transpose(1, 2).contiguous().transpose(1, 2)
    dh = torch.randn(b, d, n, device=dev)
    leaves = list(inputs.values())
    min_bytes = scan_min_bytes(b, d, n, L, dtype)

    def fwd():
        return scan_call(selective_scan_triton, inputs, reset)

    def fwd_bwd():
        scan_fwd_bwd(selective_scan_triton, inputs, reset, dy, dh)

    def fwd_bwd_fresh_grads():  # (accumulating into .grad would add an elementwise kernel)
        for t in leaves:
            t.grad = None
        fwd_bwd()

    # settle first (one short untimed run of each): the first timing after a compile or a long
    # case can read up to 1.5x slow at T=1024, where the host's launches bound the time
    bench.time_ms(fwd, rep_ms=50)
    bench.time_ms(fwd_bwd, grad_to_none=leaves, rep_ms=50)
    es = torch.empty((), dtype=dtype).element_size()
    bench.record(
        f"scan fwd T={L}",
        "triton",
        dtype=dtype,
        shapes=shapes,
        ms=bench.time_ms(fwd, rep_ms=100),
        min_bytes=(4 * b * d * L + 2 * b * n * L) * es + 2 * b * d * n * 4,
        check=errs,
    )
    ms = bench.time_ms(fwd_bwd, grad_to_none=leaves)
    if bench.cuda:
        # the GPU's share alone: at T=1024 the host's launches (Triton kernels, small torch ops,
        # autograd) take about as long as the kernels, so the wall time can include idle gaps
        kernels = bench.profile_kernels(fwd_bwd_fresh_grads)
        bench.record(
            case,
            "triton, sum of kernel times (torch.profiler)",
            dtype=dtype,
            shapes=shapes,
            ms=sum(kernels.values()) / 1e3,
            min_bytes=min_bytes,
            note="; ".join(f"{k} {v:.0f} us" for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:8]),
        )
    peak, over = bench.peak_memory_gb(fwd_bwd_fresh_grads)
    for t in leaves:
        t.grad = None
    # the scan's own working memory at the peak: above the inputs (allocated before) and the outputs
    # y, h_last and the inputs' gradients, which the caller holds whatever computes them
    io_gb = (sum(t.numel() * t.element_size() for t in leaves) + b * d * L * es + b * d * n * 4) / 1e9
    saved = None
    if bench.cuda:
        # memory held between forward and backward, beyond the outputs: the checkpoints
        bench.sync()
        before = torch.cuda.memory_allocated()
        y, h = fwd()
        bench.sync()
        saved = (torch.cuda.memory_allocated() - before - y.numel() * y.element_size() - h.numel() * 4) / 1e9
        del y, h
    bench.record(
        case,
        "triton",
        dtype=dtype,
        shapes=shapes,
        ms=ms,
        min_bytes=min_bytes,
        peak_gb=peak,
        peak_over_inputs_gb=over,
        peak_over_io_gb=over - io_gb if bench.cuda else None,
        saved_gb=saved,
        check=errs,
    )
    if with_reference:
        with bench.guarded(case, "torch reference loop", dtype, shapes):

            def ref_fwd_bwd():
                scan_fwd_bwd(naive.selective_scan_ref, inputs, reset, dy, dh)

            ms_ref = bench.time_ms(ref_fwd_bwd, grad_to_none=leaves, reps=3)
            for t in leaves:
                t.grad = None
            peak_ref, over_ref = bench.peak_memory_gb(ref_fwd_bwd)
            bench.record(
                case,
                "torch reference loop",
                dtype=dtype,
                shapes=shapes,
                ms=ms_ref,
                min_bytes=min_bytes,
                peak_gb=peak_ref,
                peak_over_inputs_gb=over_ref,
            )


# --- the conv -------------------------------------------------------------------------------


def conv_inputs(b, d, L, dtype, *, device="cuda", seed=3, reset_rate=0.005, layout="channels_last"):
    """The conv's inputs (width 4, bias, initial state, resets) in ``layout`` (as :func:`scan_inputs`:
    ``"channels_last"`` is how ``MambaMixer`` passes ``x``)."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(b, d, L, device=device, generator=g)
    if layout == "channels_last":
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    inputs = dict(
        x=x.to(dtype),
        weight=0.5 * torch.randn(d, 4, device=device, generator=g),
        bias=torch.randn(d, device=device, generator=g),
        initial_state=torch.randn(b, d, 3, device=device, generator=g).to(dtype),
    )
    for t in inputs.values():
        t.requires_grad_(True)
    return inputs, torch.rand(b, L, device=device, generator=g) < reset_rate


def check_conv(bench, b, d, L, dtype, layout="channels_last"):
    """Triton conv vs the float64 reference: max relative error over both outputs and all grads."""
    from mamba_rl.kernels.triton_conv import causal_conv1d_triton

    inputs, reset = conv_inputs(b, d, L, dtype, device=bench.device, seed=13, reset_rate=0.01, layout=layout)
    g = torch.Generator(device=bench.device).manual_seed(14)
    dy = torch.randn(b, d, L, device=bench.device, generator=g, dtype=torch.float64)
    ds = torch.randn(b, d, 3, device=bench.device, generator=g, dtype=torch.float64)
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


def bench_conv_and_mixer_inner(bench, L, dtype, *, b=64, d=256, n=16, layout="channels_last", check_shape=None):
    """The conv alone, and conv -> scan as the mixer runs them (unfused), forward+backward."""
    from mamba_rl.kernels.triton_conv import causal_conv1d_triton
    from mamba_rl.kernels.triton_scan import selective_scan_triton

    dev = bench.device
    shapes = dict(B=b, d_inner=d, T=L, width=4, reset_rate=0.005, initial_state=True, layout=layout)
    es = torch.empty((), dtype=dtype).element_size()
    errs = check_conv(bench, *(check_shape or (min(b, 4), d, L)), dtype, layout=layout)
    conv_in, reset = conv_inputs(b, d, L, dtype, device=dev, layout=layout)
    dy = torch.randn(b, d, L, device=dev, dtype=dtype)

    def conv_fwd_bwd():
        y, state = causal_conv1d_triton(**conv_in, reset=reset, activation="silu")
        torch.autograd.backward([y], [dy])

    ms = bench.time_ms(conv_fwd_bwd, grad_to_none=list(conv_in.values()))
    bench.record(
        f"conv fwd+bwd T={L}", "triton", dtype=dtype, shapes=shapes, ms=ms, min_bytes=4 * b * d * L * es, check=errs
    )
    ms_f = bench.time_ms(lambda: causal_conv1d_triton(**conv_in, reset=reset, activation="silu"), rep_ms=100)
    bench.record(f"conv fwd T={L}", "triton", dtype=dtype, shapes=shapes, ms=ms_f, min_bytes=2 * b * d * L * es)
    if bench.cuda:  # (the interpreter's own tensor ops would be counted on the CPU)
        ops = count_torch_ops(conv_fwd_bwd)
        bench.record(
            f"conv fwd+bwd T={L}",
            "triton: torch ops per call besides the kernels",
            dtype=dtype,
            shapes=shapes,
            note=f"{sum(ops.values())} ops: {ops}",
        )

    inputs, _ = scan_inputs(b, d, n, L, dtype, device=dev, layout=layout)
    inputs.pop("u")
    dys = torch.randn(b, d, L, device=dev, dtype=dtype)
    dh = torch.randn(b, d, n, device=dev)

    def conv_scan_fwd_bwd():
        xc, _ = causal_conv1d_triton(**conv_in, reset=reset, activation="silu")
        y, h = selective_scan_triton(xc, **inputs, delta_softplus=True, reset=reset)
        torch.autograd.backward([y, h], [dys, dh])

    leaves = [*conv_in.values(), *inputs.values()]
    bench.record(
        f"conv+scan fwd+bwd T={L}",
        "triton (two kernels)",
        dtype=dtype,
        shapes=dict(shapes, d_state=n, h0=True),
        ms=bench.time_ms(conv_scan_fwd_bwd, grad_to_none=leaves),
        min_bytes=scan_min_bytes(b, d, n, L, dtype) + 2 * b * d * L * es,
        note="conv output written and re-read: +4 b*d*L bytes vs a fused kernel",
    )


# --- the GRU baselines and mamba-ssm ---------------------------------------------------------


def bench_gru_module(bench, L, backend, *, b=64, hidden=128):
    from tensordict import TensorDict
    from torchrl.modules import GRUModule, set_recurrent_mode

    dev = bench.device
    case = f"GRU fwd+bwd T={L}"
    shapes = dict(B=b, hidden=hidden, input=hidden, T=L, reset_rate=0.005, h0=True)
    impl = f"torchrl GRUModule ({backend})"
    with bench.guarded(case, impl, torch.float32, shapes):
        gru = GRUModule(
            input_size=hidden, hidden_size=hidden, in_key="x", out_key="y", recurrent_backend=backend, device=dev
        )
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(b, L, hidden, device=dev, generator=g).requires_grad_(True)
        h0 = torch.zeros(b, L, 1, hidden, device=dev)
        h0[:, 0] = 0.1 * torch.randn(b, 1, hidden, device=dev, generator=g)
        h0.requires_grad_(True)
        reset = torch.rand(b, L, device=dev, generator=g) < 0.005
        dy = torch.randn(b, L, hidden, device=dev)

        def fwd_bwd():
            td = TensorDict({"x": x, "is_init": reset[..., None], "recurrent_state": h0}, batch_size=[b, L])
            with set_recurrent_mode(True):
                y = gru(td)["y"]
            y.backward(dy)

        ms = bench.time_ms(fwd_bwd, grad_to_none=[x, h0], reps=3)
        peak, over = bench.peak_memory_gb(fwd_bwd)
        bench.record(case, impl, dtype=torch.float32, shapes=shapes, ms=ms, peak_gb=peak, peak_over_inputs_gb=over)


def bench_cudnn_gru(bench, L, *, b=64, hidden=128):
    dev = bench.device
    case = f"GRU fwd+bwd T={L}"
    shapes = dict(B=b, hidden=hidden, input=hidden, T=L, resets="none (cuDNN cannot)", h0=True)
    with bench.guarded(case, "cuDNN nn.GRU (no resets)", torch.float32, shapes):
        gru = torch.nn.GRU(hidden, hidden, batch_first=True, device=dev)
        x = torch.randn(b, L, hidden, device=dev, requires_grad=True)
        h0 = (0.1 * torch.randn(1, b, hidden, device=dev)).requires_grad_(True)
        dy = torch.randn(b, L, hidden, device=dev)

        def fwd_bwd():
            y, _ = gru(x, h0)
            y.backward(dy)

        ms = bench.time_ms(fwd_bwd, grad_to_none=[x, h0], reps=3 if L > 5000 else None)
        peak, over = bench.peak_memory_gb(fwd_bwd)
        bench.record(
            case,
            "cuDNN nn.GRU (no resets)",
            dtype=torch.float32,
            shapes=shapes,
            ms=ms,
            peak_gb=peak,
            peak_over_inputs_gb=over,
        )


def bench_mamba_ssm(bench, L, *, b=64, d=256, n=16):
    shapes = dict(B=b, d_inner=d, d_state=n, T=L)
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as e:
        bench.record(
            f"scan fwd+bwd T={L}",
            "mamba-ssm selective_scan_fn",
            dtype=torch.float32,
            shapes=shapes,
            note=f"unavailable: {type(e).__name__}: {str(e)[:80]}",
        )
        return
    inputs, _ = scan_inputs(b, d, n, L, torch.float32, device=bench.device)
    dy = torch.randn(b, d, L, device=bench.device)

    def fwd_bwd():
        # mamba-ssm's Mamba-1 scan has no resets; initial state unsupported in the fused path
        y = selective_scan_fn(
            inputs["u"],
            inputs["delta"],
            inputs["A"],
            inputs["B"],
            inputs["C"],
            inputs["D"],
            inputs["z"],
            inputs["delta_bias"],
            delta_softplus=True,
        )
        y.backward(dy)

    bench.record(
        f"scan fwd+bwd T={L}",
        "mamba-ssm selective_scan_fn (no resets, no h0)",
        dtype=torch.float32,
        shapes=shapes,
        ms=bench.time_ms(fwd_bwd, grad_to_none=list(inputs.values())),
        min_bytes=scan_min_bytes(b, d, n, L, torch.float32),
    )


# --- the rollout step -----------------------------------------------------------------------


def bench_policy_step(bench, num_envs=4096, d_model=128, input_size=32):
    """The fused mixer step, the whole policy step around it and ``MambaModule.step`` (each
    backend, pure and in place), in CUDA graphs and eagerly, checked against the PyTorch step."""
    from mamba_rl import MambaModule
    from mamba_rl.kernels.triton_step import MixerStepWorkspace, mamba_mixer_step

    dev = bench.device
    case = f"policy step {num_envs} envs" + ("" if d_model == 128 else f", d_model {d_model}")
    shapes = dict(
        envs=num_envs,
        d_model=d_model,
        d_inner=2 * d_model,
        d_state=16,
        d_conv=4,
        layers=1,
        input_size=input_size,
        reset_rate=0.01,
    )
    torch.manual_seed(0)
    module = MambaModule(input_size, d_model, 1, in_key="observation", out_key="features", backend="torch", device=dev)
    block = module.layers[0]
    mixer = block.mixer
    d, n = mixer.d_inner, mixer.d_state
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.randn(num_envs, input_size, device=dev, generator=g)
    reset = torch.rand(num_envs, device=dev, generator=g) < 0.01
    state0 = module.zero_state((num_envs,))
    state0 = type(state0)(torch.randn_like(state0.ssm), torch.randn_like(state0.conv))

    # in place: states and every buffer preallocated, one Triton launch between the matmuls
    ssm = state0.ssm[:, 0].clone()
    conv = state0.conv[:, 0].clone()
    out = torch.empty(num_envs, d, device=dev)
    workspace = MixerStepWorkspace(num_envs, mixer.dt_rank, n, dev)
    conv_w = mixer.conv1d.weight.squeeze(1).contiguous()
    with torch.no_grad():
        A = mixer.A.contiguous()

    def mixer_kernel(xz):
        mamba_mixer_step(
            xz,
            conv,
            ssm,
            conv_w,
            mixer.conv1d.bias,
            mixer.x_proj.weight,
            mixer.dt_proj.weight,
            mixer.dt_proj.bias,
            A,
            mixer.D,
            reset,
            out,
            workspace,
        )

    def fused_policy_step():
        h = module.input_proj(x)
        mixer_kernel(mixer.in_proj(block.norm(h)))
        return module.norm_f(h + mixer.out_proj(out))

    with torch.no_grad():
        y_ref, s_ref = module.step(x, state0, reset)
        y_fused = fused_policy_step()
        errs = {
            "y": rel_err(y_fused, y_ref),
            "ssm": rel_err(ssm, s_ref.ssm[:, 0]),
            "conv": rel_err(conv, s_ref.conv[:, 0]),
        }
        if not max(errs.values()) <= 1e-4:
            raise AssertionError(f"fused policy step differs from MambaModule.step: {errs}")
        xz_static = mixer.in_proj(block.norm(module.input_proj(x)))

        state_bytes = num_envs * d * (2 * n * 4 + 2 * 3 * 4)
        act_bytes = num_envs * d * 4 * 3 + num_envs * (mixer.dt_rank + 2 * n) * 4 * 2
        for kernel, us in bench.profile_kernels(lambda: mixer_kernel(xz_static)).items():
            bench.record(
                case, f"kernel {kernel} (eager, torch.profiler)", dtype=torch.float32, shapes=shapes, ms=us / 1e3
            )
        state_copy = torch.empty_like(ssm)
        bench.record(
            case,
            "torch copy of the fp32 SSM state (reference)",
            dtype=torch.float32,
            shapes=shapes,
            ms=bench.time_ms(lambda: state_copy.copy_(ssm), rep_ms=100),
            min_bytes=2 * ssm.numel() * 4,
            note="reading and writing the state alone: the floor of any step that updates it",
        )
        bench.record(
            case,
            "mixer step kernels only (graph)",
            dtype=torch.float32,
            shapes=shapes,
            ms=bench.graph_ms(lambda: mixer_kernel(xz_static)),
            min_bytes=state_bytes + act_bytes,
            check=errs,
            note="between in_proj and out_proj; states in place",
        )
        for kernel, us in bench.profile_kernels(fused_policy_step).items():
            bench.record(
                case,
                f"whole step: kernel {kernel} (eager, torch.profiler)",
                dtype=torch.float32,
                shapes=shapes,
                ms=us / 1e3,
            )
        policy_bytes = state_bytes + act_bytes + num_envs * (input_size + 2 * d_model + 2 * d + d + 2 * d_model) * 4
        bench.record(
            case,
            "fused in-place step (graph)",
            dtype=torch.float32,
            shapes=shapes,
            ms=bench.graph_ms(fused_policy_step),
            min_bytes=policy_bytes,
            check=errs,
            note="input_proj, norm, in_proj, mixer kernel, out_proj, norm",
        )

        # MambaModule.step without a gradient: on Triton each layer is the fused step above
        for backend in ("torch", "triton"):
            module.backend = backend
            y_b, s_b = module.step(x, state0, reset)
            check = {
                "y": rel_err(y_b, y_ref),
                "ssm": rel_err(s_b.ssm, s_ref.ssm),
                "conv": rel_err(s_b.conv, s_ref.conv),
            }
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

            for impl, fn, note in (
                (f"MambaModule.step {backend}", pure_step, "pure step + copy into the state"),
                (f"MambaModule.step {backend} in place", step_in_place, "out_state=state"),
            ):
                with bench.guarded(case, f"{impl} (graph)", torch.float32, shapes):
                    bench.record(
                        case,
                        f"{impl} (graph)",
                        dtype=torch.float32,
                        shapes=shapes,
                        ms=bench.graph_ms(fn),
                        min_bytes=policy_bytes,
                        check=check,
                        note=note,
                    )
                with bench.guarded(case, f"{impl} (eager)", torch.float32, shapes):
                    bench.record(
                        case,
                        f"{impl} (eager)",
                        dtype=torch.float32,
                        shapes=shapes,
                        ms=bench.time_ms(fn, rep_ms=100),
                        min_bytes=policy_bytes,
                        note=note,
                    )
        module.backend = "torch"


# --- sweeps of the kernels' configurations --------------------------------------------------


# SCAN_CONFIG overrides: time ranges run in parallel forward (F) and backward (B), steps per
# checkpoint segment (ck), steps per forward chunk, pieces chained to start the ranges (local)
SCAN_VARIANTS = {
    "default": {},
    "one range": {"fwd_ranges": 1, "bwd_ranges": 1},
    "F8": {"fwd_ranges": 8},
    "B3": {"bwd_ranges": 3},
    "ck32": {"ck_steps": 32},
    "ck8": {"ck_steps": 8},
    "fwd chunk 8": {"fwd_block_t": 8},
    "local32": {"local_ranges": 32},
    "local128": {"local_ranges": 128},
}

# CONV_CONFIG overrides: forward tile (channels x steps, warps), then the backward's (r: time
# tiles per program of the dy' / dweight kernel)
CONV_VARIANTS = {
    "f16x64w4 b16x32w4 r32": {},
    "f16x64w4 b16x32w4 r8": {"bwd_range_tiles": 8},
    "f16x64w4 b16x32w4 r128": {"bwd_range_tiles": 128},
    "f16x64w4 b16x64w4": {"bwd_block_t": 64},
    "f16x64w4 b32x32w4": {"bwd_block_d": 32},
    "f32x64w4 b32x64w8": {"fwd_block_d": 32, "bwd_block_d": 32, "bwd_block_t": 64, "bwd_warps": 8},
    "f16x128w4 b16x128w4": {"fwd_block_t": 128, "bwd_block_t": 128},
    "f16x64w2 b16x32w2": {"fwd_warps": 2, "bwd_warps": 2},
}

# STEP_CONFIG overrides: envs e per program, channels k per conv/x_proj loop step, channels d per
# SSM tile, warps w (tl.dot for x_proj from 16 envs a program)
STEP_VARIANTS = {
    "e2 k64 d64 w4": {},
    "e1 k64 d64 w4": {"block_e": 1},
    "e4 k64 d64 w4": {"block_e": 4},
    "e2 k32 d64 w4": {"block_k": 32},
    "e2 k64 d128 w4": {"block_d": 128},
    "e4 k64 d64 w8": {"block_e": 4, "warps": 8},
    "e1 k128 d128 w4": {"block_e": 1, "block_k": 128, "block_d": 128},
    "e16 k32 d32 w4 (tl.dot)": {"block_e": 16, "block_k": 32, "block_d": 32},
}


def pick_variants(table: dict, names: str | None, what: str) -> dict:
    """The entries of ``table`` named in the comma-separated ``names`` (all when None)."""
    if names is None:
        return table
    chosen = [name.strip() for name in names.split(",")]
    unknown = sorted(set(chosen) - set(table))
    if unknown:
        raise SystemExit(f"--variants: unknown {what} variants {unknown}; expected names among {list(table)}")
    return {name: table[name] for name in chosen}


def sweep_variant(bench, kernel, L, name, overrides, fwd, fwd_bwd, leaves, check):
    """Check one configuration variant, then time ``fwd`` and ``fwd_bwd`` and each kernel's share."""
    try:
        check()
        row = dict(
            kernel=kernel,
            T=L,
            variant=name,
            overrides=overrides,
            fwd_ms=bench.time_ms(fwd, rep_ms=60),
            fwd_bwd_ms=bench.time_ms(fwd_bwd, grad_to_none=leaves, rep_ms=100),
        )

        def fwd_bwd_fresh_grads():  # (accumulating into .grad would add an elementwise kernel)
            for t in leaves:
                t.grad = None
            fwd_bwd()

        kernels = bench.profile_kernels(fwd_bwd_fresh_grads, reps=10)
        if kernels:  # device time per fwd+bwd of each kernel (us)
            row["kernels_us"] = {k: round(v, 1) for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:8]}
    except Exception as e:
        row = dict(kernel=kernel, T=L, variant=name, overrides=overrides, error=f"{type(e).__name__}: {str(e)[:200]}")
    line = (
        f"sweep {kernel} T={L:6d} {name:36s} "
        + (f"fwd {row['fwd_ms']:8.3f} ms  fwd+bwd {row['fwd_bwd_ms']:8.3f} ms" if "error" not in row else row["error"])
        + "".join(f"\n    {k[:40]:40s} {v:9.1f} us" for k, v in row.get("kernels_us", {}).items())
    )
    bench.record_sweep(row, line)


def sweep_scan(bench, lengths, variants, *, b=64, d=256, n=16):
    """Each of ``variants`` (SCAN_CONFIG overrides) at each length, checked at B=4, T=300 first."""
    from mamba_rl.kernels import triton_scan

    for L in lengths:
        inputs, reset = scan_inputs(b, d, n, L, torch.float32, device=bench.device)
        dy = torch.randn(b, L, d, device=bench.device).transpose(1, 2)
        dh = torch.randn(b, d, n, device=bench.device)
        for name, overrides in variants.items():
            with overridden(triton_scan.SCAN_CONFIG, overrides):
                sweep_variant(
                    bench,
                    "scan",
                    L,
                    name,
                    overrides,
                    lambda: scan_call(triton_scan.selective_scan_triton, inputs, reset),
                    lambda: scan_fwd_bwd(triton_scan.selective_scan_triton, inputs, reset, dy, dh),
                    list(inputs.values()),
                    check=lambda: check_scan(bench, min(b, 4), d, n, min(L, 300), torch.float32),
                )
        del inputs, dy, dh
        if bench.cuda:
            torch.cuda.empty_cache()


def sweep_conv(bench, L, variants, *, b=64, d=256, layout="channels_last"):
    """Each of ``variants`` (CONV_CONFIG overrides), checked at B=4, T<=300 first."""
    from mamba_rl.kernels import triton_conv

    conv_in, reset = conv_inputs(b, d, L, torch.float32, device=bench.device, layout=layout)
    dy = torch.randn(b, d, L, device=bench.device)

    def fwd():
        return triton_conv.causal_conv1d_triton(**conv_in, reset=reset, activation="silu")

    def fwd_bwd():
        fwd()[0].backward(dy)

    for name, overrides in variants.items():
        with overridden(triton_conv.CONV_CONFIG, overrides):
            sweep_variant(
                bench,
                "conv",
                L,
                f"{name} {layout}",
                overrides,
                fwd,
                fwd_bwd,
                list(conv_in.values()),
                check=lambda: check_conv(bench, min(b, 4), d, min(L, 300), torch.float32, layout=layout),
            )


def sweep_step(bench, variants, num_envs=4096, d_model=128):
    """Each of ``variants`` (STEP_CONFIG overrides) on the mixer step alone (CUDA graph), checked
    first against the PyTorch step on the same inputs."""
    from mamba_rl.kernels import triton_step

    dev = bench.device
    d, n, R = 2 * d_model, 16, math.ceil(d_model / 16)
    g = torch.Generator(device=dev).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=dev, generator=g)  # noqa: E731
    xz, conv, ssm = r(num_envs, 2 * d), r(num_envs, d, 3), r(num_envs, d, n)
    cw, cb, wx, wdt, bdt = r(d, 4), r(d), 0.1 * r(R + 2 * n, d), r(d, R), r(d)
    A, D = -torch.rand(d, n, device=dev) - 0.1, r(d)
    reset = torch.rand(num_envs, device=dev) < 0.01
    out = torch.empty(num_envs, d, device=dev)
    ws = triton_step.MixerStepWorkspace(num_envs, R, n, dev)

    def one_step(conv_state, ssm_state):
        triton_step.mamba_mixer_step(xz, conv_state, ssm_state, cw, cb, wx, wdt, bdt, A, D, reset, out, ws)
        return out.clone(), conv_state, ssm_state

    # the PyTorch reference of the same step
    x_conv, conv_ref = naive.causal_conv1d_step_ref(xz[:, :d], conv, cw, cb, "silu", reset)
    dt, B, C = torch.split(x_conv @ wx.T, [R, n, n], dim=-1)
    y_ref, ssm_ref = naive.selective_state_step_ref(ssm, x_conv, dt @ wdt.T, A, B, C, D, xz[:, d:], bdt, True, reset)
    reference = (y_ref, conv_ref, ssm_ref)
    conv_t, ssm_t = conv.clone(), ssm.clone()  # the timed steps' states (conv and ssm stay as drawn)
    for name, overrides in variants.items():
        row = dict(kernel="mixer step", envs=num_envs, d_model=d_model, variant=name, overrides=overrides)
        with overridden(triton_step.STEP_CONFIG, overrides):
            try:
                check = max(rel_err(a, b) for a, b in zip(one_step(conv.clone(), ssm.clone()), reference))
                if not check <= 1e-5:
                    raise AssertionError(f"differs from the PyTorch step: max rel err {check:.2e}")
                row.update(graph_us=1e3 * bench.graph_ms(lambda: one_step(conv_t, ssm_t)), check=check)
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        bench.record_sweep(
            row,
            f"sweep step {num_envs} envs d_model {d_model} {name:30s} "
            + (f"{row['graph_us']:8.1f} us" if "error" not in row else row["error"]),
        )


def report_kernels(bench):
    """Registers and spills of every compiled kernel (from Triton's in-process kernel cache)."""
    from mamba_rl.kernels import (
        triton_conv,
        triton_scan_bwd,
        triton_scan_common,
        triton_scan_fwd,
        triton_scan_restart,
        triton_step,
    )

    rows = []
    for module in (triton_scan_fwd, triton_scan_bwd, triton_scan_common, triton_scan_restart, triton_conv, triton_step):
        for name in dir(module):
            fn = getattr(module, name)
            caches = getattr(fn, "device_caches", None)
            if not name.endswith("_kernel") or not caches:
                continue
            for cache in caches.values():
                for kernel in cache[0].values():
                    consts = (
                        {
                            k: v
                            for k, v in getattr(kernel, "src", None).constants.items()
                            if isinstance(k, str) and k.isupper()
                        }
                        if hasattr(kernel, "src")
                        else {}
                    )
                    rows.append(
                        dict(
                            kernel=name,
                            n_regs=getattr(kernel, "n_regs", None),
                            n_spills=getattr(kernel, "n_spills", None),
                            num_warps=getattr(kernel.metadata, "num_warps", None),
                            constants=str(consts),
                        )
                    )
    bench.meta["compiled_kernels"] = rows
    for row in rows:
        print(
            f"compiled {row['kernel']:28s} regs {row['n_regs']} spills {row['n_spills']} warps {row['num_warps']} "
            f"{row['constants'][:120]}"
        )


# --- the host's share -----------------------------------------------------------------------


def host_profile(bench, L=1024, b=64, d=256, n=16, calls=50):
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
    from triton.runtime.jit import JITFunction

    from mamba_rl.kernels.triton_launch import launch_config
    from mamba_rl.kernels.triton_scan import selective_scan_triton

    dev = bench.device
    inputs, reset = scan_inputs(b, d, n, L, torch.float32, device=dev)
    dy = torch.randn(b, L, d, device=dev).transpose(1, 2)
    dh = torch.randn(b, d, n, device=dev)
    leaves = list(inputs.values())
    shapes = dict(B=b, d_inner=d, d_state=n, T=L)

    def run(k):
        for _ in range(k):
            for t in leaves:
                t.grad = None
            scan_fwd_bwd(selective_scan_triton, inputs, reset, dy, dh)

    def host_ms(fn, k=calls):
        bench.sync()
        start = time.perf_counter()
        for _ in range(k):
            fn()
        host = time.perf_counter() - start
        bench.sync()
        return 1e3 * host / k, 1e3 * (time.perf_counter() - start) / k

    report = {}
    for direct in (False, True):  # True (the default) last: the rest runs with it
        launch_config["direct"] = direct
        run(5)
        host, wall = host_ms(lambda: run(1))
        how = "direct launches" if direct else "JIT launches"
        print(
            f"scan fwd+bwd T={L} ({how}): host {host:.3f} ms per call, wall {wall:.3f} ms per call "
            f"({calls} calls queued)",
            flush=True,
        )
        bench.record(
            f"scan fwd+bwd T={L}",
            f"triton ({how}), host time per call (no sync)",
            dtype=torch.float32,
            shapes=shapes,
            ms=host,
            note=f"wall {wall:.3f} ms per call with {calls} calls queued",
        )
        report[f"fwd_bwd_host_ms_{'direct' if direct else 'jit'}"] = host
        report[f"fwd_bwd_wall_ms_{'direct' if direct else 'jit'}"] = wall

    # the forward alone, and the backward alone (on graphs made beforehand)
    with torch.no_grad():
        report["forward_no_grad_host_ms"] = host_ms(lambda: scan_call(selective_scan_triton, inputs, reset))[0]
    report["forward_host_ms"] = host_ms(lambda: scan_call(selective_scan_triton, inputs, reset))[0]
    graphs = [scan_call(selective_scan_triton, inputs, reset) for _ in range(calls)]
    bench.sync()
    report["backward_host_ms"] = host_ms(lambda: torch.autograd.backward(list(graphs.pop()), [dy, dh]))[0]
    del graphs

    # each Triton launch: through the JIT, then the same arguments through the compiled binary
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
    bench.sync()
    for name, row in launches.items():
        kernel, grid, full = row.pop("last")
        grid = tuple(grid) + (1,) * (3 - len(grid))
        row["jit_us"] = 1e6 * row.pop("jit_s") / row["calls"]
        row["compiled_us"] = 1e3 * host_ms(lambda: kernel[grid](*full), k=200)[0] if bench.cuda else None
        row["args"] = len(full)
        print(
            f"  launch {name:28s} {row['calls'] // calls} per call: JIT {row['jit_us']:6.1f} us, "
            f"compiled binary {row['compiled_us']} us ({len(full)} arguments)",
            flush=True,
        )
    report["launches"] = launches
    report["triton"] = triton.__version__

    # torch ops (host side) and kernels per call
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.cuda else [])
    with profile(activities=activities) as prof:
        run(10)
        bench.sync()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    report["torch_ops"] = [
        dict(name=e.key, calls=e.count // 10, self_cpu_us=e.self_cpu_time_total / 10) for e in rows[:30]
    ]
    kernels = [
        e
        for e in prof.key_averages()
        if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA and e.device_time_total > 0
    ]
    report["gpu_kernels_per_call"] = sum(e.count for e in kernels) / 10
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30), flush=True)

    prof = cProfile.Profile()
    prof.enable()
    run(calls)
    prof.disable()
    bench.sync()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
    report["cprofile_top25"] = buf.getvalue().splitlines()
    print(buf.getvalue(), flush=True)
    bench.meta["host_profile"] = report
    print(
        json.dumps({k: v for k, v in report.items() if k not in ("cprofile_top25", "torch_ops")}, indent=1), flush=True
    )


# --- the commands ---------------------------------------------------------------------------


def run_scan(bench, sizes, args):
    """``scan``: named variants only (``--variants``), the host profile, or every dtype and layout."""
    if args.host_profile:
        host_profile(bench, L=sizes.lengths[0], b=sizes.b, d=sizes.d, calls=50 if bench.cuda else 3)
        return
    if args.variants is not None:
        sweep_scan(bench, sizes.lengths, pick_variants(SCAN_VARIANTS, args.variants, "scan"), b=sizes.b, d=sizes.d)
        return
    for i, L in enumerate(sizes.lengths):
        check_long = None if i == 0 else (*sizes.check_long, L)
        for dtype, layout in (
            (torch.float32, "channels_last"),
            (torch.float32, "time_major"),
            (torch.bfloat16, "channels_last"),
        ):
            check_shape = check_long or ((min(sizes.b, 8), sizes.d, 16, L) if dtype != torch.float32 else None)
            with bench.guarded(f"scan fwd+bwd T={L}", "triton", dtype, {"layout": layout}):
                bench_scan(bench, L, dtype, b=sizes.b, d=sizes.d, layout=layout, check_shape=check_shape)


def run_conv(bench, sizes, args):
    """``conv``: its tile variants (``--sweep``), then the conv and conv -> scan in both layouts."""
    if args.sweep:
        for L in sizes.lengths:
            sweep_conv(bench, L, pick_variants(CONV_VARIANTS, args.variants, "conv"), b=sizes.b, d=sizes.d)
    for L in sizes.lengths:
        for layout in ("channels_last", "time_major"):
            with bench.guarded(f"conv fwd+bwd T={L}", "triton", torch.float32, {"layout": layout}):
                bench_conv_and_mixer_inner(bench, L, torch.float32, b=sizes.b, d=sizes.d, layout=layout)


def run_step(bench, sizes, args):
    """``step``: the issue's policy step and the GPU trainer's (configs/h1000_gpu.yaml: 1,024 envs,
    d_model 64), each after its tile variants with ``--sweep``."""
    for envs, d_model in ((sizes.envs, sizes.d_model), (sizes.envs // 4, sizes.d_model // 2)):
        if args.sweep:
            sweep_step(bench, pick_variants(STEP_VARIANTS, args.variants, "step"), envs, d_model)
        with bench.guarded("policy step", "fused", torch.float32, {}):
            bench_policy_step(bench, envs, d_model)


def run_sweep(bench, sizes, args):
    """``sweep``: every tile sweep (scan at each length, conv at the longest, step)."""
    sweep_scan(bench, sizes.lengths, SCAN_VARIANTS, b=sizes.b, d=sizes.d)
    sweep_conv(bench, sizes.lengths[-1], CONV_VARIANTS, b=sizes.b, d=sizes.d)
    sweep_step(bench, STEP_VARIANTS, sizes.envs, sizes.d_model)


def run_all(bench, sizes, args):
    """``all``: every case of the issue at each length, the baselines beside them, the policy step."""
    for i, L in enumerate(sizes.lengths):
        short = i == 0
        with bench.guarded(f"scan fwd+bwd T={L}", "triton", torch.float32, {}):
            bench_scan(
                bench,
                L,
                torch.float32,
                b=sizes.b,
                d=sizes.d,
                with_reference=short,
                check_shape=None if short else (*sizes.check_long, L),
            )
        with bench.guarded(f"scan fwd+bwd T={L}", "triton", torch.bfloat16, {}):
            bench_scan(
                bench,
                L,
                torch.bfloat16,
                b=sizes.b,
                d=sizes.d,
                check_shape=(min(sizes.b, 8), sizes.d, 16, L) if short else (*sizes.check_long, L),
            )
        with bench.guarded(f"conv fwd+bwd T={L}", "triton", torch.float32, {}):
            bench_conv_and_mixer_inner(bench, L, torch.float32, b=sizes.b, d=sizes.d)
        if short and bench.cuda:
            for backend in ("pad", "triton"):
                bench_gru_module(bench, L, backend, b=sizes.b)
        bench_cudnn_gru(bench, L, b=sizes.b)
        bench_mamba_ssm(bench, L, b=sizes.b, d=sizes.d)
    with bench.guarded("policy step", "fused", torch.float32, {}):
        bench_policy_step(bench, sizes.envs, sizes.d_model)


COMMANDS = {"scan": run_scan, "conv": run_conv, "step": run_step, "sweep": run_sweep, "all": run_all}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<command>_<gpu>.json)")
    common.add_argument("--lengths", default=None, help="comma-separated sequence lengths (default 1024,20000)")
    common.add_argument(
        "--dry-run",
        action="store_true",
        help="tiny shapes on the CPU through TRITON_INTERPRET=1: checks the script, times nothing",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    scan = commands.add_parser("scan", parents=[common], help="the scan: every dtype and layout, or named variants")
    scan.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated SCAN_CONFIG variants to check and time, among {list(SCAN_VARIANTS)}",
    )
    scan.add_argument(
        "--host-profile",
        action="store_true",
        help="the host's time per forward+backward at the first length, and a cProfile",
    )
    conv = commands.add_parser("conv", parents=[common], help="the conv and conv -> scan, both layouts")
    conv.add_argument("--sweep", action="store_true", help="first time the conv's tile variants")
    conv.add_argument("--variants", default=None, help=f"with --sweep, these among {list(CONV_VARIANTS)}")
    step = commands.add_parser("step", parents=[common], help="the policy step in a CUDA graph")
    step.add_argument("--sweep", action="store_true", help="first time the mixer step's tile variants")
    step.add_argument("--variants", default=None, help=f"with --sweep, these among {list(STEP_VARIANTS)}")
    commands.add_parser("sweep", parents=[common], help="every tile sweep: scan, conv, step")
    commands.add_parser("all", parents=[common], help="every case with its baselines (GRU, cuDNN, mamba-ssm)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    sizes = Sizes()
    if args.dry_run:
        from mamba_rl.kernels.triton_interpret import enable_cpu_interpreter

        enable_cpu_interpreter()
        sizes = DRY_SIZES
    elif not torch.cuda.is_available():
        raise SystemExit("bench_scan.py needs a CUDA device (or --dry-run)")
    if args.lengths:
        sizes.lengths = tuple(int(x) for x in args.lengths.split(","))
    import triton

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    bench = Bench(device="cpu" if args.dry_run else "cuda")
    bench.measure_copy_bandwidth()
    if bench.cuda:
        props = torch.cuda.get_device_properties(0)
        device_name, sms = props.name, props.multi_processor_count
    else:
        device_name, sms = "cpu (dry run, TRITON_INTERPRET=1)", 0
    print(
        f"device {device_name}, {sms} SMs, torch {torch.__version__}, triton {triton.__version__}, "
        f"copy bandwidth {bench.copy_bytes_per_s / 1e12:.2f} TB/s",
        flush=True,
    )
    bench.out = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)),
        "results",
        f"{args.command}_{device_name.split(' (')[0].replace(' ', '_')}.json",
    )
    os.makedirs(os.path.dirname(os.path.abspath(bench.out)), exist_ok=True)
    bench.meta.update(
        started=time.time(),
        device=device_name,
        sms=sms,
        torch=torch.__version__,
        triton=triton.__version__,
        python=platform.python_version(),
        command=" ".join(sys.argv),
    )
    COMMANDS[args.command](bench, sizes, args)
    if bench.cuda:
        try:
            report_kernels(bench)
        except Exception as e:
            print(f"could not list compiled kernels: {type(e).__name__}: {e}")
    bench.write_json()
    print(f"wrote {bench.out} ({time.time() - bench.meta['started']:.0f} s)")


if __name__ == "__main__":
    main()
