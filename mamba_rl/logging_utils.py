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
from pathlib import Path

__all__ = ["RunLogger", "hparams_markdown"]


def hparams_markdown(config: dict) -> str:
    """The hyperparameters as a Markdown table (CleanRL's ``hyperparameters`` text)."""
    rows = "\n".join(f"|{key}|{value}|" for key, value in config.items())
    return f"|param|value|\n|-|-|\n{rows}"


class RunLogger:
    """Writes scalars to TensorBoard (when enabled) and one CSV row per logged update.

    Args:
        run_dir: the run directory (event files and ``progress.csv`` go there).
        tensorboard: write TensorBoard event files.
        purge_step: on resume, the step of the checkpoint: TensorBoard drops later points left by
            the interrupted run, so the curves continue without overlap.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, purge_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir), purge_step=purge_step)
        self.csv_path = self.run_dir / "progress.csv"
        self._fields: list[str] | None = None
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as handle:
                rows = list(csv.DictReader(handle))
            self._fields = list(rows[0].keys()) if rows else None
            if purge_step is not None and rows:
                # drop rows the interrupted run wrote after its last checkpoint
                kept = [row for row in rows if int(float(row["global_step"])) < purge_step]
                self._rewrite(kept)

    def _rewrite(self, rows) -> None:
        with open(self.csv_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._fields)
            writer.writeheader()
            writer.writerows(rows)

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
