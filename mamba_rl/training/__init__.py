"""PPO training: rollout collection, GAE and the clipped loss on tensors, the training loop, sweeps.

- :func:`train` (:mod:`mamba_rl.training.trainer`): one run, as a :class:`~mamba_rl.config.TrainConfig` says.
- :class:`RolloutCollector` / :class:`Rollout` (:mod:`mamba_rl.training.rollout`): steps any
  :class:`~mamba_rl.envs.adapters.BatchedEnv`; :class:`SequenceRolloutCollector` plays an env whose
  observations do not depend on the actions (the memory task) by blocks of steps, the same rollouts.
- :func:`compute_gae`, :func:`replay`, :func:`ppo_loss` (:mod:`mamba_rl.training.ppo`).
- :func:`run_sweep` (:mod:`mamba_rl.training.sweep`): a controllers x horizons x seeds grid.
- :mod:`mamba_rl.training.runs`: the run-directory lock, the keys a resume may change, stopping on
  SIGINT/SIGTERM.
- :class:`Ranks` (:mod:`mamba_rl.training.distributed`): one run on several processes (torchrun).
"""

from mamba_rl.training.distributed import Ranks
from mamba_rl.training.ppo import compute_gae, ppo_loss, replay
from mamba_rl.training.rollout import Rollout, RolloutCollector, SequenceRolloutCollector, sample_actions
from mamba_rl.training.sweep import run_sweep
from mamba_rl.training.trainer import TrainingDiverged, TrainResult, train

__all__ = [
    "Ranks",
    "Rollout",
    "RolloutCollector",
    "SequenceRolloutCollector",
    "TrainResult",
    "TrainingDiverged",
    "compute_gae",
    "ppo_loss",
    "replay",
    "run_sweep",
    "sample_actions",
    "train",
]
