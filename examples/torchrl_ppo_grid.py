"""Run ``examples/torchrl_ppo.py`` over envs x trunks x seeds in parallel processes; write a table.

    python examples/torchrl_ppo_grid.py --out results/torchrl_ppo_grid --workers 16

Each run writes ``<out>/<env>__<trunk>__<seed>.json`` after every batch (runs whose file says
``complete`` are skipped, so an interrupted grid resumes); the table ``<out>/table.md`` has one row
per env and one column per trunk: the mean over seeds of each run's final return (the episodes ending in its last 10% of
frames) +- their standard deviation, and the seed count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ENVS = (
    "popgym-PositionOnlyCartPoleEasy-v0",
    "popgym-RepeatFirstEasy-v0",
    "popgym-RepeatPreviousEasy-v0",
    "popgym-CountRecallEasy-v0",
)
SCRIPT = Path(__file__).with_name("torchrl_ppo.py")


def run_one(out: Path, env: str, trunk: str, seed: int, frames: int, extra: list[str]) -> Path:
    path = out / f"{env}__{trunk}__{seed}.json"
    if path.exists() and json.loads(path.read_text()).get("complete"):
        return path
    log = path.with_suffix(".log")
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--env",
        env,
        "--trunk",
        trunk,
        "--seed",
        str(seed),
        "--total-frames",
        str(frames),
        "--json",
        str(path),
        *extra,
    ]
    with log.open("w") as handle:
        subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, check=True)
    return path


def table(out: Path, envs, trunks) -> str:
    results: dict[tuple[str, str], list[float]] = {}
    frames: dict[str, int] = {}
    for path in sorted(out.glob("*.json")):
        result = json.loads(path.read_text())
        if not result.get("complete"):
            continue
        results.setdefault((result["env"], result["trunk"]), []).append(result["final_return"])
        frames[result["env"]] = result["frames"]
    lines = ["| env | frames | " + " | ".join(trunks) + " |", "| --- | --- |" + " --- |" * len(trunks)]
    for env in envs:
        cells = []
        for trunk in trunks:
            scores = results.get((env, trunk), [])
            if not scores:
                cells.append("-")
                continue
            spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
            cells.append(f"{statistics.mean(scores):.3f} +- {spread:.3f} (n={len(scores)})")
        lines.append(f"| {env} | {frames.get(env, '-')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/torchrl_ppo_grid"))
    parser.add_argument("--envs", nargs="+", default=list(ENVS))
    parser.add_argument("--trunks", nargs="+", default=["gru", "mamba"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--frames", type=int, default=200_000, help="frames per run")
    parser.add_argument("--workers", type=int, default=4, help="runs at once (one CPU thread each)")
    args, extra = parser.parse_known_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(env, trunk, seed) for env in args.envs for trunk in args.trunks for seed in args.seeds]
    with ThreadPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_one, args.out, env, trunk, seed, args.frames, extra) for env, trunk, seed in jobs]
        for future in futures:
            print(future.result(), flush=True)
    text = table(args.out, args.envs, args.trunks)
    (args.out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
