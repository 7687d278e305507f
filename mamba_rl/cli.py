"""``python train.py`` / ``mamba-rl-train``: one run from a preset, resume, or a sweep grid.

    python train.py --config configs/quick_cpu.yaml [--set key=value ...] [--run-dir DIR]
    python train.py --resume runs/<run>            # continue the same run from its checkpoint
    python train.py --config configs/h1000_gpu.yaml --controllers mamba gru --horizons 1000 5000 \\
        --seeds 0 1 2 --sweep-dir runs/sweep        # a grid: results.md, results.csv, a PNG
    python train.py --env CartPole-v1 [--set env_kwargs.KEY=VALUE ...]   # any Gymnasium id or TorchRL factory
    python train.py --config configs/popgym_repeat_first_easy.yaml --controllers mamba gru --seeds 0 1 2 \
        --sweep-dir runs/popgym_rfe                # an env's controllers x seeds grid: results.md, results.csv
    python train.py --list-keys                    # every config key with its documentation
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from mamba_rl.config import ConfigError, field_docs, load_config
from mamba_rl.envs.adapters import EnvSpecError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train.py", description="PPO for Mamba or GRU policies on the delayed "
                                     "memory task, any Gymnasium id or a TorchRL env.")
    parser.add_argument("--config", default=None, help="YAML preset (configs/*.yaml); defaults otherwise")
    parser.add_argument("--env", default=None, help="the env (same as --set env=ID): a Gymnasium id such as "
                        "CartPole-v1 or popgym-RepeatFirstEasy-v0, or a TorchRL factory package.module:function")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable), e.g. --set horizon=1000")
    parser.add_argument("--run-dir", default=None, help="run directory (default: a new one under run_root)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run saved in RUN_DIR")
    parser.add_argument("--controllers", nargs="+", choices=("mamba", "gru"), default=None, help="sweep: controllers")
    parser.add_argument("--horizons", nargs="+", type=int, default=None, help="sweep: horizons")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="sweep: seeds")
    parser.add_argument("--sweep-dir", default=None, help="sweep output directory (default run_root/sweep)")
    parser.add_argument("--list-keys", action="store_true", help="print every config key and exit")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_keys:
        for key, doc in field_docs().items():
            print(f"{key}: {doc}")
        return 0
    try:
        return _run(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from mamba_rl.training.trainer import train

    if args.resume is not None:
        run_dir = Path(args.resume)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there (not a run directory)")
        extra = yaml.safe_load(saved.read_text())
        cfg = load_config(None, args.overrides, extra=extra)
        result = train(cfg, run_dir, resume=True)
        return 0 if result.status != "interrupted" else 130
    overrides = ([f"env={args.env}"] if args.env is not None else []) + list(args.overrides)
    cfg = load_config(args.config, overrides)
    sweep = any(v is not None for v in (args.controllers, args.horizons, args.seeds))
    try:
        if not sweep:
            result = train(cfg, args.run_dir)
            return 0 if result.status != "interrupted" else 130
        if not cfg.is_memory_task:
            return _env_sweep(cfg, args)
    except EnvSpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from mamba_rl.training.sweep import run_sweep

    out_dir = Path(args.sweep_dir or Path(cfg.run_root) / "sweep")
    rows = run_sweep(cfg, args.controllers or [cfg.controller], args.horizons or [cfg.horizon],
                     args.seeds or [cfg.seed], out_dir)
    print((out_dir / "results.md").read_text())
    print(f"{len(rows)} runs; table {out_dir / 'results.md'}, plot {out_dir / 'accuracy_vs_horizon.png'}")
    return 0


def _env_sweep(cfg, args) -> int:
    from mamba_rl.training.env_sweep import run_env_sweep

    if args.horizons is not None:
        raise ConfigError(f"--horizons sweeps the memory task's delay; env {cfg.env!r} has none")
    out_dir = Path(args.sweep_dir or Path(cfg.run_root) / "sweep")
    rows = run_env_sweep(cfg, args.controllers or [cfg.controller], args.seeds or [cfg.seed], out_dir)
    print((out_dir / "results.md").read_text())
    print(f"{len(rows)} runs; table {out_dir / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
