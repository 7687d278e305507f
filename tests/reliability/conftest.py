"""Tiny CPU runs for the fault-injection tests: 2 bits, delays 1..5, 16 envs, d_model 8 (a run of a
few updates takes a few seconds)."""

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from mamba_rl.config import TrainConfig, config_to_dict

REPO = Path(__file__).resolve().parents[2]
TINY = dict(
    num_bits=2,
    horizon=[1, 5],
    num_envs=16,
    d_model=8,
    device="cpu",
    num_updates=3,
    eval_episodes=0,
    progress_bar=False,
    tensorboard=False,
    checkpoint_interval=1,
    num_threads=1,
)


def tiny_config(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, **overrides})


def tiny_overrides(**overrides) -> list[str]:
    """``--set`` arguments for the same tiny config."""
    args = []
    for key, value in {**TINY, **overrides}.items():
        args += ["--set", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]
    return args


def train_process(args: list[str], **popen) -> subprocess.Popen:
    """``python train.py ARGS`` in a child process, importing this checkout."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def progress_updates(run_dir: Path) -> list[int]:
    """The ``update`` column of ``run_dir/progress.csv`` (every line after the header)."""
    path = Path(run_dir) / "progress.csv"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()[1:]
    return [int(line.split(",", 1)[0]) for line in lines if line]


def policy_params(run_dir: Path) -> dict:
    return torch.load(Path(run_dir) / "checkpoint.pt", weights_only=True)["policy"]


def assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def snapshot(run_dir: Path) -> dict:
    """Every file of ``run_dir`` and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(Path(run_dir).iterdir()) if p.is_file()}


__all__ = [
    "REPO",
    "TINY",
    "tiny_config",
    "tiny_overrides",
    "train_process",
    "progress_updates",
    "policy_params",
    "assert_same_params",
    "snapshot",
    "config_to_dict",
]
