"""Checkpoints: atomic writes, and loads that refuse damaged files with a clear message.

A checkpoint is a ``torch.save`` of plain containers and tensors (loadable with
``weights_only=True``) holding ``"format": "mamba_rl.checkpoint"``, its version, the config,
the policy's parameters and, for resuming, the optimizer, the collector (env state, recurrent
state, sampling generator) and the trainer's counters (a run on several processes adds
``"world_size"`` and the other ranks' collectors in ``"rank_states"``), plus ``"sha256"``: a
digest of every other entry (:func:`payload_digest`). A load recomputes the digest, so bytes changed on disk
(a flipped bit inside a tensor, which ``torch.load`` itself does not notice) are an error, and
refuses a policy with NaN or infinite parameters (a diverged run's weights).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import tempfile
from pathlib import Path

import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "atomic_save",
    "save_checkpoint",
    "load_checkpoint",
    "find_checkpoint",
    "payload_digest",
    "save_policy",
]

CHECKPOINT_FORMAT = "mamba_rl.checkpoint"
CHECKPOINT_VERSION = 2
# version 1 is version 2 without the "sha256" entry
READABLE_VERSIONS = (1, 2)
CHECKPOINT_NAME = "checkpoint.pt"
POLICY_NAME = "policy.pt"
# what a policy file keeps of a checkpoint: enough to evaluate, picture or fine-tune the policy
# (``init_from``), without the optimizer, the collector and the history a resume needs
POLICY_ENTRIES = ("config", "update", "global_step", "train_time_s", "policy", "param_counts", "torch_version")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, damaged, not a mamba-rl checkpoint, or that
    cannot be written."""


def payload_digest(obj) -> str:
    """SHA-256 over a checkpoint payload: every key, every leaf's type and value, every tensor's
    dtype, shape and bytes, in the containers' order (which ``torch.save``/``torch.load`` keep)."""
    digest = hashlib.sha256()

    def walk(value) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"T{flat.dtype}{tuple(value.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}".encode())
            for key, item in value.items():
                walk(key)
                walk(item)
        elif isinstance(value, (list, tuple)):
            digest.update(f"L{type(value).__name__}{len(value)}".encode())
            for item in value:
                walk(item)
        else:
            digest.update(f"V{type(value).__name__}:{value!r};".encode())

    walk(obj)
    return digest.hexdigest()


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` into a temporary file in ``path``'s directory, fsync it, ``os.replace`` it over
    ``path``, fsync the directory. A crash at any point leaves the old file or the new one whole.

    Raises:
        CheckpointError: the file cannot be written (a full disk, a read-only directory); the
            message names the path and says whether a previous file there is intact.
    """
    path = Path(path)
    # serialised in memory first, so that a failed write surfaces as the OSError of the write
    # itself (torch's zip writer reports one as "unexpected pos")
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _remove(tmp)
        kept = f"the previous {path.name} there is intact" if path.exists() else f"no {path.name} was written"
        if err.errno in _DISK_FULL:
            raise CheckpointError(f"cannot write {path}: the disk is full ({err.strerror}); {kept}") from err
        raise CheckpointError(f"cannot write {path}: {err.strerror or err}; {kept}") from err
    except BaseException:
        _remove(tmp)
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


def _remove(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)


def save_checkpoint(payload: dict, path: str | os.PathLike) -> Path:
    """Write ``payload`` (plus the format tag, version and digest) atomically to ``path``."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    return atomic_save({**payload, "sha256": payload_digest(payload)}, path)


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
        CheckpointError: the file is missing, is not a torch file, is not a mamba-rl checkpoint
            of a known version, does not match its digest, or holds non-finite parameters; the
            message names the path and what was found.
    """
    path = find_checkpoint(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated?): {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is not a mamba-rl checkpoint: expected format {CHECKPOINT_FORMAT!r}, got {found!r}"
        )
    if payload.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')!r}; this mamba-rl reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    if payload["version"] >= 2:
        stored = payload.pop("sha256", None)
        if stored != payload_digest(payload):
            raise CheckpointError(
                f"{path} is damaged: its contents do not match the sha256 digest written with it "
                f"({'no digest' if stored is None else 'digest mismatch'}); use an intact copy"
            )
    for key in ("config", "policy"):
        if key not in payload:
            raise CheckpointError(f"{path} is missing {key!r}: not a complete mamba-rl checkpoint")
    bad = [
        name
        for name, value in payload["policy"].items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(value.isfinite().all())
    ]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointError(
            f"{path} holds non-finite (NaN or inf) policy parameters: {shown}; a policy that diverged "
            "cannot be evaluated or resumed"
        )
    return payload


def save_policy(checkpoint: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """Write the trained policy of ``checkpoint`` (a file or a run directory) to ``path``
    (default: ``policy.pt`` beside it): a checkpoint with :data:`POLICY_ENTRIES` only, readable by
    :func:`load_checkpoint`, ``mamba-rl-eval`` and ``init_from``, a fraction of the size (no
    optimizer moments, no rollout carry). Atomic, with its digest."""
    source = find_checkpoint(checkpoint)
    payload = load_checkpoint(source, map_location="cpu")
    kept = {key: payload[key] for key in POLICY_ENTRIES if key in payload}
    return save_checkpoint(kept, source.parent / POLICY_NAME if path is None else path)
