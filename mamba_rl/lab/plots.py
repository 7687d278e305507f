"""Pictures of the recurrent state on the delayed-memory task (correct vs wrong answers) and of the answers' bits.

    >>> import tempfile, torch
    >>> from torch import nn
    >>> from mamba_rl import MambaModule
    >>> from mamba_rl.envs import DelayedMemoryParams
    >>> from mamba_rl.lab import StatePolicy, write_state_report
    >>> params = DelayedMemoryParams(num_bits=2, horizon=6)
    >>> policy = StatePolicy(MambaModule(params.obs_dim, 16, in_key="observation", out_key="features"),
    ...                      nn.Linear(16, params.num_actions))
    >>> report = write_state_report(policy, params, tempfile.mkdtemp(), episodes=16)
    >>> sorted(report["files"])
    ['answer_bits.png', 'report.json', 'ssm_heatmap.png', 'state_norms.png', 'state_pca.png']

The steps: :func:`play_episodes` plays a batch of episodes (the policy answers from the traced
outputs, the env scores the answers) and keeps a :class:`~mamba_rl.lab.StateTrace`; the
``*_figure`` functions draw a :class:`Episodes` into a matplotlib ``Figure`` (no pyplot state:
pass one to TensorBoard's ``SummaryWriter.add_figure``); :func:`write_state_report` writes them
as PNGs for ``mamba-rl-eval --plot-states DIR``.

Time axis: step ``t`` shows the state after ``t`` steps (see :mod:`mamba_rl.lab.tracing`). The cue
is step 0, so the state after the cue is at ``t = 1``; the delay runs to ``t = horizon + 1``, the
state the query step reads; the answer is given at step ``horizon + 1``. The pictures shade the cue
step, the delay and the query step.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.lines
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.envs.adapters import DelayedMemoryTask
from mamba_rl.lab.policy import as_state_policy, policy_answers
from mamba_rl.lab.tracing import StateTrace, trace

__all__ = [
    "Episodes",
    "episode_observations",
    "play_episodes",
    "heatmap_figure",
    "norms_figure",
    "pca_figure",
    "bits_figure",
    "bits_right",
    "summary_figure",
    "state_figure",
    "write_state_report",
    "REPORT_SEED",
]

REPORT_SEED = 2024

_CUE_COLOR = "#f4a259"
_DELAY_COLOR = "#d9d9d9"
_QUERY_COLOR = "#5b8e7d"
_GROUP_COLOR = {"correct": "#2a9d8f", "wrong": "#e63946"}


@dataclass
class Episodes:
    """A batch of played episodes and their state trace.

    Attributes:
        trace: the :class:`StateTrace` of the policy's trunk over the episodes, ``B`` columns.
        observations: ``[B, T, obs_dim]``, ``T = params.max_episode_steps``.
        target: ``[B]`` the code each episode asked to remember.
        answer: ``[B]`` the action taken at the query step.
        success: ``[B]`` bool, as scored by the env.
        query_step: ``[B]`` the query step, ``horizon + 1``.
        params: the task.
        outputs: ``[B, num_outputs]`` the actor head's outputs at the query step (a categorical's
            logits, or a bits head's one logit per bit).
    """

    trace: StateTrace
    observations: torch.Tensor
    target: torch.Tensor
    answer: torch.Tensor
    success: torch.Tensor
    query_step: torch.Tensor
    params: DelayedMemoryParams
    outputs: torch.Tensor | None = None

    @property
    def num_episodes(self) -> int:
        return int(self.target.shape[0])

    def group(self, name: str) -> torch.Tensor:
        """Indices of the ``"correct"`` or ``"wrong"`` episodes."""
        if name not in _GROUP_COLOR:
            raise ValueError(f"group must be 'correct' or 'wrong', got {name!r}")
        mask = self.success if name == "correct" else ~self.success
        return mask.nonzero().squeeze(-1).cpu()


@torch.no_grad()
def play_episodes(
    policy,
    params: DelayedMemoryParams,
    episodes: int = 64,
    *,
    seed: int = REPORT_SEED,
    device=None,
    greedy: bool = True,
    stride: int = 1,
    path: str = "sequence",
) -> Episodes:
    """Play ``episodes`` episodes of the task with ``policy`` and trace its state.

    The task's observations do not depend on the actions (the actions before the query are
    ignored), so the observations of the whole episodes are made first, the trunk is traced over
    them, the head runs on each episode's traced output at its query step, and the env scores
    that answer. The answer comes through the policy's action distribution
    (:func:`~mamba_rl.lab.policy.policy_answers`; a bits head answers with the bits whose logit
    is positive): greedy, it is the answer ``mamba-rl-eval`` gives for the same episode.

    Args:
        policy: anything :func:`~mamba_rl.lab.as_state_policy` accepts, with a head.
        params: the task (a horizon range gives episodes of different lengths).
        episodes: number of episodes, played at once: episodes ``0 .. episodes - 1`` of ``seed``.
        seed: seed of the episodes and of the sampled answers' noise.
        device: default: the policy's.
        greedy: answer with the action distribution's mode, else with its sample (noise from a
            generator seeded with ``seed``).
        stride, path: passed to :func:`~mamba_rl.lab.trace`.
    """
    state_policy = as_state_policy(policy)
    if state_policy.head is None:
        raise ValueError("play_episodes needs a policy with a head (StatePolicy(module, head)) to answer")
    module = state_policy.module
    device = module.input_proj.weight.device if device is None else torch.device(device)
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be an int >= 1, got {episodes!r}")
    if module.input_size != params.obs_dim:
        raise ValueError(f"the policy reads {module.input_size} features but the task has obs_dim={params.obs_dim}")
    num_steps = params.max_episode_steps
    task = DelayedMemoryTask(params, episodes, device, autoreset=False)
    env, _, _ = task.reset(seed)
    observations, target, query_step = episode_observations(params, episodes, seed, device)
    reset = torch.zeros(episodes, num_steps, dtype=torch.bool, device=device)
    reset[:, 0] = True
    # the env's float32 observations in the policy's dtype (as the evaluation feeds them)
    observations = observations.to(module.input_proj.weight.dtype)
    state_trace = trace(module, observations, reset=reset, stride=stride, path=path)
    rows = torch.arange(episodes, device=device)
    # [B, num_outputs]: the head at each episode's query step
    outputs = state_policy.head(state_trace.out.to(device)[query_step, rows])
    generator = None if greedy else torch.Generator(device).manual_seed(seed)
    answer = policy_answers(state_policy, outputs, greedy=greedy, generator=generator)
    # the env scores the answer: its step from the query
    _, step = task.step(dict(env, t=query_step), answer)
    return Episodes(state_trace, observations, target, answer, step.success, query_step, params, outputs)


def episode_observations(params: DelayedMemoryParams, num_envs: int, seed: int, device=None):
    """``(observations [N, T, obs_dim], target [N], query_step [N])`` of the first episode of each
    of ``num_envs`` environments seeded ``seed``, ``T = params.max_episode_steps``.

    The task's observations do not depend on the actions, so whole episodes can be made at once.
    """
    task = DelayedMemoryTask(params, num_envs, device, autoreset=False)
    env, obs, _ = task.reset(seed)
    target, query_step = env["target"].clone(), env["horizon"] + 1
    observations = []
    for _ in range(params.max_episode_steps):
        observations.append(obs)
        env, step = task.step(env, torch.zeros_like(target))
        obs = step.obs
    return torch.stack(observations, 1), target, query_step


# --- drawing helpers ---------------------------------------------------------------------------


def _shade_phases(ax, query_low: int, query_high: int, *, lines_only: bool = False) -> None:
    """Shade the cue step ``[0, 1]``, the delay ``[1, query_low]`` and the query step(s).

    With ``lines_only`` (heatmaps, whose cell ``t`` spans ``t - 0.5 .. t + 0.5``) a dashed line
    between the cells before and after the cue step and the query step.
    """
    if lines_only:
        ax.axvline(0.5, color=_CUE_COLOR, lw=2, ls="--")
        for query in sorted({query_low, query_high}):
            ax.axvline(query + 0.5, color=_QUERY_COLOR, lw=2, ls="--")
        return
    ax.axvspan(0, 1, color=_CUE_COLOR, alpha=0.35, lw=0)
    ax.axvspan(1, query_low, color=_DELAY_COLOR, alpha=0.35, lw=0)
    # a horizon range spreads the query over many steps: a lighter shade
    ax.axvspan(query_low, query_high + 1, color=_QUERY_COLOR, alpha=0.35 if query_low == query_high else 0.12, lw=0)


def _phase_legend(query_low: int, query_high: int) -> list:
    query = f"query step {query_low}" if query_low == query_high else f"query steps {query_low}..{query_high}"
    delay = f"delay ({query_low - 1} steps)" if query_low == query_high else "delay"
    return [
        Patch(color=_CUE_COLOR, alpha=0.5, label="cue step 0"),
        Patch(color=_DELAY_COLOR, alpha=0.6, label=delay),
        Patch(color=_QUERY_COLOR, alpha=0.5, label=query),
    ]


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])


def _layer_values(episodes: Episodes, layer: int | None) -> torch.Tensor:
    """SSM states ``[K, B, C]`` (C channels: one layer's, or all layers' flattened)."""
    ssm = episodes.trace.ssm.float()
    if layer is not None:
        ssm = ssm[:, :, layer : layer + 1]
    return ssm.flatten(2).cpu()


def _channel_label(channel: int, episodes: Episodes, layer: int | None) -> str:
    trace_ = episodes.trace
    d_inner, d_state = trace_.ssm.shape[3], trace_.ssm.shape[4]
    lay, rest = divmod(channel, d_inner * d_state)
    lay = lay if layer is None else layer
    return f"L{lay} d{rest // d_state} n{rest % d_state}"


def _steps_until(episodes: Episodes, index: int) -> tuple[np.ndarray, np.ndarray]:
    """``(kept positions, steps)`` up to the state after the query step of episode ``index``."""
    steps = episodes.trace.steps.cpu().numpy()
    last = int(episodes.query_step[index]) + 1
    keep = np.nonzero(steps <= last)[0]
    return keep, steps[keep]


def _group_title(name: str, episodes: Episodes) -> str:
    count = len(episodes.group(name))
    return f"{name} answers ({count} of {episodes.num_episodes})"


def _describe(episodes: Episodes) -> str:
    p = episodes.params
    horizon = p.horizon if isinstance(p.horizon, int) else f"{p.horizon[0]}..{p.horizon[1]}"
    return f"{p.num_bits} bits, horizon {horizon}"


# --- figures -----------------------------------------------------------------------------------


def heatmap_figure(
    episodes: Episodes, *, layer: int | None = None, max_channels: int = 48, examples: dict[str, int] | None = None
) -> Figure:
    """SSM state channels over time for one correct and one wrong episode, side by side.

    The ``max_channels`` channels (``(layer, d_inner, d_state)`` entries) that vary most over
    the two episodes are shown, on one colour scale; dashed lines mark the state after the cue
    (``t = 1``), the state the query reads and the state after the query.

    Args:
        layer: one layer's channels, or None for all layers.
        examples: ``{"correct": i, "wrong": j}`` episode indices (default: the first of each).
    """
    groups = {name: episodes.group(name) for name in ("correct", "wrong")}
    chosen = {}
    for name, index in groups.items():
        if examples and name in examples:
            chosen[name] = examples[name]
        elif len(index):
            chosen[name] = int(index[0])
    values = _layer_values(episodes, layer)
    picked = list(chosen.values())
    if picked:
        spread = torch.stack([values[:, i].std(0) for i in picked]).amax(0)
        channels = spread.argsort(descending=True)[:max_channels].sort().values
        scale = float(values[:, picked][:, :, channels].abs().quantile(0.99)) or 1.0
    fig = Figure(figsize=(12, 5.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    image = None
    for ax, name in zip(axes, ("correct", "wrong")):
        if name not in chosen:
            _empty(ax, f"no {name} answers among {episodes.num_episodes} episodes")
            ax.set_title(_group_title(name, episodes))
            continue
        i = chosen[name]
        keep, steps = _steps_until(episodes, i)
        # [C, K]
        data = values[keep, i][:, channels].T.numpy()
        edges = (
            np.concatenate([[steps[0] - 0.5], (steps[1:] + steps[:-1]) / 2, [steps[-1] + 0.5]])
            if len(steps) > 1
            else np.array([steps[0] - 0.5, steps[0] + 0.5])
        )
        image = ax.pcolormesh(edges, np.arange(len(channels) + 1), data, cmap="RdBu_r", vmin=-scale, vmax=scale)
        query = int(episodes.query_step[i])
        _shade_phases(ax, query, query, lines_only=True)
        ax.set_title(
            f"{_group_title(name, episodes)}\nepisode {i}: code {int(episodes.target[i])}, "
            f"answered {int(episodes.answer[i])}",
            fontsize=10,
        )
        ax.set_xlabel("step t (state after t steps)")
        ax.set_ylim(len(channels), 0)
    labels = [_channel_label(int(c), episodes, layer) for c in channels] if picked else []
    every = max(1, len(labels) // 16)
    axes[0].set_yticks(np.arange(0, len(labels), every) + 0.5, labels[::every], fontsize=7)
    axes[0].set_ylabel(f"SSM channel ({len(labels)} most varying)")
    if image is not None:
        fig.colorbar(image, ax=axes, label="SSM state value", shrink=0.9)
    lines = [
        matplotlib.lines.Line2D([], [], color=_CUE_COLOR, lw=2, ls="--", label="cue step (between t = 0 and 1)"),
        matplotlib.lines.Line2D(
            [], [], color=_QUERY_COLOR, lw=2, ls="--", label="query step (between the state it reads and the next)"
        ),
    ]
    fig.legend(handles=lines, loc="outside lower center", ncol=2, fontsize=9, frameon=False)
    which = "all layers" if layer is None else f"layer {layer}"
    fig.suptitle(f"SSM state over one episode ({which}; {_describe(episodes)})")
    return fig


def _norm_curves(episodes: Episodes, index: torch.Tensor, kind: str, layer: int):
    """``(steps [K], norms [K, n], median [K], q10 [K], q90 [K])`` of one layer's state norm over
    the episodes ``index``; an episode's norms past its query step are NaN (it is over), and the
    statistics are NaN where any episode is over (so a median never mixes lengths)."""
    norms = episodes.trace.norms()[kind][:, :, layer].cpu().numpy()
    steps = episodes.trace.steps.cpu().numpy()
    sub = norms[:, index.numpy()].copy()
    ends = episodes.query_step[index].cpu().numpy() + 1
    sub[steps[:, None] > ends[None, :]] = np.nan
    valid = ~np.all(np.isnan(sub), axis=1)
    steps, sub = steps[valid], sub[valid]
    complete = ~np.any(np.isnan(sub), axis=1)
    median, q10, q90 = (np.full(len(steps), np.nan) for _ in range(3))
    if complete.any():
        median[complete] = np.median(sub[complete], 1)
        q10[complete] = np.quantile(sub[complete], 0.1, 1)
        q90[complete] = np.quantile(sub[complete], 0.9, 1)
    return steps, sub, median, q10, q90


def _draw_norms(ax, episodes: Episodes, index: torch.Tensor, kind: str, layer: int, color, max_lines: int) -> None:
    """Thin lines for up to ``max_lines`` episodes (a dot at the state each query reads), the
    median and the 10-90% band."""
    steps, sub, median, q10, q90 = _norm_curves(episodes, index, kind, layer)
    queries = episodes.query_step[index].cpu().numpy()
    for j in range(min(sub.shape[1], max_lines)):
        ax.plot(steps, sub[:, j], color=color, lw=0.6, alpha=0.3)
        at_query = np.nonzero(steps == queries[j])[0]
        if len(at_query):
            ax.plot(steps[at_query], sub[at_query, j], "o", color=color, ms=3, alpha=0.6)
    ax.fill_between(steps, q10, q90, color=color, alpha=0.15, lw=0)
    ax.plot(steps, median, color=color, lw=2.2)


def norms_figure(episodes: Episodes, *, max_lines: int = 32) -> Figure:
    """L2 norm of the SSM state (top) and conv state (bottom) over an episode, per layer, for the
    correct (left) and wrong (right) answers: up to ``max_lines`` episodes as thin lines with a dot
    at the state the query reads, their median and 10-90% band (thick, where all are running)."""
    low, high = (int(episodes.query_step.min()), int(episodes.query_step.max()))
    fig = Figure(figsize=(12, 6.5), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True, sharey="row")
    layer_colors = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.75, max(1, episodes.trace.num_layers)))
    for col, name in enumerate(("correct", "wrong")):
        index = episodes.group(name)
        for row, kind in enumerate(("ssm", "conv")):
            ax = axes[row, col]
            _shade_phases(ax, low, high)
            if len(index) == 0:
                ax.text(
                    0.5,
                    0.5,
                    f"no {name} answers among {episodes.num_episodes} episodes",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    color="0.35",
                )
            for layer in range(episodes.trace.num_layers if len(index) else 0):
                _draw_norms(ax, episodes, index, kind, layer, layer_colors[layer], max_lines)
            ax.set_ylabel(f"{'SSM' if kind == 'ssm' else 'conv'} state L2 norm")
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(_group_title(name, episodes))
            else:
                ax.set_xlabel("step t (state after t steps)")
    handles = _phase_legend(low, high)
    handles += [
        matplotlib.lines.Line2D([], [], color=layer_colors[i], lw=2.2, label=f"layer {i}: median, 10-90%")
        for i in range(episodes.trace.num_layers)
    ]
    handles.append(
        matplotlib.lines.Line2D(
            [], [], color="0.4", lw=0.6, marker="o", ms=3, label="one episode (dot: state the query reads)"
        )
    )
    fig.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), fontsize=9, frameon=False)
    fig.suptitle(f"Recurrent state norms over the episode ({_describe(episodes)})")
    return fig


def _pca(points: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``(mean [D], components [D, 2], explained variance ratio [2])`` of ``points [N, D]``."""
    points = points.double()
    mean = points.mean(0)
    centered = points - mean
    q = min(6, *centered.shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, _, v = torch.pca_lowrank(centered, q=q, center=False, niter=6)
    components = v[:, :2]
    if components.shape[1] < 2:
        components = torch.cat([components, torch.zeros_like(mean)[:, None]], 1)
    # the sign of a component is arbitrary: make its largest entry positive, for stable pictures
    signs = torch.sign(components.gather(0, components.abs().argmax(0, keepdim=True)))
    components = components * torch.where(signs == 0, 1.0, signs)
    total = centered.pow(2).sum().clamp_min(1e-300)
    ratio = ((centered @ components).pow(2).sum(0) / total).numpy()
    return mean, components, ratio


def _code_color(code: int, num_codes: int):
    """``code``'s colour: a qualitative palette up to 20 codes, else its place on a continuous
    scale (viridis), made for the codes drawn only (2**16 codes would be 65,536 colours)."""
    if num_codes <= 20:
        cmap = matplotlib.colormaps["tab10" if num_codes <= 10 else "tab20"]
        return cmap(code % cmap.N)
    return matplotlib.colormaps["viridis"](code / (num_codes - 1))


def bits_right(episodes: Episodes, index: torch.Tensor | None = None) -> np.ndarray:
    """``[num_bits]``: the fraction of the episodes ``index`` (default all) whose answer has bit
    ``j`` of the remembered code right. The answer is right when every active bit is."""
    answer, target = episodes.answer.cpu(), episodes.target.cpu()
    if index is not None:
        answer, target = answer[index], target[index]
    shifts = torch.arange(episodes.params.num_bits)
    # [n, num_bits]
    wrong_bits = ((answer ^ target)[:, None] >> shifts) & 1
    return (1.0 - wrong_bits.double().mean(0)).numpy() if len(answer) else np.full(len(shifts), np.nan)


def _draw_bits(ax, episodes: Episodes, groups: dict[str, torch.Tensor | None]) -> None:
    """Bars of :func:`bits_right` per bit for each of ``groups`` (``{label: index}``), chance at
    0.5; bits the task does not score (beyond ``active_bits``) hatched."""
    num_bits, active = episodes.params.num_bits, episodes.params.active_bits
    width = 0.8 / len(groups)
    colors = {"all": "0.45", "correct": _GROUP_COLOR["correct"], "wrong": _GROUP_COLOR["wrong"]}
    for k, (name, index) in enumerate(groups.items()):
        count = episodes.num_episodes if index is None else len(index)
        positions = np.arange(num_bits) + (k - (len(groups) - 1) / 2) * width
        bars = ax.bar(positions, bits_right(episodes, index), width, color=colors[name], label=f"{name} ({count})")
        for bar in bars[active:]:
            bar.set_hatch("//")
            bar.set_alpha(0.5)
    ax.axhline(0.5, color="0.3", lw=1, ls=":", label="chance")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(np.arange(num_bits), [str(j) for j in range(num_bits)], fontsize=8 if num_bits <= 16 else 6)
    ax.set_xlabel("bit of the code" + (f" (hatched: bits {active}.. not scored)" if active < num_bits else ""))
    ax.set_ylabel("fraction of answers with the bit right")
    ax.grid(alpha=0.3, axis="y")


def bits_figure(episodes: Episodes) -> Figure:
    """Per bit of the code, the fraction of answers that got it right: over all episodes and over
    the wrong answers (which bits a wrong answer misses). One bar per bit, so it reads the same at
    2 or 65,536 answers."""
    fig = Figure(figsize=(max(6.0, 0.45 * episodes.params.num_bits + 3), 4.2), layout="constrained")
    ax = fig.subplots()
    _draw_bits(ax, episodes, {"all": None, "wrong": episodes.group("wrong")})
    ax.legend(fontsize=8, loc="lower right")
    accuracy = float(episodes.success.float().mean())
    fig.suptitle(f"Bits of the answer at the query ({_describe(episodes)}; all bits right: {accuracy:.2f})")
    return fig


def pca_figure(episodes: Episodes, *, layer: int | None = None, max_lines: int = 64) -> Figure:
    """2-D PCA of the SSM state trajectories, correct (left) and wrong (right) answers.

    One PCA is fitted on the states of all episodes (from the start to the state the query
    reads), so the two panels share axes. Each line is one episode, coloured by the code it had
    to remember; a circle marks the state after the cue, a star the state the query reads (the
    answer is made from it), an ``x`` the start.
    """
    values = _layer_values(episodes, layer)
    steps = episodes.trace.steps.cpu()
    query = episodes.query_step.cpu()
    inside = steps[:, None] <= query[None, :]
    mean, components, ratio = _pca(values[inside])
    # [K, B, 2]
    projected = ((values.double() - mean) @ components).numpy()
    num_codes = episodes.params.num_actions
    fig = Figure(figsize=(12, 5.6), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, name in zip(axes, ("correct", "wrong")):
        index = episodes.group(name)
        ax.set_title(_group_title(name, episodes))
        ax.grid(alpha=0.3)
        ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.0f}% of variance)")
        if len(index) == 0:
            ax.text(
                0.5,
                0.5,
                f"no {name} answers among {episodes.num_episodes} episodes",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="0.35",
            )
            continue
        for i in index[:max_lines].tolist():
            keep = np.nonzero((steps <= query[i]).numpy())[0]
            xy = projected[keep, i]
            color = _code_color(int(episodes.target[i]), num_codes)
            ax.plot(xy[:, 0], xy[:, 1], color=color, lw=1.0, alpha=0.75)
            ax.plot(*xy[0], marker="x", color="0.3", ms=5)
            cue = np.nonzero(steps[keep].numpy() == 1)[0]
            if len(cue):
                ax.plot(*xy[cue[0]], marker="o", color=color, ms=5, mec="k", mew=0.5)
            ax.plot(*xy[-1], marker="*", color=color, ms=11, mec="k", mew=0.6)
    axes[0].set_ylabel(f"PC 2 ({100 * ratio[1]:.0f}% of variance)")
    handles = [
        matplotlib.lines.Line2D([], [], color="0.3", marker="x", ls="", label="start (t = 0)"),
        matplotlib.lines.Line2D([], [], color="0.6", marker="o", mec="k", ls="", label="after cue (t = 1)"),
        matplotlib.lines.Line2D([], [], color="0.6", marker="*", ms=11, mec="k", ls="", label="query reads"),
    ]
    if num_codes <= 16:
        handles += [Patch(color=_code_color(c, num_codes), label=f"code {c}") for c in range(num_codes)]
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    which = "all layers" if layer is None else f"layer {layer}"
    fig.suptitle(f"PCA of the SSM state trajectory ({which}; {_describe(episodes)}; colour = remembered code)")
    return fig


def summary_figure(episodes: Episodes, *, layer: int | None = None) -> Figure:
    """One compact figure (for TensorBoard): SSM norm of correct vs wrong, the PCA of all, and
    the fraction of answers with each bit right (:func:`bits_right`)."""
    low, high = (int(episodes.query_step.min()), int(episodes.query_step.max()))
    fig = Figure(figsize=(16, 4.2), layout="constrained")
    ax_norm, ax_pca, ax_bits = fig.subplots(1, 3, width_ratios=[1.0, 1.0, 0.7])
    _shade_phases(ax_norm, low, high)
    for name in ("correct", "wrong"):
        index = episodes.group(name)
        if len(index) == 0:
            continue
        for lay in range(episodes.trace.num_layers):
            steps, sub, median, q10, q90 = _norm_curves(episodes, index, "ssm", lay)
            style = "-" if lay == 0 else ":"
            if np.isnan(median).all():
                median = np.nanmedian(sub, 1)
            ax_norm.plot(
                steps, median, style, color=_GROUP_COLOR[name], lw=1.8, label=f"{name} ({len(index)}), layer {lay}"
            )
            ax_norm.fill_between(steps, q10, q90, color=_GROUP_COLOR[name], alpha=0.15, lw=0)
    ax_norm.set_xlabel("step t (state after t steps)")
    ax_norm.set_ylabel("SSM state L2 norm (median, 10-90%)")
    ax_norm.grid(alpha=0.3)
    ax_norm.legend(handles=ax_norm.get_legend_handles_labels()[0] + _phase_legend(low, high), fontsize=8)
    values = _layer_values(episodes, layer)
    steps = episodes.trace.steps.cpu()
    query = episodes.query_step.cpu()
    mean, components, ratio = _pca(values[steps[:, None] <= query[None, :]])
    projected = ((values.double() - mean) @ components).numpy()
    for i in range(min(episodes.num_episodes, 64)):
        keep = np.nonzero((steps <= query[i]).numpy())[0]
        xy = projected[keep, i]
        color = _code_color(int(episodes.target[i]), episodes.params.num_actions)
        ax_pca.plot(xy[:, 0], xy[:, 1], "-" if bool(episodes.success[i]) else "--", color=color, lw=1.0, alpha=0.7)
        ax_pca.plot(*xy[-1], marker="*" if bool(episodes.success[i]) else "X", color=color, ms=9, mec="k", mew=0.5)
    ax_pca.set_xlabel(f"PC 1 ({100 * ratio[0]:.0f}%)")
    ax_pca.set_ylabel(f"PC 2 ({100 * ratio[1]:.0f}%)")
    ax_pca.set_title("state PCA, colour = code; star = right, X = wrong", fontsize=10)
    ax_pca.grid(alpha=0.3)
    _draw_bits(ax_bits, episodes, {"all": None})
    ax_bits.set_title("bits right at the query", fontsize=10)
    accuracy = float(episodes.success.float().mean())
    fig.suptitle(f"Recurrent state, {episodes.num_episodes} episodes ({_describe(episodes)}), accuracy {accuracy:.2f}")
    return fig


def state_figure(
    policy, params: DelayedMemoryParams, episodes: int = 32, *, seed: int = REPORT_SEED, device=None, stride: int = 1
) -> Figure:
    """:func:`summary_figure` of freshly played episodes: the one-call figure for TensorBoard::

    writer.add_figure("states/summary", state_figure(policy, params), global_step=update)
    """
    was_training = _training_flags(policy)
    try:
        return summary_figure(play_episodes(policy, params, episodes, seed=seed, device=device, stride=stride))
    finally:
        _restore_training(policy, was_training)


def _training_flags(policy):
    modules = [m for m in as_state_policy(policy) if isinstance(m, torch.nn.Module)]
    flags = [m.training for m in modules]
    for m in modules:
        m.eval()
    return list(zip(modules, flags))


def _restore_training(policy, flags) -> None:
    for module, flag in flags:
        module.train(flag)


def write_state_report(
    policy,
    params: DelayedMemoryParams,
    out_dir: str | os.PathLike,
    *,
    episodes: int = 64,
    seed: int = REPORT_SEED,
    device=None,
    greedy: bool = True,
    layer: int | None = None,
    max_channels: int = 48,
    stride: int = 1,
    dpi: int = 110,
) -> dict:
    """Play ``episodes`` episodes and write the state pictures, correct vs wrong side by side.

    Files in ``out_dir``: ``ssm_heatmap.png`` (:func:`heatmap_figure`), ``state_norms.png``
    (:func:`norms_figure`), ``state_pca.png`` (:func:`pca_figure`), ``answer_bits.png``
    (:func:`bits_figure`), with distractors and one horizon ``distractors.png``
    (:func:`~mamba_rl.lab.distractors.distractor_figure` of ``episodes // 2`` pairs: the state
    under other distractors vs under another cue) and ``report.json`` (counts, accuracy, the
    fraction of answers with each bit right, the task, which episodes the heatmap shows, the
    distractor probe's numbers at the query step).

    Returns:
        ``{"files": {name: path}, "episodes", "correct", "wrong", "accuracy"}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    probe_distractors = params.num_distractors > 0 and params.horizon_range[0] == params.horizon_range[1]
    flags = _training_flags(policy)
    try:
        played = play_episodes(policy, params, episodes, seed=seed, device=device, greedy=greedy, stride=stride)
        if probe_distractors:
            from mamba_rl.lab.distractors import distractor_figure, distractor_probe

            probe = distractor_probe(policy, params, max(1, episodes // 2), seed=seed, device=device, stride=stride)
    finally:
        _restore_training(policy, flags)
    files = {}
    figures = {
        "ssm_heatmap.png": heatmap_figure(played, layer=layer, max_channels=max_channels),
        "state_norms.png": norms_figure(played),
        "state_pca.png": pca_figure(played, layer=layer),
        "answer_bits.png": bits_figure(played),
    }
    if probe_distractors:
        figures["distractors.png"] = distractor_figure(probe)
    for name, fig in figures.items():
        fig.savefig(out_dir / name, dpi=dpi)
        files[name] = str(out_dir / name)
    correct, wrong = len(played.group("correct")), len(played.group("wrong"))
    summary = {
        "episodes": played.num_episodes,
        "correct": correct,
        "wrong": wrong,
        "accuracy": correct / played.num_episodes,
        "seed": seed,
        "greedy": greedy,
        "bits_right": [float(x) for x in bits_right(played)],
        "task": {
            "num_bits": params.num_bits,
            "horizon": list(params.horizon) if isinstance(params.horizon, tuple) else params.horizon,
            "num_distractors": params.num_distractors,
        },
        "heatmap_episodes": {
            name: (int(idx[0]) if len(idx) else None)
            for name, idx in (("correct", played.group("correct")), ("wrong", played.group("wrong")))
        },
    }
    if probe_distractors:
        summary["distractors"] = probe.at_query()
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2))
    files["report.json"] = str(out_dir / "report.json")
    return {"files": files, **{k: summary[k] for k in ("episodes", "correct", "wrong", "accuracy")}}
