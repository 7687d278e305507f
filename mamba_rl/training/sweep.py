"""A controllers x horizons x seeds grid of training runs, with a results table and a plot.

Writes into ``out_dir``: one run directory per cell, ``results.csv`` and ``results.md`` (one row
per run, then mean and spread per controller and horizon) and ``accuracy_vs_horizon.png``
(greedy evaluation accuracy against horizon, one line per controller, min..max over seeds shaded).

A sweep adds rows and never drops them: the rows of earlier sweeps into the same ``out_dir`` stay
in the tables (one row per run directory). A cell whose run directory already holds a finished
run of the same config is not trained again; one holding a checkpoint of an unfinished run
(interrupted, stopped by ``max_wall_time_s``) or of a run that may go on (a larger
``num_updates``, other evaluation settings: the keys a resume may change) is resumed; one holding
a run that differs in any other key is an error.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
import sys
from pathlib import Path

from mamba_rl.config import ConfigError, TrainConfig, config_from_dict, config_to_dict
from mamba_rl.io import CHECKPOINT_NAME
from mamba_rl.training.runs import RESUME_MUTABLE_KEYS

__all__ = ["run_sweep", "cell_horizon", "write_tables", "plot_accuracy"]

COLUMNS = [
    "controller",
    "horizon",
    "train_delays",
    "seed",
    "status",
    "updates",
    "eval_accuracy_greedy",
    "eval_accuracy_sampled",
    "first_update_train_accuracy_ge_0.9",
    "sps_median",
    "train_time_s",
    "run_dir",
]


def cell_horizon(base_horizon, horizon):
    """The training delays of a sweep cell at ``horizon``.

    A preset that trains on a fixed delay trains at ``horizon``; one that trains on a range
    ``[low, high]`` of delays keeps its low end and trains on ``[low, horizon]``. Either way the
    cell is evaluated at exactly ``horizon`` (the top of the range).
    """
    if isinstance(horizon, (list, tuple)):
        return list(horizon)
    if isinstance(base_horizon, (list, tuple)):
        return [min(base_horizon[0], horizon), horizon]
    return horizon


def run_sweep(base: TrainConfig, controllers, horizons, seeds, out_dir: str | Path, verbose: bool = True) -> list[dict]:
    """Train every (controller, horizon, seed) cell of the grid; return one row per run.

    ``horizons``: ints (see :func:`cell_horizon` for presets that train on a range of delays)
    or ``[low, high]`` ranges; a row's ``horizon`` is the evaluated one (the top of a range).
    """
    from mamba_rl.training.trainer import train

    out_dir = Path(out_dir)
    rows = read_rows(out_dir / "results.csv")
    for horizon in horizons:
        train_delays = cell_horizon(base.horizon, horizon)
        top = train_delays[1] if isinstance(train_delays, list) else train_delays
        delays = f"{train_delays[0]}-{train_delays[1]}" if isinstance(train_delays, list) else str(train_delays)
        for controller in controllers:
            for seed in seeds:
                cfg = dataclasses.replace(base, controller=controller, horizon=train_delays, seed=seed)
                run_dir = out_dir / f"{controller}__h{delays}__s{seed}"
                metrics = finished_metrics(cfg, run_dir)
                if metrics is None:
                    resume = (run_dir / CHECKPOINT_NAME).exists()
                    metrics = train(cfg, run_dir, resume=resume, verbose=verbose).metrics
                elif verbose:
                    print(f"{run_dir} already holds this finished run: its metrics are reused", file=sys.stderr)
                # by the run's own folder name: a sweep folder moved or reached by another path
                # (a GPU machine's runs/ copied into the repository) keeps one row per run
                rows = [row for row in rows if Path(row["run_dir"]).name != run_dir.name]
                rows.append(
                    {
                        "controller": controller,
                        "horizon": top,
                        "train_delays": delays,
                        "seed": seed,
                        "status": metrics["status"],
                        **{k: metrics.get(k) for k in COLUMNS[5:-1]},
                        "run_dir": str(run_dir),
                    }
                )
                write_tables(rows, out_dir)
    plot_accuracy(rows, out_dir / "accuracy_vs_horizon.png")
    return rows


def finished_metrics(cfg: TrainConfig, run_dir: Path) -> dict | None:
    """The metrics of a finished run of exactly ``cfg`` in ``run_dir``; None when there is none.

    Raises:
        ConfigError: ``run_dir`` holds a run that differs from ``cfg`` outside the keys a resume
            may change.
    """
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    saved = config_to_dict(config_from_dict(metrics["config"], where=str(path)))
    given = config_to_dict(cfg)
    changed = [key for key in given if saved[key] != given[key]]
    fixed = [key for key in changed if key not in RESUME_MUTABLE_KEYS]
    if fixed:
        raise ConfigError(
            f"{run_dir} already holds a run with a different {', '.join(fixed)}; choose another --sweep-dir"
        )
    return metrics if not changed and metrics["status"] in ("completed", "target_reached") else None


def read_rows(path: str | Path, text_keys=("controller", "train_delays", "status", "run_dir", "env")) -> list[dict]:
    """The rows of an earlier sweep's ``results.csv`` (none when it does not exist), numbers as numbers."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("run_dir")]
    for row in rows:
        for key in row:
            if key not in text_keys:
                row[key] = _number(row.get(key))
    return rows


def _number(text):
    if text in (None, ""):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _summary(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        groups.setdefault((row["controller"], row["horizon"]), []).append(float(row["eval_accuracy_greedy"] or 0.0))
    return [
        {"controller": c, "horizon": h, "seeds": len(v), "mean": statistics.fmean(v), "min": min(v), "max": max(v)}
        for (c, h), v in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0]))
    ]


def write_run_rows(rows: list[dict], out_dir: str | Path, columns: list[str]) -> list[str]:
    """Write ``results.csv`` (every run, ``columns``) into ``out_dir``; return the markdown table of
    the runs (every column but the last, the run directory) for ``results.md``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns[:-1]) + " |", "|" + "---|" * (len(columns) - 1)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in columns[:-1]) + " |")
    return lines


def write_tables(rows: list[dict], out_dir: str | Path) -> None:
    """``results.csv`` (every run) and ``results.md`` (every run, then the per-cell summary)."""
    lines = write_run_rows(rows, out_dir, COLUMNS)
    lines += [
        "",
        "| controller | horizon | seeds | mean greedy accuracy | min | max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in _summary(rows):
        lines.append(
            f"| {s['controller']} | {s['horizon']} | {s['seeds']} | {s['mean']:.3f} | {s['min']:.3f} | {s['max']:.3f} |"
        )
    (Path(out_dir) / "results.md").write_text("\n".join(lines) + "\n")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return "" if value is None else str(value)


def plot_accuracy(rows: list[dict], path: str | Path) -> Path:
    """Greedy accuracy against horizon, one line per controller (mean), seeds' min..max shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    summary = _summary(rows)
    for controller in sorted({s["controller"] for s in summary}):
        cells = [s for s in summary if s["controller"] == controller]
        xs = [s["horizon"] for s in cells]
        ax.plot(xs, [s["mean"] for s in cells], marker="o", label=controller)
        ax.fill_between(xs, [s["min"] for s in cells], [s["max"] for s in cells], alpha=0.2)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("horizon (blank delay steps)")
    ax.set_ylabel("evaluation accuracy (greedy)")
    ax.set_title("Delayed multi-bit memory: accuracy vs horizon")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
