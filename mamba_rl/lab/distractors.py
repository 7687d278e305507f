"""Does the memory ignore the distractors? The state under other distractors vs under another cue.

With ``num_distractors > 0`` every step of the delayed-memory task shows fair coins the answer
does not depend on. :func:`distractor_probe` plays, for each of ``P`` episodes ``a``, two
variants that differ from it in one thing only:

- *other distractors*: the same cue (the code's bits at step 0), the distractor coins of another
  episode ``b``;
- *other cue*: a different code at step 0, the same distractor coins as ``a``.

It traces the three and measures, at every kept step, the distance of the SSM state (all
layers) between ``a`` and each variant, and at the query step the distance of the actor head's
outputs and whether the answer changes. A memory that ignores the distractors keeps the first
distance small against the second (the cue is what the state holds) and never changes its answer
with the distractors; a state that follows the coins shows the first distance as large as the
second even where the answer holds (the head reads around it).

    >>> import torch
    >>> from torch import nn
    >>> from mamba_rl import MambaModule
    >>> from mamba_rl.envs import DelayedMemoryParams
    >>> from mamba_rl.lab import StatePolicy
    >>> from mamba_rl.lab.distractors import distractor_probe
    >>> params = DelayedMemoryParams(num_bits=2, horizon=6, num_distractors=3)
    >>> module = MambaModule(params.obs_dim, 16, in_key="observation", out_key="features")
    >>> with torch.no_grad():
    ...     module.input_proj.weight[:, params.num_bits + 2 :] = 0.0  # blind to the distractor channels
    >>> probe = distractor_probe(StatePolicy(module, nn.Linear(16, params.num_actions)), params, pairs=8)
    >>> float(probe.other_distractors.abs().max()), bool(probe.other_cue[-1].min() > 0)
    (0.0, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.lab.plots import REPORT_SEED, _shade_phases, episode_observations
from mamba_rl.lab.policy import as_state_policy, policy_answers
from mamba_rl.lab.tracing import trace

__all__ = ["DistractorProbe", "distractor_probe", "distractor_figure"]

_VARIANT_COLOR = {"other distractors": "#457b9d", "other cue": "#e76f51"}


@dataclass
class DistractorProbe:
    """What :func:`distractor_probe` measured over ``P`` episodes (all on the CPU).

    Attributes:
        steps: ``[K]`` the kept steps (the state after ``steps[k]`` steps).
        other_distractors: ``[K, P]`` L2 distance of the SSM state (all layers) between each
            episode and the same cue under another episode's distractors.
        other_cue: ``[K, P]`` the same between each episode and another code under its own
            distractors.
        state_norm: ``[K, P]`` L2 norm of each episode's own SSM state (the scale).
        outputs_other_distractors: ``[P]`` distance of the head's outputs at the query step.
        outputs_other_cue: ``[P]``.
        same_answer_other_distractors: ``[P]`` bool: the greedy answer did not change with the
            distractors.
        same_answer_other_cue: ``[P]`` bool: nor with the cue (a memory changes it).
        query_step: the query step, ``horizon + 1``.
        params: the task.
    """

    steps: torch.Tensor
    other_distractors: torch.Tensor
    other_cue: torch.Tensor
    state_norm: torch.Tensor
    outputs_other_distractors: torch.Tensor
    outputs_other_cue: torch.Tensor
    same_answer_other_distractors: torch.Tensor
    same_answer_other_cue: torch.Tensor
    query_step: int
    params: DelayedMemoryParams

    def at_query(self) -> dict:
        """Medians at the state the query reads and the answer counts, as plain numbers."""
        k = int((self.steps == self.query_step).nonzero()[0, 0])
        distractors = float(self.other_distractors[k].median())
        cue = float(self.other_cue[k].median())
        return {
            "pairs": int(self.other_cue.shape[1]),
            "state_distance_other_distractors": distractors,
            "state_distance_other_cue": cue,
            "state_distance_ratio": distractors / cue if cue > 0 else float("nan"),
            "state_norm": float(self.state_norm[k].median()),
            "outputs_distance_other_distractors": float(self.outputs_other_distractors.median()),
            "outputs_distance_other_cue": float(self.outputs_other_cue.median()),
            "same_answer_other_distractors": int(self.same_answer_other_distractors.sum()),
            "same_answer_other_cue": int(self.same_answer_other_cue.sum()),
        }


@torch.no_grad()
def distractor_probe(
    policy,
    params: DelayedMemoryParams,
    pairs: int = 32,
    *,
    seed: int = REPORT_SEED,
    device=None,
    stride: int = 1,
) -> DistractorProbe:
    """Trace ``pairs`` episodes of ``params`` and their two variants (the module docstring).

    Episode ``i`` (of ``seed``) is paired with episode ``pairs + i`` for its distractors; its other
    code is ``(code_i + 1 + code_{pairs + i} mod (2**num_bits - 1)) mod 2**num_bits``, never its
    own. Only the observations change, and only in the cue's bits or in the distractor channels.

    Args:
        policy: anything :func:`~mamba_rl.lab.as_state_policy` accepts, with a head.
        params: the task, with ``num_distractors > 0`` and one horizon (the three episodes of a
            pair share their query step).
        pairs: episodes probed.
        stride: keep every ``stride``-th state (:func:`~mamba_rl.lab.trace`).
    """
    state_policy = as_state_policy(policy)
    if state_policy.head is None:
        raise ValueError("distractor_probe needs a policy with a head (StatePolicy(module, head)) to answer")
    if params.num_distractors < 1:
        raise ValueError(f"params.num_distractors must be >= 1 to probe distractors, got {params.num_distractors}")
    low, high = params.horizon_range
    if low != high:
        raise ValueError(
            f"params.horizon must be one horizon (the variants share the query step), got {params.horizon}"
        )
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise ValueError(f"pairs must be an int >= 1, got {pairs!r}")
    module = state_policy.module
    device = module.input_proj.weight.device if device is None else torch.device(device)
    observations, target, _ = episode_observations(params, 2 * pairs, seed, device)
    base, donor = observations[:pairs], observations[pairs:]
    num_bits = params.num_bits
    # the cue's bits are channels 0 .. num_bits - 1 at step 0 (zero at every other step)
    other_distractors = donor.clone()
    other_distractors[:, :, :num_bits] = base[:, :, :num_bits]
    codes = params.num_actions
    other_code = (target[:pairs] + 1 + target[pairs:] % max(1, codes - 1)) % codes
    other_cue = base.clone()
    other_cue[:, 0, :num_bits] = ((other_code[:, None] >> torch.arange(num_bits, device=device)) & 1).to(base.dtype)
    # [3P, T, obs_dim]: the episodes, then each variant
    x = torch.cat([base, other_distractors, other_cue]).to(module.input_proj.weight.dtype)
    reset = torch.zeros(x.shape[:2], dtype=torch.bool, device=device)
    reset[:, 0] = True
    state_trace = trace(module, x, reset=reset, stride=stride, storage_device="cpu")
    # [K, 3P, C]
    ssm = state_trace.ssm.double().flatten(2)
    own, moved_distractors, moved_cue = ssm.split(pairs, dim=1)
    query_step = high + 1
    outputs = state_policy.head(state_trace.out[query_step].to(device)).double().cpu()
    answers = policy_answers(state_policy, outputs).cpu()
    own_out, out_distractors, out_cue = outputs.split(pairs)
    own_answer, answer_distractors, answer_cue = answers.split(pairs)
    return DistractorProbe(
        steps=state_trace.steps.cpu(),
        other_distractors=(moved_distractors - own).norm(dim=-1),
        other_cue=(moved_cue - own).norm(dim=-1),
        state_norm=own.norm(dim=-1),
        outputs_other_distractors=(out_distractors - own_out).norm(dim=-1),
        outputs_other_cue=(out_cue - own_out).norm(dim=-1),
        same_answer_other_distractors=answer_distractors == own_answer,
        same_answer_other_cue=answer_cue == own_answer,
        query_step=query_step,
        params=params,
    )


def _median_band(values: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = values.numpy()
    return np.median(x, 1), np.quantile(x, 0.1, 1), np.quantile(x, 0.9, 1)


def distractor_figure(probe: DistractorProbe) -> Figure:
    """Left: the SSM state's distance to the episode's own over the episode, under other
    distractors and under another cue (median and 10-90% of the pairs, log scale), with the
    state's own norm for scale. Right: at the query step, the distance of the head's outputs per
    pair, and how many answers each variant changed. A zero distance is drawn at 1e-12."""
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    ax_state, ax_out = fig.subplots(1, 2, width_ratios=[1.6, 1.0])
    steps = probe.steps.numpy()
    # the three start from the same zero state: distances from the state after the cue step on
    shown = steps >= 1
    _shade_phases(ax_state, probe.query_step, probe.query_step)
    series = {
        "other distractors": probe.other_distractors,
        "other cue": probe.other_cue,
    }
    floor = 1e-12
    for name, values in series.items():
        median, q10, q90 = _median_band(values.clamp_min(floor))
        ax_state.plot(steps[shown], median[shown], color=_VARIANT_COLOR[name], lw=2, label=f"{name} (median)")
        ax_state.fill_between(steps[shown], q10[shown], q90[shown], color=_VARIANT_COLOR[name], alpha=0.2, lw=0)
    norm, _, _ = _median_band(probe.state_norm)
    ax_state.plot(steps[shown], norm[shown], color="0.4", lw=1, ls="--", label="the state's own norm (median)")
    ax_state.set_yscale("log")
    ax_state.set_xlabel("step t (state after t steps)")
    ax_state.set_ylabel("SSM state distance to the episode's own (L2)")
    ax_state.grid(alpha=0.3, which="both")
    ax_state.legend(fontsize=8)
    summary = probe.at_query()
    pairs = summary["pairs"]
    positions = np.arange(pairs)
    for offset, (name, values, same) in enumerate(
        (
            ("other distractors", probe.outputs_other_distractors, summary["same_answer_other_distractors"]),
            ("other cue", probe.outputs_other_cue, summary["same_answer_other_cue"]),
        )
    ):
        ax_out.scatter(
            positions + 0.15 * (2 * offset - 1),
            values.clamp_min(floor).numpy(),
            s=14,
            color=_VARIANT_COLOR[name],
            label=f"{name}: answer changed in {pairs - same} of {pairs}",
        )
    ax_out.set_yscale("log")
    ax_out.set_xlabel("pair (episode)")
    ax_out.set_ylabel("distance of the head's outputs at the query")
    ax_out.grid(alpha=0.3, which="both")
    ax_out.legend(fontsize=8)
    p = probe.params
    fig.suptitle(
        f"Distractors vs cue ({p.num_bits} bits, horizon {probe.query_step - 1}, {p.num_distractors} distractor "
        f"channels, {pairs} episodes)\nthe state the query reads moves "
        f"{summary['state_distance_other_distractors']:.3g} with other distractors and "
        f"{summary['state_distance_other_cue']:.3g} with another cue (ratio {summary['state_distance_ratio']:.2g}); "
        f"the head's outputs {summary['outputs_distance_other_distractors']:.3g} and "
        f"{summary['outputs_distance_other_cue']:.3g}",
        fontsize=10,
    )
    return fig
