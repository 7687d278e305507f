"""CPU forward + backward of a Mamba trunk (reference scan, chunked scan) against TorchRL's GRUModule.

Checks first: the chunked backend's trunk outputs and parameter gradients equal the reference
backend's, and the chunked scan equals the reference scan at the trunk's own shapes. Then, for
every thread count (``torch.set_num_threads``) and every ``T``, times one warm-up and
``repeats`` rounds; each round runs every case once (so that load from other processes falls on
all cases alike) and the median is kept:

- ``gru``: ``torchrl.modules.GRUModule`` (hidden = d_model, its default ``"pad"`` backend) in
  recurrent mode on a ``[B, T]`` TensorDict holding its per-step ``hidden``;
- ``mamba_chunked`` / ``mamba_torch``: ``MambaModule.sequence`` with the scan backend
  ``"chunked"`` (what ``"auto"`` picks on the CPU) or ``"torch"`` (the reference, a Python loop
  over T);
- ``mamba_chunked_td``: ``MambaModule`` in recurrent mode on a TensorDict holding per-step
  states, as the GRU's (the drop-in comparison: the restart states are gathered from it);
- ``scan_torch``, ``scan_chunked_default``, ``conv_torch``, ``conv_chunked``: the trunk's scan
  alone (``[B, d_inner, T]``, ``d_state``) and its conv alone (reference and chunked backend), to
  show where the trunk's time goes;
- ``scan_chunked_Q{chunk}_S{segment}``: the chunk-size and segment-size sweep of the scan, with
  ``--chunk-sizes`` (off by default: segments larger than the default's leave malloc holding
  different memory, which changes the page faults of the other cases).

``--cases`` runs only the named cases (and ``gru``): ``--cases mamba_chunked`` calls the trunk
with nothing else allocating between its calls but the GRU.

Each case's loss is the sum of its outputs (and, for the scan, of the final state). ``is_init``
is True at about 1% of the steps (and at t = 0 of row 0). Times are wall-clock milliseconds and
this process's CPU milliseconds (``time.process_time``, all threads); ``minor_faults`` are the
pages the case faulted in from the OS (``getrusage``). ``saved_mb`` is the memory that autograd
keeps for the backward (tensors saved by the graph, each storage counted once).
``--keep-freed-memory`` asks glibc's malloc to keep freed memory in the process
(``mallopt``), as ``GLIBC_TUNABLES=glibc.malloc.trim_threshold=...:glibc.malloc.mmap_threshold=...``
would, so that tensors of a few megabytes reuse pages instead of faulting fresh ones.

    python benchmarks/bench_cpu_trunk.py --threads 1 2 --out benchmarks/results/cpu_trunk.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import statistics
import time

import torch
from tensordict import TensorDict
from torchrl.modules import GRUModule, set_recurrent_mode

from mamba_rl import MambaModule
from mamba_rl.kernels import chunked, naive, ops


def make_reset(batch: int, steps: int, prob: float, generator: torch.Generator) -> torch.Tensor:
    reset = torch.rand(batch, steps, generator=generator) < prob
    reset[0, 0] = True
    return reset


def mamba_case(module: MambaModule, x: torch.Tensor, reset: torch.Tensor, backend: str):
    def run():
        module.backend = backend
        out, _ = module.sequence(x, None, reset)
        out.sum().backward()

    return run


def mamba_td_case(module: MambaModule, x: torch.Tensor, reset: torch.Tensor, backend: str):
    """``MambaModule`` in recurrent mode on a TensorDict holding per-step states, as the GRU's
    ``hidden``: the state entering t = 0 and the restart states are read from it."""
    batch, steps, _ = x.shape
    states = module.zero_state((batch, steps))

    def run():
        module.backend = backend
        td = TensorDict(
            {"x": x, module.ssm_key: states.ssm, module.conv_key: states.conv, "is_init": reset[..., None]},
            batch_size=[batch, steps],
        )
        with set_recurrent_mode(True):
            out = module(td).get("y")
        out.sum().backward()

    return run


def gru_case(module: GRUModule, x: torch.Tensor, reset: torch.Tensor):
    batch, steps, _ = x.shape
    hidden = torch.zeros(batch, steps, 1, module.gru.hidden_size)

    def run():
        td = TensorDict({"x": x, "hidden": hidden, "is_init": reset[..., None]}, batch_size=[batch, steps])
        with set_recurrent_mode(True):
            out = module(td).get("y")
        out.sum().backward()

    return run


def scan_inputs(module: MambaModule, batch: int, steps: int, reset: torch.Tensor, generator: torch.Generator):
    """The trunk's scan shapes with values in its range: A from the mixer, delta after its softplus ~ 1e-2."""
    d, n = module.d_inner, module.d_state
    r = lambda *s: torch.randn(*s, generator=generator)  # noqa: E731
    A = module.layers[0].mixer.A.detach()
    return dict(
        u=r(batch, d, steps),
        delta=r(batch, d, steps) - 4.0,
        A=A,
        B=r(batch, n, steps),
        C=r(batch, n, steps),
        D=r(d),
        z=r(batch, d, steps),
        delta_bias=r(d),
        delta_softplus=True,
        reset=reset,
    )


def scan_case(inputs: dict, scan, **kwargs):
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if k in ("u", "delta", "B", "C", "z")}

    def run():
        y, h = scan(**{**inputs, **leaves}, **kwargs)
        (y.sum() + h.sum()).backward()

    return run


def conv_case(
    module: MambaModule, batch: int, steps: int, reset: torch.Tensor, generator: torch.Generator, backend: str
):
    mixer = module.layers[0].mixer
    x = torch.randn(batch, module.d_inner, steps, generator=generator, requires_grad=True)

    def run():
        y, _ = ops.causal_conv1d(
            x, mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias, reset=reset, activation="silu", backend=backend
        )
        y.sum().backward()

    return run


def saved_megabytes(run) -> float:
    """Megabytes that autograd saves for the backward while ``run`` builds its graph."""
    seen = {}

    def pack(t):
        if t.device.type == "cpu" and t.numel():
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values()) / 2**20


def check(module: MambaModule, x: torch.Tensor, reset: torch.Tensor, scan: dict) -> dict:
    """Max abs differences of the chunked backend against the reference (raise if too large)."""
    results = {}
    for backend in ("torch", "chunked"):
        module.zero_grad()
        module.backend = backend
        out, state = module.sequence(x, None, reset)
        (out.sum() + state.ssm.sum()).backward()
        results[backend] = (out.detach(), state.ssm.detach(), [p.grad.clone() for p in module.parameters()])
    ref, new = results["torch"], results["chunked"]
    diffs = {
        "trunk_out": (ref[0] - new[0]).abs().max().item(),
        "trunk_final_ssm": (ref[1] - new[1]).abs().max().item(),
        "trunk_param_grads_rel": max(
            ((a - b).norm() / a.norm().clamp_min(1e-30)).item() for a, b in zip(ref[2], new[2])
        ),
    }
    y_ref, h_ref = naive.selective_scan_ref(**scan)
    y, h = chunked.selective_scan_chunked(**scan)
    diffs["scan_y"] = (y - y_ref).abs().max().item()
    diffs["scan_h_last"] = (h - h_ref).abs().max().item()
    for name, value in diffs.items():
        limit = 1e-3 if name == "trunk_param_grads_rel" else 1e-4
        if not value <= limit:
            raise RuntimeError(f"chunked backend disagrees with the reference: {name} = {value:.3e} > {limit:.0e}")
    module.zero_grad()
    return diffs


def time_cases(cases: dict, repeats: int) -> dict:
    for run in cases.values():
        run()
    wall = {name: [] for name in cases}
    cpu = {name: [] for name in cases}
    faults = {name: [] for name in cases}
    for _ in range(repeats):
        for name, run in cases.items():
            f0, t0, c0 = minor_faults(), time.perf_counter(), time.process_time()
            run()
            wall[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name].append((time.process_time() - c0) * 1e3)
            faults[name].append(minor_faults() - f0)
    return {
        name: {
            "wall_ms": round(statistics.median(wall[name]), 2),
            "cpu_ms": round(statistics.median(cpu[name]), 2),
            "minor_faults": int(statistics.median(faults[name])),
            "wall_ms_all": [round(v, 2) for v in wall[name]],
        }
        for name in cases
    }


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory (no trimming, no mmap below 32 MB), so that a
    tensor of a few megabytes reuses pages instead of faulting fresh ones from the OS."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def bench_steps(args, mamba, gru, steps: int, generator: torch.Generator) -> dict:
    x = torch.randn(args.batch, steps, args.input_size, generator=generator)
    reset = make_reset(args.batch, steps, args.reset_prob, generator)
    scan = scan_inputs(mamba, args.batch, steps, reset, generator)
    diffs = check(mamba, x, reset, scan)
    cases = {
        "gru": gru_case(gru, x, reset),
        "mamba_chunked": mamba_case(mamba, x, reset, "chunked"),
        "mamba_chunked_td": mamba_td_case(mamba, x, reset, "chunked"),
        "mamba_torch": mamba_case(mamba, x, reset, "torch"),
        "scan_torch": scan_case(scan, naive.selective_scan_ref),
        "conv_torch": conv_case(mamba, args.batch, steps, reset, generator, "torch"),
        "conv_chunked": conv_case(mamba, args.batch, steps, reset, generator, "chunked"),
    }
    default_q, default_s = chunked.default_sizes(args.batch, mamba.d_inner, mamba.d_state, steps)
    cases["scan_chunked_default"] = scan_case(scan, chunked.selective_scan_chunked)
    for q in args.chunk_sizes:
        for seg in args.segment_sizes:
            if q <= seg <= steps:
                cases[f"scan_chunked_Q{q}_S{seg}"] = scan_case(
                    scan, chunked.selective_scan_chunked, chunk_size=q, segment_size=seg
                )
    if args.cases:
        unknown = sorted(set(args.cases) - set(cases))
        if unknown:
            raise ValueError(f"--cases must name cases of {sorted(cases)}, got {unknown}")
        cases = {name: run for name, run in cases.items() if name in args.cases or name == "gru"}
    times = time_cases(cases, args.repeats)
    saved = {
        name: round(saved_megabytes(cases[name]), 2)
        for name in ("gru", "mamba_torch", "mamba_chunked", "scan_torch", "scan_chunked_default")
        if name in cases
    }
    gru_t = times["gru"]
    return {
        "threads": torch.get_num_threads(),
        "steps": steps,
        "resets": int(reset.sum()),
        "default_chunk_size": default_q,
        "default_segment_size": default_s,
        "check_max_abs": diffs,
        "times": times,
        "saved_mb": saved,
        "ratio_wall_to_gru": {k: round(v["wall_ms"] / gru_t["wall_ms"], 3) for k, v in times.items()},
        "ratio_cpu_to_gru": {k: round(v["cpu_ms"] / gru_t["cpu_ms"], 3) for k, v in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=6)
    parser.add_argument("--reset-prob", type=float, default=0.01)
    # the sweep is off by default: its larger segments change what malloc holds for the other cases
    parser.add_argument("--chunk-sizes", type=int, nargs="*", default=[])
    parser.add_argument("--segment-sizes", type=int, nargs="*", default=[16, 32, 64])
    parser.add_argument("--repeats", type=int, default=7)
    # e.g. --cases mamba_chunked: the trunk and the GRU alone, without the other cases' allocations
    # between calls (what malloc holds then decides the page faults)
    parser.add_argument("--cases", nargs="*", default=[], help="run only these cases (and gru)")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="mallopt: glibc keeps freed memory instead of returning it to the OS",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    kept = keep_freed_memory() if args.keep_freed_memory else False
    if args.keep_freed_memory and not kept:
        raise RuntimeError("--keep-freed-memory needs glibc's mallopt, which did not accept the settings")
    torch.manual_seed(0)
    mamba = MambaModule(args.input_size, args.d_model, num_layers=1, in_key="x", out_key="y")
    gru = GRUModule(
        input_size=args.input_size,
        hidden_size=args.d_model,
        in_keys=["x", "hidden", "is_init"],
        out_keys=["y", ("next", "hidden")],
    )
    report = {
        "device": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "torch": torch.__version__,
        "dtype": "float32",
        "batch": args.batch,
        "d_model": args.d_model,
        "input_size": args.input_size,
        "d_inner": mamba.d_inner,
        "d_state": mamba.d_state,
        "num_layers": 1,
        "reset_prob": args.reset_prob,
        "repeats": args.repeats,
        "keep_freed_memory": kept,
        "runs": [],
    }
    for threads in args.threads:
        torch.set_num_threads(threads)
        generator = torch.Generator().manual_seed(0)
        for steps in args.steps:
            run = bench_steps(args, mamba, gru, steps, generator)
            report["runs"].append(run)
            print(f"threads={threads} T={steps}: checks {run['check_max_abs']}")
            for name, t in run["times"].items():
                print(
                    f"  {name:<22} wall {t['wall_ms']:9.2f} ms  cpu {t['cpu_ms']:9.2f} ms  "
                    f"x{run['ratio_wall_to_gru'][name]:.2f} of gru (cpu x{run['ratio_cpu_to_gru'][name]:.2f})  "
                    f"faults {t['minor_faults']}"
                )
            print(f"  saved for backward (MB): {run['saved_mb']}")
            # after every run, so that a long one cut short keeps what was measured
            report["load_average_at_end"] = os.getloadavg()
            if args.out:
                with open(args.out, "w") as f:
                    json.dump(report, f, indent=1)
                    f.write("\n")


if __name__ == "__main__":
    main()
