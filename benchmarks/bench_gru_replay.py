"""Benchmark of the GRU trunk's training replay with resets inside rows, every backend in one run.

Backends (forward + backward of ``out`` and the final state, fp32, one device):

- ``packed``: :func:`mamba_rl.policies.gru_replay.gru_replay` ``(method="packed")``, one cuDNN
  call over the episodes packed by length;
- ``loop``: ``gru_replay(method="loop")``, the GRU equations stepped over the rows (the CPU's
  choice; on CUDA ~10 small kernels a step);
- ``triton_fused``: ``gru_replay(method="triton")``, each layer's recurrence in one fused Triton
  kernel over the rows (``mamba_rl/kernels/triton_gru.py``); ``--triton-configs`` adds a row per
  kernel configuration (rows per program, forward and backward warps); on the CPU it runs through
  Triton's interpreter (for checking the script only);
- ``pad``: ``GRUTrunk.sequence`` through TorchRL's ``GRUModule(recurrent_backend="pad")``;
- ``triton`` (CUDA) and ``scan`` (``--with-scan``, slow): TorchRL's other reset-aware backends,
  through ``GRUTrunk.sequence`` on the same weights;
- ``cudnn_no_resets``: ``nn.GRU`` over the rows as if nothing reset: the floor, not the same numbers.

Every reset-aware backend is checked against ``packed`` first (outputs, final state, gradients of
inputs, initial state and weights; max-abs error over max-abs value, TF32 off) and timed after
(the process's default TF32 flags, as in training). ``ms`` is forward+backward, ``ms_forward``
the forward alone (with autograd recording, as in training). ``pad`` and ``triton_fused`` must
agree with ``packed`` to 1e-4: the script writes its JSON and exits non-zero otherwise.

Cases: ``issue`` (B=64, T=1024, F=H=128, resets at 0.5% of steps) and ``h1000`` (the trainer's
replay at configs/h1000_gpu.yaml: 1024 envs in 2 minibatches so B=512, T=1002, F=6, H=128,
episodes of ``delay + 2`` steps with ``delay`` log-uniform in 1..1000, rows starting mid-episode).
On the CPU the cases are smaller (``cpu``: B=64, T=256, F=6, H=128, delays in 1..250); ``smoke``
(B=4, T=32) runs in seconds anywhere.

    python benchmarks/bench_gru_replay.py --out benchmarks/results/gru_replay_H100.json
    python benchmarks/bench_gru_replay.py --device cpu --threads 2 --out /tmp/gru_replay_cpu.json
    python benchmarks/bench_gru_replay.py --cases h1000 --backends packed triton_fused cudnn_no_resets \
        --triton-configs 16:4:4 16:8:8 32:8:8 --out benchmarks/results/gru_replay_triton_H100.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mamba_rl.policies.gru_replay import gru_replay, pack_episodes  # noqa: E402
from mamba_rl.policies.trunks import GRUState, GRUTrunk  # noqa: E402

# name: (B, T, F, H, num_layers, resets) with resets "rate:<p>" or "episodes:<low>:<high>"
CASES = {
    "issue": (64, 1024, 128, 128, 1, "rate:0.005"),
    "h1000": (512, 1002, 6, 128, 1, "episodes:1:1000"),
    "h1000_2layers": (512, 1002, 6, 128, 2, "episodes:1:1000"),
    "cpu": (64, 256, 6, 128, 1, "episodes:1:250"),
    "cpu_2layers": (64, 256, 6, 128, 2, "episodes:1:250"),
    # seconds on any device: checks the script itself
    "smoke": (4, 32, 6, 16, 2, "episodes:1:20"),
}
CHECK_TOL = 1e-4


def make_reset(batch: int, steps: int, spec: str, generator: torch.Generator) -> torch.Tensor:
    """``[B, T]`` bool resets: at a fixed rate, or at the starts of back-to-back episodes of
    ``delay + 2`` steps (``delay`` log-uniform in ``low..high``), each row entering mid-episode."""
    kind, *args = spec.split(":")
    if kind == "rate":
        return torch.rand(batch, steps, generator=generator) < float(args[0])
    if kind != "episodes":
        raise ValueError(f"resets must be 'rate:<p>' or 'episodes:<low>:<high>', got {spec!r}")
    low, high = int(args[0]), int(args[1])
    reset = torch.zeros(batch, steps, dtype=torch.bool)
    for row in range(batch):
        t = None
        while t is None or t < steps:
            u = torch.rand((), generator=generator).item()
            delay = min(high, int(math.exp(math.log(low) + u * (math.log(high + 1) - math.log(low)))))
            length = delay + 2
            if t is None:
                # the row enters its first episode at a uniform step of it
                t = -int(torch.randint(length, (), generator=generator))
            else:
                reset[row, t] = True
            t += length
    return reset


@contextlib.contextmanager
def fp32_exact():
    """cuDNN and cuBLAS in full fp32 inside the block (TF32 off), the previous flags after it."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - start))
    return times


def parse_triton_config(spec: str) -> dict:
    """``"<block_n>:<fwd_warps>:<bwd_warps>"`` -> a ``GRU_CONFIG`` dict."""
    parts = spec.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"a triton config must be <block_n>:<fwd_warps>:<bwd_warps>, got {spec!r}")
    return dict(zip(("block_n", "fwd_warps", "bwd_warps"), map(int, parts)))


@contextlib.contextmanager
def triton_config(config: dict | None):
    """``GRU_CONFIG`` updated with ``config`` inside the block (unchanged for None)."""
    from mamba_rl.kernels.triton_gru import GRU_CONFIG

    saved = dict(GRU_CONFIG)
    GRU_CONFIG.update(config or {})
    try:
        yield
    finally:
        GRU_CONFIG.clear()
        GRU_CONFIG.update(saved)


def run_case(
    name: str, device: torch.device, backends: list[str], warmup: int, repeats: int, triton_configs: list[dict]
) -> list[dict]:
    batch, steps, features, hidden_size, layers, reset_spec = CASES[name]
    generator = torch.Generator().manual_seed(0)
    reset = make_reset(batch, steps, reset_spec, generator).to(device)
    torch.manual_seed(0)
    trunks = {"pad": GRUTrunk(features, hidden_size, layers, recurrent_backend="pad", device=device)}
    gru = trunks["pad"].core.gru
    x = torch.randn(batch, steps, features, device=device, requires_grad=True)
    h0 = (0.5 * torch.randn(batch, layers, hidden_size, device=device)).requires_grad_(True)
    d_out = torch.randn(batch, steps, hidden_size, device=device)
    d_final = torch.randn(batch, layers, hidden_size, device=device)
    num_episodes = int(reset[:, 1:].sum()) + batch
    shapes = dict(
        B=batch,
        T=steps,
        F=features,
        H=hidden_size,
        num_layers=layers,
        resets=reset_spec,
        episodes=num_episodes,
        mean_episode_len=round(batch * steps / num_episodes, 1),
    )

    def trunk_run(backend):
        if backend not in trunks:
            trunk = GRUTrunk(features, hidden_size, layers, recurrent_backend=backend, device=device)
            trunk.load_state_dict(trunks["pad"].state_dict())
            trunks[backend] = trunk
        trunk = trunks[backend]

        def run():
            out, state = trunk.sequence(x, GRUState(h0), reset)
            return out, state.hidden, trunk

        return run

    def replay_run(method):
        def run():
            out, final = gru_replay(gru, x, h0, reset, method=method)
            return out, final, trunks["pad"]

        return run

    packed_run = replay_run("packed")

    def no_resets_run():
        out, final = gru(x, h0.transpose(0, 1).contiguous())
        return out, final.transpose(0, 1), trunks["pad"]

    runs = {
        "packed": packed_run,
        "loop": replay_run("loop"),
        "triton_fused": replay_run("triton"),
        "cudnn_no_resets": no_resets_run,
    }
    # (row name, backend, GRU_CONFIG override): one row per triton_fused configuration
    variants = []
    for backend in backends:
        if backend == "triton_fused" and triton_configs:
            for c in triton_configs:
                tag = f"{backend}[{c['block_n']}:{c['fwd_warps']}:{c['bwd_warps']}]"
                variants.append((tag, backend, c))
        else:
            variants.append((backend, backend, None))

    def fwd_bwd(run):
        out, final, module = run()
        torch.autograd.backward([out, final], [d_out, d_final])
        return out, final, module

    def results(run):
        x.grad = h0.grad = None
        for p in gru.parameters():
            p.grad = None
        for trunk in trunks.values():
            trunk.zero_grad(set_to_none=True)
        out, final, module = fwd_bwd(run)
        grads = {"x": x.grad, "h0": h0.grad}
        grads.update({f"gru.{n}": p.grad for n, p in module.core.gru.named_parameters()})
        return {"out": out.detach(), "final": final.detach(), **{f"grad {k}": v.clone() for k, v in grads.items()}}

    # the check runs in full fp32 (no TF32 in cuDNN or cuBLAS): the backends batch the episodes
    # differently, so TF32 rounding would differ between them; the timings use the process defaults
    with fp32_exact():
        reference = results(packed_run)
    rows = []
    for tag, backend, config in variants:
        row = dict(case=name, backend=tag, device=str(device), dtype="float32", shapes=shapes)
        if config is not None:
            row["triton_config"] = config
        try:
            run = runs[backend] if backend in runs else trunk_run(backend)
            if backend != "cudnn_no_resets":
                with fp32_exact(), triton_config(config):
                    got = results(run)
                errors = {
                    k: ((got[k] - ref).abs().max() / ref.abs().max().clamp(min=1e-30)).item()
                    for k, ref in reference.items()
                }
                row["max_rel_error_vs_packed"] = max(errors.values())
                row["errors_vs_packed"] = errors
                if backend in ("pad", "triton_fused") and not row["max_rel_error_vs_packed"] <= CHECK_TOL:
                    row["check_failed"] = f"{tag} and packed differ by more than {CHECK_TOL}: {errors}"
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                start_bytes = torch.cuda.memory_allocated(device)
            with triton_config(config):
                times = time_ms(lambda: fwd_bwd(run), device, warmup, repeats)
                row["ms_forward"] = statistics.median(time_ms(run, device, warmup, repeats))
            row["ms"] = statistics.median(times)
            row["ms_all"] = [round(t, 3) for t in times]
            if device.type == "cuda":
                # above what was allocated before the timed calls (inputs, the check's tensors)
                row["peak_gb"] = (torch.cuda.max_memory_allocated(device) - start_bytes) / 1e9
        except Exception as e:  # a backend that cannot run here is recorded, not fatal
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        rows.append(row)
        print_row(row)
    layout_ms = time_ms(lambda: pack_episodes(reset), device, warmup, repeats)
    rows.append(
        dict(
            case=name, backend="pack_episodes only", device=str(device), shapes=shapes, ms=statistics.median(layout_ms)
        )
    )
    print_row(rows[-1])
    return rows


def print_row(row: dict) -> None:
    shapes = row["shapes"]
    desc = f"B={shapes['B']} T={shapes['T']} F={shapes['F']} H={shapes['H']} L={shapes['num_layers']}"
    ms = f"{row['ms']:9.2f}" if "ms" in row else "        -"
    fwd = f" (fwd {row['ms_forward']:.2f})" if "ms_forward" in row else ""
    err = f"{row['max_rel_error_vs_packed']:.1e}" if "max_rel_error_vs_packed" in row else "-"
    peak = f"{row['peak_gb']:6.2f}" if "peak_gb" in row else "     -"
    print(
        f"{row['case']:<14} {desc:<34} {row['backend']:<20} {ms} ms{fwd}  +peak {peak} GB  err {err:<8}"
        f" {row.get('error', '')}{row.get('check_failed', '')}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON output path")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=sorted(CASES),
        default=None,
        help="default: issue, h1000, h1000_2layers on CUDA; cpu, cpu_2layers on the CPU",
    )
    parser.add_argument("--with-scan", action="store_true", help="also TorchRL's scan backend (slow)")
    parser.add_argument(
        "--backends",
        nargs="+",
        default=None,
        choices=["packed", "loop", "triton_fused", "pad", "triton", "scan", "cudnn_no_resets"],
        help="only these (packed is always the reference of the check)",
    )
    parser.add_argument(
        "--triton-configs",
        nargs="+",
        type=parse_triton_config,
        default=[],
        help="triton_fused rows, one per <block_n>:<fwd_warps>:<bwd_warps> (default: GRU_CONFIG)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on the CPU")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before the timed ones")
    parser.add_argument("--repeats", type=int, default=None, help="default: 10 on CUDA, 3 on the CPU")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cases = args.cases or (["issue", "h1000", "h1000_2layers"] if device.type == "cuda" else ["cpu", "cpu_2layers"])
    repeats = args.repeats or (10 if device.type == "cuda" else 3)
    backends = ["packed", "loop", "pad"]
    if device.type == "cuda":
        backends[2:2] = ["triton_fused"]
        backends.append("triton")
    if args.with_scan:
        backends.append("scan")
    backends.append("cudnn_no_resets")
    if args.backends:
        backends = args.backends
    if device.type != "cuda" and "triton_fused" in backends:
        from mamba_rl.kernels.triton_interpret import enable_cpu_interpreter

        # before mamba_rl.kernels.triton_gru is imported: triton.jit reads TRITON_INTERPRET then
        enable_cpu_interpreter()

    meta = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        warmup=args.warmup,
        repeats=repeats,
        cudnn=torch.backends.cudnn.version() if device.type == "cuda" else None,
        cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
        matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
    )
    try:
        import torchrl

        meta["torchrl"] = torchrl.__version__
    except ImportError:
        pass
    print(json.dumps(meta))
    rows = []
    for name in cases:
        rows.extend(run_case(name, device, backends, args.warmup, repeats, args.triton_configs))
    summary = {}
    for name in cases:
        ms = {r["backend"]: r["ms"] for r in rows if r["case"] == name and "ms" in r}
        if "pad" in ms and "packed" in ms:
            summary[f"{name}: pad / packed"] = ms["pad"] / ms["packed"]
        if "pad" in ms and "loop" in ms:
            summary[f"{name}: pad / loop"] = ms["pad"] / ms["loop"]
        if "cudnn_no_resets" in ms and "packed" in ms:
            summary[f"{name}: packed / cudnn_no_resets"] = ms["packed"] / ms["cudnn_no_resets"]
        for tag in ms:
            if tag.startswith("triton_fused") and "packed" in ms:
                summary[f"{name}: packed / {tag}"] = ms["packed"] / ms[tag]
    for key, value in summary.items():
        print(f"{key}: {value:.2f}x")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, rows=rows, ratios=summary), f, indent=1)
    print(f"wrote {args.out}")
    failed = [f"{r['case']}/{r['backend']}: {r['check_failed']}" for r in rows if "check_failed" in r]
    if failed:
        raise SystemExit("correctness check failed (timings kept in the JSON):\n" + "\n".join(failed))


if __name__ == "__main__":
    main()
