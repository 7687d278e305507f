"""TensorBoard scalars under fixed names, a per-update CSV, and the hyperparameter table.

Scalar names (one point per logged update, x axis = environment steps):

==============================  ==================================================================
``train/accuracy``              right answers / episodes ended in the rollout (sampled actions)
``train/episode_return``        mean return of the episodes ended in the rollout
``train/episodes``              episodes ended in the rollout
``train/explained_variance``    of the value predictions over the rollout
``train/learning_rate``         the scheduled learning rate
``losses/policy``               clipped surrogate (mask-weighted, see mamba_rl.training.ppo)
``losses/value``                0.5 * mean squared error of the value head
``losses/entropy``              mean entropy of the policy (mask-weighted)
``losses/approx_kl``            mean ``(r - 1) - log r``
``losses/clip_fraction``        fraction of steps with ``|r - 1| > clip_coef``
``losses/grad_norm``            global gradient norm before clipping
``time/sps``                    environment steps per second, collection and update together
``time/rollout_s``              seconds to collect the rollout
``time/update_s``               seconds for GAE and the PPO epochs
``gpu/memory_allocated_gb``     CUDA memory held by tensors now (CUDA runs only)
``gpu/max_memory_allocated_gb`` peak since the start
``state/<trunk>/<name>``        norms of the recurrent state at the end of the rollout
                                (``ssm_norm``, ``ssm_max_abs`` for Mamba; ``hidden_norm`` for GRU)
==============================  ==================================================================
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from pathlib import Path

__all__ = ["RunLogger", "hparams_markdown", "read_progress"]


def read_progress(path: str | Path) -> tuple[list[str] | None, list[dict]]:
    """``(fields, rows)`` of a ``progress.csv``: the rows whose ``update`` and ``global_step`` parse
    and that have exactly one value per field; any other line is skipped with a warning."""
    path = Path(path)
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        lines = list(reader)
    if not header or "update" not in header or "global_step" not in header:
        if header or lines:
            warnings.warn(f"{path} has no valid header (update, global_step, ...); its rows are dropped")
        return None, []
    rows, bad = [], []
    for number, values in enumerate(lines, start=2):
        row = dict(zip(header, values))
        try:
            if len(values) != len(header):
                raise ValueError
            int(float(row["update"])), int(float(row["global_step"]))
        except ValueError:
            bad.append(number)
            continue
        rows.append(row)
    if bad:
        lines = ", ".join(map(str, bad[:5]))
        warnings.warn(f"{path}: skipped {len(bad)} line(s) that do not parse as a row (line {lines})")
    return header, rows


def hparams_markdown(config: dict) -> str:
    """The hyperparameters as a Markdown table (CleanRL's ``hyperparameters`` text)."""
    rows = "\n".join(f"|{key}|{value}|" for key, value in config.items())
    return f"|param|value|\n|-|-|\n{rows}"


class RunLogger:
    """Writes scalars to TensorBoard (when enabled) and one CSV row per logged update.

    Args:
        run_dir: the run directory (event files and ``progress.csv`` go there).
        tensorboard: write TensorBoard event files.
        resume_step: on resume, the global step of the checkpoint the run continues from. Points
            the interrupted run logged after it are dropped (TensorBoard's ``purge_step`` one step
            later; the rows of ``progress.csv``), those up to it are kept, so after any number of
            resumes each logged update appears exactly once. None (a fresh run) drops every point
            an earlier attempt left in ``run_dir`` without a checkpoint. Lines of ``progress.csv``
            that do not parse (a torn last line, garbage) are dropped with a warning.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # TensorBoard drops the points of earlier event files at steps >= purge_step
            purge_step = resume_step + 1 if resume_step is not None else None
            if resume_step is None and any(self.run_dir.glob("events.out.tfevents.*")):
                purge_step = 0
            self.writer = SummaryWriter(str(self.run_dir), purge_step=purge_step)
        self.csv_path = self.run_dir / "progress.csv"
        self._fields: list[str] | None = None
        if self.csv_path.exists():
            self._fields, rows = read_progress(self.csv_path)
            keep = -1 if resume_step is None else resume_step
            if self._fields is not None:
                self._rewrite([row for row in rows if int(float(row["global_step"])) <= keep])

    def _rewrite(self, rows) -> None:
        """Replace ``progress.csv`` atomically (a crash leaves the old file or the new one)."""
        tmp = self.csv_path.with_name(f".{self.csv_path.name}.tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.csv_path)

    def hparams(self, config: dict) -> None:
        if self.writer is not None:
            self.writer.add_text("hyperparameters", hparams_markdown(config))

    def text(self, tag: str, text: str) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text)

    def tensorboard_scalars(self, values: dict[str, float], step: int) -> None:
        """Scalars for TensorBoard only (not the per-update CSV), e.g. the final evaluation."""
        if self.writer is not None:
            for name, value in values.items():
                if value is not None and math.isfinite(value):
                    self.writer.add_scalar(name, value, step)

    def scalars(self, values: dict[str, float], step: int, update: int) -> None:
        """One update's scalars: TensorBoard and a row of ``progress.csv``."""
        self.tensorboard_scalars(values, step)
        row = {"update": update, "global_step": step, **values}
        if self._fields is None:
            self._fields = list(row)
            self._rewrite([])
        with open(self.csv_path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self._fields, extrasaction="ignore").writerow(row)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
