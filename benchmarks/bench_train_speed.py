"""End-to-end trainer speed: ``train.py`` runs of a few updates, one process each, env-steps/s.

    python benchmarks/bench_train_speed.py --config configs/h1000_gpu.yaml --controllers mamba gru \
        --trees . path/to/other/checkout --updates 8 --repeats 2 --json benchmarks/results/train_speed.json

Each (tree, controller) cell runs ``python train.py --config CONFIG --set controller=C
num_updates=UPDATES eval_episodes=0 state_figure_interval=0`` with the tree as working directory
and PYTHONPATH, repeats interleaved (A B A B), and reads ``sps_median`` (the median env-steps/s
over updates after the first two: compilation and CUDA-graph capture are left out) from the run's
``metrics.json``. Comparing two checkouts of the project in one run gives before/after ratios on
the same machine. Prints a table and writes JSON (device, config, per-run numbers).
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


def run_cell(tree: Path, config: str, controller: str, updates: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        overrides = [
            f"controller={controller}",
            f"num_updates={updates}",
            "eval_episodes=0",
            "state_figure_interval=0",
            *extra,
        ]
        cmd = [sys.executable, "train.py", "--config", config, "--run-dir", str(run_dir)]
        cmd += [arg for kv in overrides for arg in ("--set", kv)]
        # the tree first, so that its mamba_rl is the one imported; the rest (installed wheels) kept
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{tree} {controller}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
        metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"tree": str(tree), "controller": controller, "sps_median": metrics["sps_median"], "wall_s": wall}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--controllers", nargs="+", default=["mamba", "gru"])
    parser.add_argument(
        "--trees",
        nargs="+",
        type=Path,
        default=[Path(".")],
        help="checkouts of the project to compare (each needs train.py and the config)",
    )
    parser.add_argument("--updates", type=int, default=8, help="num_updates per run (>= 3)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], dest="extra", help="more key=value overrides")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.updates < 3:
        parser.error(f"--updates must be >= 3 (the first two are left out of sps_median), got {args.updates}")
    rows = []
    for _ in range(args.repeats):
        for controller in args.controllers:
            for tree in args.trees:
                row = run_cell(tree.resolve(), args.config, controller, args.updates, args.extra)
                print(
                    f"{row['controller']:6s} {row['tree']}: {row['sps_median']:,.0f} env-steps/s "
                    f"(process {row['wall_s']:.1f} s)",
                    flush=True,
                )
                rows.append(row)
    summary = {}
    for controller in args.controllers:
        for tree in args.trees:
            sps = [r["sps_median"] for r in rows if r["controller"] == controller and r["tree"] == str(tree.resolve())]
            summary[f"{controller} {tree}"] = statistics.median(sps)
    print("\nmedian env-steps/s over repeats:")
    for name, sps in summary.items():
        print(f"  {name}: {sps:,.0f}")
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result = {
        "device": device,
        "torch": torch.__version__,
        "config": args.config,
        "updates": args.updates,
        "overrides": args.extra,
        "runs": rows,
        "median_sps": summary,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
