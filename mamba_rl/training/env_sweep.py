"""A controllers x seeds grid of training runs on one env (POPGym, Gymnasium, TorchRL), with a table.

``results.md`` / ``results.csv`` hold one row per run (the MMER, POPGym's max over training of
the mean episode return per update; the final evaluation's returns; steps/s; wall-clock), then
mean and spread (population std) over seeds per controller. Before the runs, the env alone is
timed with random actions, so that the table says how many env-steps/s the env allows and what
the trainer reaches.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

from mamba_rl.config import TrainConfig
from mamba_rl.io import CHECKPOINT_NAME
from mamba_rl.policies import make_train_env
from mamba_rl.policies.heads import make_action_head
from mamba_rl.training.sweep import finished_metrics, read_rows, write_run_rows

__all__ = ["measure_env_sps", "run_env_sweep", "write_env_tables"]

COLUMNS = [
    "env",
    "controller",
    "seed",
    "status",
    "updates",
    "global_step",
    "train_return_max",
    "train_return_last",
    "eval_return_greedy",
    "eval_return_sampled",
    "sps_median",
    "train_time_s",
    "run_dir",
]


def measure_env_sps(cfg: TrainConfig, steps: int = 200) -> float:
    """Env-steps per second of ``cfg.num_envs`` copies of ``cfg.env`` (its ``vectorization``) with
    uniformly random actions, no policy: the ceiling the trainer's steps/s can approach."""
    env = make_train_env(cfg, cfg.num_envs, "cpu")
    head = make_action_head(env.action_space)
    generator = torch.Generator().manual_seed(0)
    try:
        state, _, _ = env.reset(cfg.seed)
        noise = torch.zeros(cfg.num_envs, *head.noise_shape)
        params = torch.zeros(cfg.num_envs, head.num_outputs)
        actions = []
        for _ in range(steps):
            head.draw_noise(noise, generator)
            actions.append(head.sample(params, noise)[0])
        start = time.perf_counter()
        for action in actions:
            state, _ = env.step(state, action)
        return steps * cfg.num_envs / (time.perf_counter() - start)
    finally:
        env.close()


def run_env_sweep(base: TrainConfig, controllers, seeds, out_dir: str | Path, verbose: bool = True) -> list[dict]:
    """Train every (controller, seed) cell on ``base.env``; return one row per run.

    As the memory task's sweep does: rows of an earlier sweep into ``out_dir`` are kept, a cell whose
    run finished with the same config is reused, an unfinished one (a checkpoint, no final metrics)
    is resumed, and a cell holding a run of another config is an error.
    """
    from mamba_rl.training.trainer import train

    out_dir = Path(out_dir)
    env_sps = measure_env_sps(base)
    if verbose:
        print(
            f"{base.env}: {env_sps:,.0f} env-steps/s with random actions ({base.num_envs} envs, "
            f"{base.vectorization} vectorization)"
        )
    rows = read_rows(out_dir / "results.csv")
    for controller in controllers:
        for seed in seeds:
            cfg = dataclasses.replace(base, controller=controller, seed=seed)
            run_dir = out_dir / f"{controller}__s{seed}"
            metrics = finished_metrics(cfg, run_dir)
            if metrics is None:
                resume = (run_dir / CHECKPOINT_NAME).exists()
                metrics = train(cfg, run_dir, resume=resume, verbose=verbose).metrics
            elif verbose:
                print(f"{run_dir} already holds this finished run: its metrics are reused", file=sys.stderr)
            rows = [row for row in rows if row["run_dir"] != str(run_dir)]
            rows.append(
                {
                    "env": base.env,
                    "controller": controller,
                    "seed": seed,
                    "status": metrics["status"],
                    "updates": metrics.get("updates"),
                    **{k: metrics.get(k) for k in COLUMNS[5:-1]},
                    "run_dir": str(run_dir),
                }
            )
            write_env_tables(rows, out_dir, env_sps)
    return rows


def _spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def write_env_tables(rows: list[dict], out_dir: str | Path, env_sps: float | None = None) -> None:
    """``results.csv`` (every run) and ``results.md`` (every run, then mean +- std over seeds per controller)."""
    lines = write_run_rows(rows, out_dir, COLUMNS)
    lines += [
        "",
        "| env | controller | seeds | MMER (mean +- std) | greedy eval return | trainer steps/s | "
        "wall-clock s (mean) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for controller in dict.fromkeys(row["controller"] for row in rows):
        cell = [row for row in rows if row["controller"] == controller]
        mmer = _spread(
            [row["train_return_max"] for row in cell if row["train_return_max"] is not None] or [float("nan")]
        )
        greedy = _spread(
            [row["eval_return_greedy"] for row in cell if row["eval_return_greedy"] is not None] or [float("nan")]
        )
        sps = statistics.fmean(row["sps_median"] or 0.0 for row in cell)
        wall = statistics.fmean(row["train_time_s"] or 0.0 for row in cell)
        lines.append(
            f"| {cell[0]['env']} | {controller} | {len(cell)} | {mmer[0]:.3f} +- {mmer[1]:.3f} | "
            f"{greedy[0]:.3f} +- {greedy[1]:.3f} | {sps:,.0f} | {wall:,.0f} |"
        )
    if env_sps is not None:
        lines += ["", f"The env alone (random actions): {env_sps:,.0f} env-steps/s."]
    (Path(out_dir) / "results.md").write_text("\n".join(lines) + "\n")
