"""PPO training: rollout collection, GAE and the clipped loss on tensors, the training loop, sweeps.

- :func:`train` (:mod:`mamba_rl.training.trainer`): one run, as a :class:`~mamba_rl.config.TrainConfig` says.
- :class:`RolloutCollector` / :class:`Rollout` (:mod:`mamba_rl.training.rollout`).
- :func:`compute_gae`, :func:`replay`, :func:`ppo_loss` (:mod:`mamba_rl.training.ppo`).
- :func:`run_sweep` (:mod:`mamba_rl.training.sweep`): a controllers x horizons x seeds grid.
- :mod:`mamba_rl.training.runs`: the run-directory lock, the keys a resume may change, stopping on
  SIGINT/SIGTERM.
"""

from mamba_rl.training.ppo import compute_gae, ppo_loss, replay
from mamba_rl.training.rollout import Rollout, RolloutCollector, sample_actions

__all__ = ["Rollout", "RolloutCollector", "TrainResult", "TrainingDiverged", "compute_gae", "ppo_loss", "replay",
           "run_sweep", "sample_actions", "train"]

_LAZY = {"train": "trainer", "TrainResult": "trainer", "TrainingDiverged": "trainer", "run_sweep": "sweep"}


def __getattr__(name):
    # the trainer imports mamba_rl.evaluate, which imports the rollout module: load it on first use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"mamba_rl.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mamba_rl.training' has no attribute {name!r}")
