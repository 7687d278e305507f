"""The state lab: trace, picture, steer and check the recurrent state of a Mamba policy.

- :func:`trace`: a module's outputs and every layer's SSM and conv state at every step.
- :func:`write_state_report`, :func:`state_figure` and the ``*_figure`` functions: heatmap, norms
  and PCA of the state on the delayed-memory task, correct vs wrong answers.
- :func:`steer_ssm_state`: find an additive change of the SSM state that makes the policy give a
  chosen answer; :func:`rollout_with_ssm_delta` applies it in a real rollout.
- :func:`check_equivalence`: step, sequence and chunked sequence (every backend) against each other.
"""

from mamba_rl.lab.policy import StatePolicy, as_state_policy, load_policy, save_lab_policy
from mamba_rl.lab.plots import (
    Episodes,
    heatmap_figure,
    norms_figure,
    pca_figure,
    play_episodes,
    state_figure,
    summary_figure,
    write_state_report,
)
from mamba_rl.lab.trace import LayerTrace, StateTrace, trace

__all__ = [
    "Episodes",
    "LayerTrace",
    "StatePolicy",
    "StateTrace",
    "as_state_policy",
    "heatmap_figure",
    "load_policy",
    "norms_figure",
    "pca_figure",
    "play_episodes",
    "save_lab_policy",
    "state_figure",
    "summary_figure",
    "trace",
    "write_state_report",
]
