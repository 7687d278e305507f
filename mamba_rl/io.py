"""Checkpoints: atomic writes and loads that fail with a clear message.

A checkpoint is a ``torch.save`` of plain containers and tensors (loadable with
``weights_only=True``) holding ``"format": "mamba_rl.checkpoint"``, its version, the config,
the policy's parameters and, for resuming, the optimizer, the collector (env state, recurrent
state, sampling generator) and the trainer's counters.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CheckpointError", "atomic_save", "save_checkpoint",
           "load_checkpoint", "find_checkpoint"]

CHECKPOINT_FORMAT = "mamba_rl.checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not a mamba-rl checkpoint."""


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` into a temporary file in ``path``'s directory, fsync it, ``os.replace`` it over
    ``path``, fsync the directory. A crash at any point leaves the old file or the new one whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def save_checkpoint(payload: dict, path: str | os.PathLike) -> Path:
    """Write ``payload`` (plus the format tag and version) atomically to ``path``."""
    return atomic_save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}, path)


def find_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/checkpoint.pt`` when ``path`` is a run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | os.PathLike, map_location=None) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (a file or a run directory).

    Raises:
        CheckpointError: the file is missing, is not a torch file, or is not a mamba-rl
            checkpoint of a known version; the message names the path and what was found.
    """
    path = find_checkpoint(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated?): {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a mamba-rl checkpoint: expected format {CHECKPOINT_FORMAT!r}, got {found!r}")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')!r}; this mamba-rl reads version {CHECKPOINT_VERSION}"
        )
    for key in ("config", "policy"):
        if key not in payload:
            raise CheckpointError(f"{path} is missing {key!r}: not a complete mamba-rl checkpoint")
    return payload
