"""Scaling of one run over several processes (torchrun, one GPU each): end-to-end env-steps/s and efficiency.

    python benchmarks/bench_ddp_scaling.py --config configs/h1000_gpu.yaml --nprocs 1 2 4 8 --updates 30 \
        --json benchmarks/results/ddp_scaling_h1000_H100.json
    python benchmarks/bench_ddp_scaling.py --config configs/h20000_gpu.yaml --nprocs 1 8 --to-target \
        --json benchmarks/results/ddp_time_to_target_h20000_H100.json

Each cell runs ``torchrun --standalone --nproc_per_node N train.py --config CONFIG`` (``num_envs``
per process, so ``N`` processes step ``N`` times the envs) and reads the run's ``metrics.json``.
Speed (the default): ``num_updates=UPDATES``, no target, no evaluation; ``sps_median`` is the
median env-steps/s of every process together over the updates after the first two (compilation
and CUDA-graph capture left out); efficiency is ``sps(N) / (N * sps(1))``. A plain ``python
train.py`` run is timed beside them: torchrun with one process should match it.
``--to-target``: the config's own ``num_updates`` and ``target_accuracy``; records the updates and
the training seconds to the target, and the final evaluation.

Correctness before timing: every run must end as ``completed`` (``target_reached`` with
``--to-target``) with ``world_size == N`` in its metrics; in speed mode the largest difference
between the parameters of the torchrun one-process run and the plain run's is recorded (the same
computation through DDP: 0 where the kernels are deterministic; on the CPU it is 0). Prints a
table and writes JSON (devices, config, per-run numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def run_cell(config: str, nprocs: int | None, overrides: list[str], run_dir: Path) -> dict:
    """One run: ``nprocs`` processes under torchrun, or plain ``python train.py`` for None."""
    launcher = [sys.executable]
    if nprocs is not None:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nprocs)]
    cmd = [*launcher, "train.py", "--config", config, "--run-dir", str(run_dir)]
    cmd += [arg for kv in overrides for arg in ("--set", kv)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "launcher": "plain" if nprocs is None else "torchrun",
        "nprocs": 1 if nprocs is None else nprocs,
        "world_size": metrics["world_size"],
        "status": metrics["status"],
        "updates": metrics["updates"],
        "global_step": metrics["global_step"],
        "train_time_s": metrics["train_time_s"],
        "sps_median": metrics["sps_median"],
        "eval_accuracy_greedy": metrics["eval_accuracy_greedy"],
        "eval_accuracy_sampled": metrics["eval_accuracy_sampled"],
        "wall_s": wall,
    }


def max_param_difference(a: Path, b: Path) -> float:
    pa = torch.load(a / "checkpoint.pt", map_location="cpu", weights_only=True)["policy"]
    pb = torch.load(b / "checkpoint.pt", map_location="cpu", weights_only=True)["policy"]
    return max(float((pa[k].float() - pb[k].float()).abs().max()) for k in pa)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--nprocs", nargs="+", type=int, default=[1, 2, 4, 8], help="processes per run")
    parser.add_argument("--updates", type=int, default=30, help="num_updates per speed run (>= 3)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--to-target", action="store_true", help="time to the config's target_accuracy instead")
    parser.add_argument("--set", nargs="*", default=[], dest="extra", help="more key=value overrides")
    parser.add_argument("--keep-runs", type=Path, default=None, help="keep the run directories here")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.updates < 3:
        parser.error(f"--updates must be >= 3 (the first two are left out of sps_median), got {args.updates}")
    if min(args.nprocs) < 1:
        parser.error(f"--nprocs must be ints >= 1, got {args.nprocs}")
    if args.to_target:
        overrides = ["state_figure_interval=0", *args.extra]
        expected = "target_reached"
    else:
        overrides = [
            f"num_updates={args.updates}",
            "target_accuracy=null",
            "eval_episodes=0",
            "state_figure_interval=0",
            *args.extra,
        ]
        expected = "completed"
    root = args.keep_runs or Path(tempfile.mkdtemp(prefix="ddp_scaling_"))
    cells = ([None] if not args.to_target else []) + list(args.nprocs)
    rows = []
    for repeat in range(args.repeats):
        for nprocs in cells:
            name = "plain" if nprocs is None else f"n{nprocs}"
            run_dir = root / f"{name}_r{repeat}"
            row = run_cell(args.config, nprocs, overrides, run_dir)
            if row["status"] != expected or row["world_size"] != row["nprocs"]:
                raise RuntimeError(
                    f"{name}: status {row['status']}, world_size {row['world_size']} (expected {expected})"
                )
            row["run_dir"] = str(run_dir)
            rows.append(row)
            print(
                f"{name:6s} {row['sps_median']:,.0f} env-steps/s, {row['updates']} updates in "
                f"{row['train_time_s']:.1f} s of training ({row['status']}; process {row['wall_s']:.1f} s)",
                flush=True,
            )
    checks = {}
    if not args.to_target and 1 in args.nprocs:
        checks["torchrun_n1_vs_plain_max_abs_param_diff"] = max(
            max_param_difference(root / f"plain_r{r}", root / f"n1_r{r}") for r in range(args.repeats)
        )
    summary = {}
    for nprocs in cells:
        mine = [
            r
            for r in rows
            if r["nprocs"] == (nprocs or 1) and r["launcher"] == ("plain" if nprocs is None else "torchrun")
        ]
        summary["plain" if nprocs is None else str(nprocs)] = {
            "sps_median": statistics.median(r["sps_median"] for r in mine),
            "train_time_s": statistics.median(r["train_time_s"] for r in mine),
            "updates": statistics.median(r["updates"] for r in mine),
        }
    if "1" in summary:
        for key, entry in summary.items():
            if key != "plain":
                entry["efficiency"] = entry["sps_median"] / (int(key) * summary["1"]["sps_median"])
    print("| processes | env-steps/s | efficiency | updates | training s |")
    print("|---|---:|---:|---:|---:|")
    for key, entry in summary.items():
        eff = f"{entry['efficiency']:.3f}" if "efficiency" in entry else ""
        print(f"| {key} | {entry['sps_median']:,.0f} | {eff} | {entry['updates']:g} | {entry['train_time_s']:.1f} |")
    for key, value in checks.items():
        print(f"{key}: {value:g}")
    if args.json:
        devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        out = {
            "config": args.config,
            "overrides": overrides,
            "mode": "to_target" if args.to_target else "speed",
            "devices": devices or ["cpu"],
            "torch_version": str(torch.__version__),
            "checks": checks,
            "summary": summary,
            "runs": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
