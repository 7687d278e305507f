"""Pictures of the training runs kept in ``benchmarks/results/training/``.

Reads each run directory's ``metrics.json`` (evaluation per delay) and ``progress.csv`` (scalars
per update) and writes:

- ``accuracy_vs_delay.png``: greedy evaluation accuracy against the evaluated delay, one line per
  run (does the memory generalise past the delays it was trained on?);
- ``learning_curves.png``: training accuracy against updates and against training time.

    python benchmarks/plot_training.py [--runs benchmarks/results/training] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CHANCE = 1 / 16


def load_runs(root: Path) -> list[dict]:
    """One dict per run directory: ``name``, ``label``, ``metrics`` and ``progress`` (list of rows)."""
    runs = []
    for metrics_path in sorted(root.glob("*/metrics.json")):
        metrics = json.loads(metrics_path.read_text())
        progress_path = metrics_path.with_name("progress.csv")
        progress = list(csv.DictReader(progress_path.open())) if progress_path.exists() else []
        horizon = metrics["horizon"]
        cfg = metrics.get("config", {})
        if isinstance(horizon, list):
            delays = f"{cfg.get('horizon_sampling', 'uniform').replace('_', '-')} {horizon[0]}..{horizon[1]}"
        else:
            delays = f"fixed {horizon}"
        label = f"{metrics['controller']}, {delays}, seed {metrics['seed']}"
        runs.append({"name": metrics_path.parent.name, "label": label, "metrics": metrics, "progress": progress})
    if not runs:
        raise SystemExit(f"no run directories with metrics.json under {root}")
    return runs


def plot_accuracy_vs_delay(runs: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for run in runs:
        evaluation = run["metrics"].get("evaluation") or {}
        points = sorted((int(h), entry["greedy"]["accuracy"]) for h, entry in evaluation.items())
        if points:
            ax.plot(*zip(*points), marker="o", label=run["label"])
    ax.axhline(CHANCE, color="grey", lw=0.8, ls="--", label="chance (1/16)")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.03)
    ax.set_xlabel("evaluated delay (blank steps)")
    ax.set_ylabel("greedy accuracy (1,000 episodes)")
    ax.set_title("4-bit delayed memory: accuracy vs delay (one H100)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_curves(runs: list[dict], path: Path) -> None:
    fig, (by_update, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        rows = [r for r in run["progress"] if r.get("train/accuracy") not in (None, "")]
        if not rows:
            continue
        update = [int(r["update"]) for r in rows]
        accuracy = [float(r["train/accuracy"]) for r in rows]
        # training time: the sum of rollout and update seconds up to each update
        seconds, total = [], 0.0
        for r in rows:
            total += float(r["time/rollout_s"]) + float(r["time/update_s"])
            seconds.append(total)
        by_update.plot(update, accuracy, label=run["label"])
        by_time.plot(seconds, accuracy, label=run["label"])
    for ax, xlabel in ((by_update, "PPO update"), (by_time, "training time (s)")):
        ax.axhline(CHANCE, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training accuracy")
        ax.set_ylim(0, 1.03)
        ax.grid(alpha=0.3)
    by_time.set_xscale("log")
    by_update.legend(fontsize=7)
    fig.suptitle("PPO on the 4-bit delayed memory task (one H100)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--runs",
        default=str(Path(__file__).parent / "results" / "training"),
        help="directory of run directories (default benchmarks/results/training)",
    )
    parser.add_argument("--out", default=None, help="where the PNGs go (default: the --runs directory)")
    args = parser.parse_args(argv)
    root = Path(args.runs)
    out = Path(args.out) if args.out else root
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(root)
    plot_accuracy_vs_delay(runs, out / "accuracy_vs_delay.png")
    plot_learning_curves(runs, out / "learning_curves.png")
    print(f"{len(runs)} runs; wrote {out / 'accuracy_vs_delay.png'} and {out / 'learning_curves.png'}")


if __name__ == "__main__":
    main()
