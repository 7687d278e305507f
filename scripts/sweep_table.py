"""The memory-task sweep's tables and plots, merged from the single-cell sweeps of ``memory_sweep.sh``.

    python scripts/sweep_table.py ROOT                 # results.md, results.csv, two PNGs into ROOT
    python scripts/sweep_table.py --next-step N CELL   # what memory_sweep.sh runs next in CELL

Reads every run under ``ROOT/h<H>/<controller>_<seed>/<run>/`` (``metrics.json``, ``progress.csv``)
and writes into ``ROOT``:

- ``results.csv`` and ``results.md``: one row per run, every seed and every failure included
  (controller, H, seed, status, updates of the budget, env-steps, training time, greedy and sampled
  accuracy at H, greedy at 2H, 5H and 10H where evaluated); then per controller and H the mean,
  min and max of the greedy accuracy over the finished, evaluated seeds at each multiple of H;
- ``accuracy_vs_horizon.png``: greedy accuracy against the evaluated horizon (log x), one line per
  controller and trained H (the mean over seeds), min..max over seeds shaded;
- ``training_curves.png``: training accuracy against env-steps and against training time, one
  line per run, one row of panels per trained H.
- ``policy.pt`` beside the ``checkpoint.pt`` of each finished, evaluated run: its trained policy
  alone (:func:`mamba_rl.io.save_policy`, ~0.1 MB against the checkpoint's MBs), kept with the
  results so that any cell, a failed seed's included, can be evaluated and pictured later.

A cell's next step (``--next-step``) is ``train`` (fewer updates than ``N``, or no run yet),
``evaluate`` (trained for ``N`` updates, no final evaluation yet), ``done`` or ``failed`` (the
run diverged). Only the standard library is imported for it (it runs once per cell).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

FINISHED = ("completed", "target_reached")
# the multiples of the trained horizon H in the tables: how far past its training a memory holds
MULTIPLES = (1, 2, 5, 10)
CHANCE = 1 / 16
COLUMNS = [
    "controller",
    "horizon",
    "seed",
    "status",
    "updates",
    "num_updates",
    "env_steps",
    "train_time_s",
    "greedy_H",
    "sampled_H",
    "greedy_2H",
    "greedy_5H",
    "greedy_10H",
    "eval_episodes",
    "train_accuracy_last",
    "device",
    "run_dir",
]


def cell_runs(cell: Path) -> list[Path]:
    """The run directories of a single-cell sweep (normally one)."""
    return sorted(path.parent for path in cell.glob("*/config.yaml"))


def next_step(cell: Path, num_updates: int) -> str:
    """``train``, ``evaluate``, ``done`` or ``failed``: what the single-cell sweep ``cell`` needs
    to reach ``num_updates`` updates with a final evaluation."""
    paths = sorted(cell.glob("*/metrics.json"))
    if not paths:
        return "train"
    metrics = json.loads(paths[-1].read_text())
    if metrics["status"] == "diverged":
        return "failed"
    if metrics["updates"] < num_updates:
        return "train"
    return "done" if finished_and_evaluated(metrics) else "evaluate"


def finished_and_evaluated(metrics: dict) -> bool:
    """The run of ``metrics`` (its ``metrics.json``) finished and ran its final evaluation."""
    return bool(metrics["status"] in FINISHED and metrics.get("evaluation") and metrics["config"]["eval_episodes"] > 0)


def _accuracy(metrics: dict, horizon: int, mode: str = "greedy"):
    entry = (metrics.get("evaluation") or {}).get(str(horizon))
    return entry[mode]["accuracy"] if entry else None


def run_row(run_dir: Path, root: Path) -> dict:
    """One row of ``results.csv`` for the run in ``run_dir`` (a cell without ``metrics.json`` gives
    a row with its status only)."""
    cell = run_dir.parent
    controller, seed = cell.name.rsplit("_", 1)
    row = dict.fromkeys(COLUMNS)
    row.update(controller=controller, horizon=int(cell.parent.name[1:]), seed=int(seed), status="no metrics.json")
    row["run_dir"] = str(run_dir.relative_to(root))
    path = run_dir / "metrics.json"
    if not path.is_file():
        return row
    metrics = json.loads(path.read_text())
    horizon = metrics["config"]["horizon"]
    horizon = horizon[1] if isinstance(horizon, list) else horizon
    row.update(
        horizon=horizon,
        status=metrics["status"],
        updates=metrics["updates"],
        num_updates=metrics["config"]["num_updates"],
        env_steps=metrics["global_step"],
        train_time_s=round(metrics["train_time_s"]),
        sampled_H=_accuracy(metrics, horizon, "sampled"),
        eval_episodes=((metrics.get("evaluation") or {}).get(str(horizon)) or {}).get("greedy", {}).get("episodes"),
        train_accuracy_last=metrics.get("train_accuracy_last"),
        # the training's devices (a run evaluated elsewhere: metrics' device_name is the evaluation's)
        device=", ".join(metrics.get("train_device_names") or [metrics.get("device_name")]),
    )
    for multiple in MULTIPLES:
        row[f"greedy_{'' if multiple == 1 else multiple}H"] = _accuracy(metrics, round(multiple * horizon))
    return row


def collect_rows(root: Path) -> list[dict]:
    """Every run under ``root``, sorted by H, controller and seed; a cell with no run directory yet
    is a row too."""
    rows = []
    for cell in sorted(root.glob("h*/*_*")):
        if not cell.is_dir():
            continue
        runs = cell_runs(cell) or [cell / "(no run)"]
        rows += [run_row(run_dir, root) for run_dir in runs]
    return sorted(rows, key=lambda row: (row["horizon"], row["controller"], row["seed"]))


def summary(rows: list[dict]) -> list[dict]:
    """Per controller, H and multiple of H: the greedy accuracy's mean, min and max over the
    finished seeds evaluated there, and how many of the cell's seeds that is."""
    out = []
    for key in sorted({(row["horizon"], row["controller"]) for row in rows}):
        group = [row for row in rows if (row["horizon"], row["controller"]) == key]
        for multiple in MULTIPLES:
            column = f"greedy_{'' if multiple == 1 else multiple}H"
            values = [row[column] for row in group if row["status"] in FINISHED and row[column] is not None]
            if values:
                out.append(
                    {
                        "horizon": key[0],
                        "controller": key[1],
                        "multiple": multiple,
                        "evaluated_at": round(multiple * key[0]),
                        "seeds": f"{len(values)} of {len(group)}",
                        "mean": statistics.fmean(values),
                        "min": min(values),
                        "max": max(values),
                    }
                )
    return out


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}"
    return str(value)


def write_tables(rows: list[dict], root: Path) -> None:
    with open(root / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    episodes = sorted({row["eval_episodes"] for row in rows if row["eval_episodes"]})
    shown = [column for column in COLUMNS[:-2] if column != "eval_episodes"]
    lines = [
        "# The delayed 4-bit memory task: Mamba and GRU as the delay grows",
        "",
        f"Trained on delays log-uniform in [1, H]; device: {_device_title(rows)}. Accuracy over "
        f"{' or '.join(f'{n:,}' for n in episodes) or 'no'} fresh episodes per horizon and mode. `updates` of "
        "`num_updates`: memory_sweep.sh gives both controllers at an H the same `num_updates` and no "
        "`target_accuracy`, so the same env-steps; status `target_reached` is a run stopped earlier by a "
        "training-accuracy target. `train_time_s` is the time of the rollouts and updates (no start-up, no "
        "evaluation), while other cells trained on the same GPU (memory_sweep.sh runs PARALLEL at once).",
        "",
        "| " + " | ".join(shown) + " |",
        "|" + "---|" * len(shown),
    ]
    lines += ["| " + " | ".join(_fmt(row[c]) for c in shown) + " |" for row in rows]
    lines += [
        "",
        "Greedy accuracy over the finished seeds evaluated at each multiple of H:",
        "",
        "| controller | H | evaluated at | seeds | mean | min | max |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    lines += [
        f"| {s['controller']} | {s['horizon']:,} | {s['evaluated_at']:,} ({s['multiple']}H) | {s['seeds']} | "
        f"{s['mean']:.3f} | {s['min']:.3f} | {s['max']:.3f} |"
        for s in summary(rows)
    ]
    (root / "results.md").write_text("\n".join(lines) + "\n")


def _colors(rows: list[dict]) -> dict:
    """A color per (controller, H): a blue family for Mamba, an orange one for the GRU, darker for longer H."""
    import matplotlib

    maps = {"mamba": matplotlib.colormaps["Blues"], "gru": matplotlib.colormaps["Oranges"]}
    horizons = sorted({row["horizon"] for row in rows})
    return {
        (controller, h): maps.get(controller, matplotlib.colormaps["Greys"])(0.45 + 0.5 * i / max(1, len(horizons) - 1))
        for controller in {row["controller"] for row in rows}
        for i, h in enumerate(horizons)
    }


def _device_title(rows: list[dict]) -> str:
    devices = sorted({row["device"] for row in rows if row["device"]})
    return ", ".join(devices) or "device not recorded"


def plot_accuracy_vs_horizon(rows: list[dict], root: Path, path: Path) -> None:
    """Greedy accuracy against every evaluated horizon, one line per controller and trained H."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = _colors(rows)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for key in sorted({(row["controller"], row["horizon"]) for row in rows}):
        evaluations = [
            json.loads((root / row["run_dir"] / "metrics.json").read_text()).get("evaluation")
            for row in rows
            if (row["controller"], row["horizon"]) == key and row["status"] in FINISHED
        ]
        evaluations = [evaluation for evaluation in evaluations if evaluation]
        by_horizon: dict[int, list[float]] = {}
        for evaluation in evaluations:
            for horizon, entry in evaluation.items():
                by_horizon.setdefault(int(horizon), []).append(entry["greedy"]["accuracy"])
        if key[1] not in by_horizon:
            continue
        xs = sorted(by_horizon)
        ax.plot(
            xs,
            [statistics.fmean(by_horizon[x]) for x in xs],
            marker="o",
            ms=4,
            color=colors[key],
            label=f"{key[0]}, trained to {key[1]:,} ({len(evaluations)} seeds)",
        )
        ax.fill_between(
            xs, [min(by_horizon[x]) for x in xs], [max(by_horizon[x]) for x in xs], color=colors[key], alpha=0.2
        )
        ax.plot([key[1]], [statistics.fmean(by_horizon[key[1]])], marker="*", ms=12, color=colors[key])
    ax.axhline(CHANCE, color="grey", lw=0.8, ls="--", label="chance (1/16)")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.03)
    ax.set_xlabel("evaluated horizon (blank delay steps); star: the trained H")
    ax.set_ylabel("greedy accuracy (mean over seeds; min..max shaded)")
    ax.set_title(f"4-bit delayed memory: accuracy vs horizon ({_device_title(rows)})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def training_curve(progress: Path) -> tuple[list[int], list[float], list[float]]:
    """``(env_steps, training_seconds, accuracy)`` per logged update of a run's ``progress.csv``;
    training seconds are the summed rollout and update seconds (no start-up, no evaluation)."""
    from mamba_rl.logging_utils import read_progress

    _, rows = read_progress(progress)
    steps, seconds, accuracy = [], [], []
    total, last_update = 0.0, 0
    for row in rows:
        update = int(float(row["update"]))
        # a row per logged update: with log_interval > 1 the unlogged updates took about as long
        total += (float(row["time/rollout_s"]) + float(row["time/update_s"])) * (update - last_update)
        last_update = update
        if row.get("train/accuracy") not in (None, ""):
            steps.append(int(float(row["global_step"])))
            seconds.append(total)
            accuracy.append(float(row["train/accuracy"]))
    return steps, seconds, accuracy


def plot_training_curves(rows: list[dict], root: Path, path: Path) -> None:
    """Training accuracy against env-steps (left) and training time (right), a row per trained H."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = _colors(rows)
    horizons = sorted({row["horizon"] for row in rows})
    fig, axes = plt.subplots(len(horizons), 2, figsize=(11, 3 * len(horizons)), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for (by_steps, by_time), horizon in zip(axes, horizons):
        for row in (row for row in rows if row["horizon"] == horizon):
            progress = root / row["run_dir"] / "progress.csv"
            if not progress.is_file():
                continue
            steps, seconds, accuracy = training_curve(progress)
            style = dict(color=colors[(row["controller"], horizon)], ls=styles[row["seed"] % len(styles)], lw=1.2)
            label = f"{row['controller']} seed {row['seed']} ({row['status']})"
            by_steps.plot(steps, accuracy, label=label, **style)
            by_time.plot(seconds, accuracy, label=label, **style)
        for ax, xlabel in ((by_steps, "env-steps"), (by_time, "training time (s)")):
            ax.axhline(CHANCE, color="grey", lw=0.8, ls="--")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("training accuracy")
            ax.set_ylim(0, 1.03)
            ax.set_title(f"trained on delays in [1, {horizon:,}]", fontsize=9)
            ax.grid(alpha=0.3)
        by_steps.legend(fontsize=6)
    fig.suptitle(f"PPO training accuracy per run ({_device_title(rows)})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_policies(root: Path) -> list[Path]:
    """``policy.pt`` beside the ``checkpoint.pt`` of each finished, evaluated run under ``root``
    whose checkpoint holds the run's final update (``metrics.json`` ``updates``) and whose
    ``policy.pt`` is missing or of another update; returns the files written. A checkpoint of an
    earlier update (a sweep folder that received the run's tables but kept an older checkpoint)
    writes nothing and is named on stderr: its policy is not the one evaluated."""
    from mamba_rl.io import POLICY_NAME, load_checkpoint, save_policy

    written = []
    for checkpoint in sorted(root.glob("h*/*_*/*/checkpoint.pt")):
        metrics_path = checkpoint.parent / "metrics.json"
        if not metrics_path.is_file():
            continue
        metrics = json.loads(metrics_path.read_text())
        if not finished_and_evaluated(metrics):
            continue
        policy = checkpoint.parent / POLICY_NAME
        if policy.is_file() and load_checkpoint(policy, map_location="cpu").get("update") == metrics["updates"]:
            continue
        update = load_checkpoint(checkpoint, map_location="cpu").get("update")
        if update != metrics["updates"]:
            print(
                f"{checkpoint}: update {update}, the run finished at update {metrics['updates']}; no policy.pt from it",
                file=sys.stderr,
            )
            continue
        written.append(save_policy(checkpoint, policy))
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="the sweep's folder (ROOT/h<H>/<controller>_<seed>/), or a cell")
    parser.add_argument("--next-step", type=int, metavar="N", help="print the cell's next step towards N updates")
    args = parser.parse_args(argv)
    if args.next_step is not None:
        print(next_step(args.root, args.next_step))
        return
    rows = collect_rows(args.root)
    if not rows:
        raise SystemExit(f"no cells under {args.root} (expected {args.root}/h<H>/<controller>_<seed>/)")
    write_tables(rows, args.root)
    for path in write_policies(args.root):
        print(f"wrote {path}")
    plot_accuracy_vs_horizon(rows, args.root, args.root / "accuracy_vs_horizon.png")
    plot_training_curves(rows, args.root, args.root / "training_curves.png")
    print((args.root / "results.md").read_text())
    done = sum(row["status"] in FINISHED and row["greedy_H"] is not None for row in rows)
    print(f"{done} of {len(rows)} runs finished and evaluated; plots in {args.root}")


if __name__ == "__main__":
    main()
