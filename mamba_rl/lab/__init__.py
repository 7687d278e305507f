"""The state lab: trace, picture, steer and check the recurrent state of a Mamba policy.

- :func:`trace`: a module's outputs and every layer's SSM and conv state at every step.
- :func:`write_state_report`, :func:`state_figure` and the ``*_figure`` functions: heatmap, norms
  and PCA of the state on the delayed-memory task, correct vs wrong answers, and which bits of
  the answers are right; :func:`distractor_probe` and :func:`distractor_figure`: the state under
  other distractors vs under another cue.
- :func:`steer_ssm_state`: find an additive change of the SSM state that makes the policy give a
  chosen answer; :func:`rollout_with_ssm_delta` applies it in a real rollout.
- :func:`check_equivalence`: step, sequence and chunked sequence (every backend) against each other.
- :func:`fast_forward_memory`: the exact float64 answer after any number of blank delay steps
  (closed form of the time-invariant scan the blank steps make).

The picture functions import matplotlib on first use, not with the package.
"""

from mamba_rl.lab.equivalence import EquivalenceReport, EquivalenceRow, available_backends, check_equivalence
from mamba_rl.lab.fastforward import FastForward, fast_forward_memory
from mamba_rl.lab.policy import StatePolicy, as_state_policy, load_policy, policy_answers, save_lab_policy
from mamba_rl.lab.steering import (
    RolloutResult,
    SteeringResult,
    rollout_with_ssm_delta,
    steer_ssm_state,
    steered_logits,
)
from mamba_rl.lab.tracing import LayerTrace, StateTrace, trace

__all__ = [
    "DistractorProbe",
    "EquivalenceReport",
    "EquivalenceRow",
    "Episodes",
    "FastForward",
    "LayerTrace",
    "RolloutResult",
    "StatePolicy",
    "StateTrace",
    "SteeringResult",
    "as_state_policy",
    "available_backends",
    "bits_figure",
    "bits_right",
    "check_equivalence",
    "distractor_figure",
    "distractor_probe",
    "fast_forward_memory",
    "heatmap_figure",
    "load_policy",
    "norms_figure",
    "pca_figure",
    "play_episodes",
    "policy_answers",
    "rollout_with_ssm_delta",
    "save_lab_policy",
    "state_figure",
    "steer_ssm_state",
    "steered_logits",
    "summary_figure",
    "trace",
    "write_state_report",
]

_PLOT_NAMES = frozenset(
    {
        "Episodes",
        "bits_figure",
        "bits_right",
        "heatmap_figure",
        "norms_figure",
        "pca_figure",
        "play_episodes",
        "state_figure",
        "summary_figure",
        "write_state_report",
    }
)


_DISTRACTOR_NAMES = frozenset({"DistractorProbe", "distractor_figure", "distractor_probe"})


def __getattr__(name):
    if name in _PLOT_NAMES:
        from mamba_rl.lab import plots

        return getattr(plots, name)
    if name in _DISTRACTOR_NAMES:
        from mamba_rl.lab import distractors

        return getattr(distractors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _PLOT_NAMES | _DISTRACTOR_NAMES)
