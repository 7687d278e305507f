"""``python train.py`` / ``mamba-rl-train``: one run from a preset, resume, or a sweep grid.

    python train.py --config configs/quick_cpu.yaml [--set key=value ...] [--run-dir DIR]
    python train.py --resume runs/<run>            # continue the same run from its checkpoint
    python train.py --config configs/h1000_gpu.yaml --controllers mamba gru --horizons 1000 5000 \\
        --seeds 0 1 2 --sweep-dir runs/sweep        # a grid: results.md, results.csv, a PNG
    python train.py --env CartPole-v1 [--set env_kwargs.KEY=VALUE ...]   # any Gymnasium id or TorchRL factory
    python train.py --config configs/popgym_repeat_first_easy.yaml --controllers mamba gru --seeds 0 1 2 \\
        --sweep-dir runs/popgym_rfe                # an env's controllers x seeds grid: results.md, results.csv
    python train.py --list-keys                    # every config key with its documentation
    torchrun --nproc_per_node 4 train.py --config configs/h1000_gpu.yaml --run-dir runs/h1000_n4 --auto-resume
                                                   # one run on 4 processes (docs/DISTRIBUTED.md)

A user's mistake (a bad key or value, a damaged checkpoint, a run directory in use, a full disk)
prints one ``error:`` line, exit status 2 for a bad configuration and 1 otherwise;
``MAMBA_RL_TRACEBACK=1`` shows the traceback instead. A run stopped by ``max_wall_time_s`` before
``num_updates`` exits with status 3, an interrupted one (SIGINT, SIGTERM) with 130.

Started by torchrun (``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` set), the processes train one run
together (:mod:`mamba_rl.training.distributed`); an error that rank 0 finds (a bad resume, a run
directory in use) stops every rank with the same exit status, printed once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mamba_rl.config import ConfigError, field_docs, load_config, parse_override
from mamba_rl.envs.adapters import EnvSpecError

__all__ = ["main", "build_parser"]

EXIT_CODES = {"completed": 0, "target_reached": 0, "time_limit": 3, "interrupted": 130}
# options that choose what a new run is; a resume takes all of that from its run directory
NEW_RUN_OPTIONS = ("config", "env", "run_dir", "controllers", "horizons", "seeds", "sweep_dir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="PPO for Mamba or GRU policies on the delayed memory task, any Gymnasium id or a TorchRL env.",
    )
    parser.add_argument("--config", default=None, help="YAML preset (configs/*.yaml); defaults otherwise")
    parser.add_argument(
        "--env",
        default=None,
        help="the env (same as --set env=ID): a Gymnasium id such as "
        "CartPole-v1 or popgym-RepeatFirstEasy-v0, or a TorchRL factory package.module:function",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (repeatable), e.g. --set horizon=1000",
    )
    parser.add_argument("--run-dir", default=None, help="run directory (default: a new one under run_root)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run saved in RUN_DIR")
    parser.add_argument(
        "--auto-resume",
        action="store_true",
        help="with --run-dir: continue the run saved there if it holds a checkpoint, else start it "
        "(for jobs that a scheduler or torchrun --max-restarts starts again with the same command)",
    )
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
    from mamba_rl.io import CheckpointError
    from mamba_rl.training.distributed import launched_by_torchrun
    from mamba_rl.training.runs import RunDirLocked
    from mamba_rl.training.trainer import TrainingDiverged

    # under torchrun an error every rank raises is printed by rank 0 alone
    quiet = launched_by_torchrun() and os.environ["RANK"] != "0"
    try:
        return _run(args)
    except (ConfigError, EnvSpecError) as err:
        if os.environ.get("MAMBA_RL_TRACEBACK") == "1":
            raise
        if not (quiet and getattr(err, "from_rank_0", False)):
            print(f"error: {err}", file=sys.stderr)
        return 2
    except (CheckpointError, RunDirLocked, TrainingDiverged, OSError, ValueError) as err:
        if os.environ.get("MAMBA_RL_TRACEBACK") == "1":
            raise
        if not (quiet and getattr(err, "from_rank_0", False)):
            print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130


def _run(args) -> int:
    from mamba_rl.training.trainer import train

    if args.auto_resume and (args.run_dir is None or args.resume is not None):
        raise ConfigError(
            "--auto-resume needs --run-dir DIR (the directory to continue or to start) and no --resume, got "
            f"--run-dir {args.run_dir} and --resume {args.resume}"
        )
    if args.resume is not None:
        from mamba_rl.training.runs import check_resume_overrides

        given = [f"--{name.replace('_', '-')}" for name in NEW_RUN_OPTIONS if getattr(args, name) is not None]
        if given:
            raise ConfigError(
                f"--resume takes the run's config and directory from {args.resume}; it cannot be "
                f"combined with {', '.join(given)}"
            )
        run_dir = Path(args.resume)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there (not a run directory)")
        check_resume_overrides([parse_override(text)[0] for text in args.overrides])
        cfg = load_config(saved, args.overrides)
        return _train_on_ranks(train, cfg, run_dir, resume=True)
    overrides = ([f"env={args.env}"] if args.env is not None else []) + list(args.overrides)
    cfg = load_config(args.config, overrides)
    sweep = any(v is not None for v in (args.controllers, args.horizons, args.seeds))
    if not sweep:
        return _train_on_ranks(train, cfg, args.run_dir, resume="auto" if args.auto_resume else False)
    from mamba_rl.training.distributed import launched_by_torchrun

    if launched_by_torchrun():
        raise ConfigError(
            "--controllers, --horizons and --seeds run a sweep of runs one after another in one process; "
            "start it without torchrun (torchrun trains one run on several processes)"
        )
    if not cfg.is_memory_task:
        return _env_sweep(cfg, args)
    from mamba_rl.training.sweep import run_sweep

    out_dir = Path(args.sweep_dir or Path(cfg.run_root) / "sweep")
    rows = run_sweep(
        cfg, args.controllers or [cfg.controller], args.horizons or [cfg.horizon], args.seeds or [cfg.seed], out_dir
    )
    print((out_dir / "results.md").read_text())
    print(f"{len(rows)} runs; table {out_dir / 'results.md'}, plot {out_dir / 'accuracy_vs_horizon.png'}")
    return 0


def _train_on_ranks(train, cfg, run_dir, resume) -> int:
    """One run: on the processes torchrun started (in their process group, left at the end), or on
    this one."""
    import torch.distributed as dist

    from mamba_rl.training.distributed import init_from_torchrun

    try:
        ranks = init_from_torchrun(cfg.device, cfg.dist_timeout_s)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    try:
        return EXIT_CODES[train(cfg, run_dir, resume=resume, ranks=ranks).status]
    finally:
        if ranks.launched and dist.is_initialized():
            dist.destroy_process_group()


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
