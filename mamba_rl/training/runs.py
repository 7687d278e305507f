"""Run directories: one owner at a time, what a resume may change, and stopping on a signal.

- :class:`RunLock`: a run holds an exclusive ``flock`` on ``<run_dir>/.lock`` for as long as it
  writes there, so a second run (or a resume) into the same directory fails at once with
  :class:`RunDirLocked` instead of interleaving its rows. The kernel drops the lock of a process
  that dies, so a lock left by a killed run is taken over, with a message naming the old owner.
- :data:`RESUME_MUTABLE_KEYS` and :func:`check_resume_config`: a resume continues the same
  computation; only how long it runs, what it evaluates and what it logs may change.
- :class:`GracefulStop`: SIGINT (Ctrl-C) and SIGTERM (what schedulers such as SLURM send before
  killing a job) both finish the current update, save a checkpoint and stop; a second one aborts.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import sys
import threading
import warnings
from pathlib import Path

from mamba_rl.config import ConfigError, TrainConfig, config_from_dict, config_to_dict

__all__ = [
    "RESUME_MUTABLE_KEYS",
    "RunDirLocked",
    "RunLock",
    "GracefulStop",
    "SignalsRaise",
    "check_resume_config",
    "check_resume_overrides",
]

LOCK_NAME = ".lock"
# some network filesystems have no flock
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)

# how long a resumed run goes on, what it evaluates and logs, and where it runs: never what it computes
RESUME_MUTABLE_KEYS = frozenset(
    {
        "num_updates",
        "max_wall_time_s",
        "target_accuracy",
        "target_window",
        "checkpoint_interval",
        "log_interval",
        "eval_episodes",
        "eval_horizons",
        "eval_horizon_multiples",
        "eval_num_envs",
        "tensorboard",
        "progress_bar",
        "device",
        "num_threads",
        "dist_timeout_s",
        "cuda_graph",
        "compile_env",
        "run_root",
        "state_figure_interval",
    }
)


class RunDirLocked(RuntimeError):
    """Another live process owns the run directory."""


class RunLock:
    """An exclusive lock on ``run_dir`` for one process: ``with RunLock(run_dir): ...``.

    The lock file holds the owner's pid and host. It is removed on release; one found at
    acquisition belonged to a process that ended without releasing it (kill -9, a crash), and is
    taken over with a message on stderr.

    Raises:
        RunDirLocked: another live process holds the lock (the message names its pid and host).
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                owner = _read(fd)
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EACCES):
                    raise RunDirLocked(
                        f"{self.run_dir} is in use by another run ({owner or 'owner unknown'}); wait for it to "
                        "end, or choose another run directory"
                    ) from None
                if err.errno in _NO_FLOCK:
                    warnings.warn(
                        f"cannot lock {self.run_dir} ({err.strerror}: the filesystem has no flock); "
                        "running without a lock, so make sure no other run uses this directory"
                    )
                    return self
                raise
            # the file may have been removed by its releasing owner between our open and flock
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        owner = _read(fd)
        if owner:
            print(
                f"note: {self.run_dir} was locked by {owner}, which ended without releasing it; taking it over",
                file=sys.stderr,
                flush=True,
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # removed while still locked, so no other process can lock the file that is going away
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 256).decode(errors="replace").strip()


def check_resume_overrides(keys) -> None:
    """``--set`` keys given with ``--resume``: each must be in :data:`RESUME_MUTABLE_KEYS`."""
    bad = [key for key in keys if key not in RESUME_MUTABLE_KEYS]
    if bad:
        raise ConfigError(
            f"--set {', '.join(bad)} with --resume: a resume continues the same computation and may change only "
            f"{', '.join(sorted(RESUME_MUTABLE_KEYS))}; start a new run to change {', '.join(bad)}"
        )


def check_resume_config(saved: dict, cfg: TrainConfig, where: str) -> None:
    """``cfg`` may differ from the config ``saved`` with a checkpoint (at ``where``) only in
    :data:`RESUME_MUTABLE_KEYS`; anything else is a :class:`ConfigError` naming each key,
    its saved value and the given one."""
    saved = config_to_dict(config_from_dict(saved, where=f"{where} (config)"))
    given = config_to_dict(cfg)
    changed = [key for key in saved if key not in RESUME_MUTABLE_KEYS and saved[key] != given[key]]
    if changed:
        diffs = ", ".join(f"{key}: saved {saved[key]!r}, given {given[key]!r}" for key in changed)
        raise ConfigError(
            f"cannot resume {where} with a different {', '.join(changed)} ({diffs}); a resume may change only "
            f"{', '.join(sorted(RESUME_MUTABLE_KEYS))}"
        )


class GracefulStop:
    """First SIGINT or SIGTERM: set :attr:`requested` (the trainer finishes the update, saves a
    checkpoint and stops). A second one raises ``KeyboardInterrupt`` at once.

    Installed only in the main thread (Python delivers signals there); the previous handlers
    come back on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        again = "Ctrl-C" if signum == signal.SIGINT else self.signal_name
        print(
            f"\n{self.signal_name}: finishing this update, then saving a checkpoint ({again} again to abort now)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


class SignalsRaise:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt``, for work after the training loop (the final
    checkpoint and evaluation), so that the trainer can still write ``metrics.json``.

    SIGINT is handled too, not left to Python's default: a process that inherits SIGINT ignored
    (a background job of a shell script, a pytest-xdist worker) would otherwise not stop there,
    while :class:`GracefulStop` does stop it during training.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._previous: dict = {}

    @staticmethod
    def _handler(signum, frame) -> None:
        raise KeyboardInterrupt

    def __enter__(self) -> "SignalsRaise":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
