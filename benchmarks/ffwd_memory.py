"""How far a Mamba memory policy's bits hold across a blank delay, exactly (float64 fast-forward).

Without distractors an episode is fixed by its bit pattern, so the greedy answers to the
``2**num_bits`` patterns give the exact greedy accuracy over uniform patterns at any delay
(:func:`mamba_rl.lab.fastforward.fast_forward_memory`, float64, CPU, O(1) in the delay). This
script writes, for a trainer checkpoint:

- per horizon (and the limit): the exact greedy accuracy, the failing patterns and the answers
  they get (the first 256), the smallest margin of a right answer (the target's log-probability
  over the most likely other answer's), the expected sampled accuracy (the mean probability of
  the target under the actor head: categorical or bits), and both for the ``--episodes`` evaluation episodes of
  ``--seed`` (their pattern counts times the exact per-pattern outcome);
- per channel of the SSM (``d_inner`` of them, ``d_state`` elements each) at a blank step: the
  step size ``dt`` (against the config's ``dt_min``), the per-step decay ``a = exp(dt A)`` and the
  half-life ``ln 2 / -ln a`` of every element; which channels carry the bits: the query features'
  spread over patterns due to the channel (the ``readout``), and the accuracy when that channel's
  state is replaced by its mean over patterns (``ablation``) at ``--probe-horizon``;
- with ``--float32-horizons``: the SSM recurrence of the blank steps iterated in float32 (``a`` and
  ``b`` as the float32 model computes them at a blank step), then the query step in float32: the
  answers and the logit drift from float64 that float32 rounding alone makes;
- a figure of the per-channel half-lives with the information-carrying channels marked.

    PYTHONPATH=. python benchmarks/ffwd_memory.py \\
        benchmarks/results/training/h20000_log_mamba_s0/policy.pt \\
        --out benchmarks/results/eval/ffwd_h20000_s0 --float32-horizons 1000000
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.envs.adapters import DelayedMemoryTask
from mamba_rl.lab.fastforward import (
    _observations,
    blank_scan_inputs,
    fast_forward_memory,
    float64_policy,
    query_logits,
)
from mamba_rl.policies import load_policy
from mamba_rl.policies.heads import BitsHead
from mamba_rl.state import MambaState

HORIZONS = [20_000, 100_000, 1_000_000, 10_000_000, 100_000_000, math.inf]


def margins(logits: torch.Tensor, targets: torch.Tensor, action_dist) -> torch.Tensor:
    """``[P]``: the target's log-probability minus that of the most likely other answer (> 0: the
    greedy answer is right). With a categorical head that is the target's logit minus the best
    other logit. With a bits head, per bit the logit signed towards the target's bit is the log-odds
    of getting that bit right: when every bit is right the most likely other answer flips the
    least sure one (the smallest signed logit); otherwise it is the greedy answer, which flips
    every bit with a negative signed logit (their sum)."""
    if isinstance(action_dist, BitsHead):
        bits = (targets[:, None] >> torch.arange(logits.shape[1])) & 1
        signed = torch.where(bits == 1, logits, -logits)
        return torch.where((signed > 0).all(1), signed.amin(1), signed.clamp(max=0).sum(1))
    right = logits.gather(1, targets[:, None]).squeeze(1)
    others = logits.scatter(1, targets[:, None], -math.inf)
    return right - others.amax(1)


# patterns listed one by one in the JSON at most (16 bits have 65,536)
LISTED = 256


def failing_pairs(targets: torch.Tensor, answers: torch.Tensor) -> list[list[int]]:
    """The first ``LISTED`` (target, answer) pairs with a wrong answer."""
    wrong = (answers != targets).nonzero().flatten()[:LISTED]
    return [[int(targets[i]), int(answers[i])] for i in wrong]


def episode_accuracy(params: DelayedMemoryParams, horizon: int, n: int, seed: int, right: torch.Tensor) -> float:
    """The greedy accuracy ``n`` evaluation episodes of ``seed`` measure, given which patterns are right."""
    task = DelayedMemoryTask(DelayedMemoryParams(num_bits=params.num_bits, horizon=horizon), n, "cpu", autoreset=False)
    env, _, _ = task.reset(seed)
    return float(right[env["target"]].double().mean())


def pattern_counts(params: DelayedMemoryParams, n: int, seed: int) -> list[int]:
    task = DelayedMemoryTask(DelayedMemoryParams(num_bits=params.num_bits, horizon=10), n, "cpu", autoreset=False)
    env, _, _ = task.reset(seed)
    return torch.bincount(env["target"], minlength=params.num_actions).tolist()


def channel_readout(policy64, params, targets, ssm: torch.Tensor) -> torch.Tensor:
    """``[d_inner]``: per channel, the spread over patterns (root mean square about the pattern mean)
    of what the channel's SSM state adds to the query step's features (one layer)."""
    module = policy64.module
    mixer = module.layers[0].mixer
    query = _observations(params, targets, 1, 0)
    state = MambaState(ssm, torch.zeros_like(module.zero_state((len(targets),)).conv))
    inputs = blank_scan_inputs(module, query, state)[0]
    # the query step's state: exp(dt A) h + b, read out by C and gated by silu(z)
    h = torch.exp(inputs["dt_a"]) * ssm[:, 0] + inputs["drive"]
    per_channel = (h * inputs["C"][:, None, :]).sum(-1) * F.silu(inputs["z"])
    spread = (per_channel - per_channel.mean(0)).pow(2).mean(0).sqrt()
    return spread * mixer.out_proj.weight.norm(dim=0)


def answers_without(policy64, params, targets, ff, channels, action_dist) -> torch.Tensor:
    """``[P]``: the greedy answers when the SSM state of ``channels`` (every element) is replaced
    by its mean over patterns, i.e. those channels' memory of the cue is removed."""
    ssm = ff.ssm.clone()
    ssm[:, 0, channels] = ssm[:, 0, channels].mean(0)
    return action_dist.mode(query_logits(policy64, params, targets, MambaState(ssm, ff.conv)))


def ablation(policy64, params, targets, ff, action_dist) -> list[float]:
    """Per channel, the exact accuracy without that channel's memory of the cue."""
    return [
        float((answers_without(policy64, params, targets, ff, [c], action_dist) == targets).double().mean())
        for c in range(ff.ssm.shape[2])
    ]


@torch.no_grad()
def float32_blank_steps(policy, params, targets, horizon: int, ff) -> dict:
    """Iterate ``h <- a h + b`` ``horizon - warmup`` times in float32 from the float32 model's
    state after the warm-up, then its query step: what float32 rounding of the recurrence alone
    does (the fused kernels sum in other orders; their drift is of the same kind)."""
    module = policy.actor_trunk.core
    saved_backend = module.backend
    module.backend = "torch"
    head = policy.actor_head
    obs = {name: _observations(params, targets, t, horizon).float() for name, t in (("cue", 0), ("blank", 1))}
    state = module.zero_state((len(targets),))
    _, state = module.step(obs["cue"], state)
    for _ in range(ff.warmup):
        inputs = blank_scan_inputs(module, obs["blank"], state)[0]
        _, state = module.step(obs["blank"], state)
    a32 = torch.exp(inputs["dt_a"])
    b32 = inputs["drive"]
    h = state.ssm[:, 0].clone()
    started = time.perf_counter()
    for _ in range(horizon - ff.warmup):
        h.mul_(a32).add_(b32)
    seconds = time.perf_counter() - started
    query = _observations(params, targets, horizon + 1, horizon).float()
    features, _ = module.step(query, MambaState(h[:, None], state.conv))
    logits = head(features)
    module.backend = saved_backend
    right = policy.action_dist.mode(logits) == targets
    return {
        "horizon": horizon,
        "accuracy": float(right.double().mean()),
        "failing_count": int((~right).sum()),
        "failing": failing_pairs(targets, policy.action_dist.mode(logits)),
        "max_logit_drift_vs_float64": float((logits.double() - ff.logits).abs().max()),
        "max_ssm_drift_vs_float64": float((h.double() - ff.ssm[:, 0]).abs().max()),
        "elements_with_a_rounded_to_1": int((a32 == 1.0).all(0).sum()),
        "seconds": seconds,
    }


def figure(path: Path, half_life: torch.Tensor, carriers: list[int], readout: torch.Tensor, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    channels, d_state = half_life.shape
    order = torch.argsort(half_life.amax(1))
    fig, ax = plt.subplots(figsize=(11, 4.5))
    rank = {int(c): i for i, c in enumerate(order)}
    for c in range(channels):
        carrier = c in carriers
        ax.scatter(
            [rank[c]] * d_state,
            half_life[c].numpy(),
            s=10 if not carrier else 22,
            c="tab:red" if carrier else "0.6",
            alpha=0.9 if carrier else 0.4,
            linewidths=0,
        )
    for level, label in ((2e4, "20k (trained)"), (1e6, "1M"), (1e7, "10M")):
        ax.axhline(level, ls="--", lw=0.8, c="k")
        ax.text(1, level * 1.3, label, fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("SSM channel, sorted by its longest half-life")
    ax.set_ylabel("half-life at a blank step (steps), every state element")
    ax.set_title(title, fontsize=9)
    ax.scatter([], [], c="tab:red", s=22, label="carries the bits (ablation or readout)")
    ax.scatter([], [], c="0.6", s=10, label="other channels")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@torch.no_grad()
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True, help="path prefix: writes <out>.json and <out>_half_lives.png")
    parser.add_argument("--horizons", type=float, nargs="+", default=HORIZONS, help="inf for the limit")
    parser.add_argument("--probe-horizon", type=int, default=20_000, help="horizon of the channel readout/ablation")
    parser.add_argument(
        "--channel-patterns",
        type=int,
        default=None,
        help="the channel readout/ablation on this many patterns drawn at random (seed 0), not all of them",
    )
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--float32-horizons", type=int, nargs="*", default=[])
    args = parser.parse_args(argv)

    policy, cfg, _ = load_policy(args.checkpoint, "cpu")
    params = DelayedMemoryParams(num_bits=cfg.num_bits, horizon=10)
    targets = torch.arange(params.num_actions)
    policy64, _ = float64_policy(policy)
    action_dist = policy.action_dist
    mixer = policy.actor_trunk.core.layers[0].mixer

    counts = torch.tensor(pattern_counts(params, args.episodes, args.seed), dtype=torch.float64)
    rows = []
    for horizon in args.horizons:
        horizon = math.inf if math.isinf(horizon) else int(horizon)
        ff = fast_forward_memory(policy, params, targets, horizon)
        right = ff.actions == targets
        margin = margins(ff.logits, targets, action_dist)
        row = {
            "horizon": "inf" if math.isinf(horizon) else horizon,
            "exact_greedy_accuracy": float(right.double().mean()),
            "failing_count": int((~right).sum()),
            "failing": failing_pairs(targets, ff.actions),
            "smallest_right_margin": float(margin[right].min()) if right.any() else None,
            "margin_quantiles": {str(q): float(margin.quantile(q)) for q in (0.0, 0.001, 0.01, 0.1, 0.5)},
        }
        if len(targets) <= LISTED:
            row["margins"] = [round(float(m), 4) for m in margin]
        # a sampled answer is right with the head's probability of the target
        p_right = action_dist.log_prob_entropy(ff.logits, targets)[0].double().exp()
        row["expected_sampled_accuracy"] = float(p_right.mean())
        if not math.isinf(horizon):
            row[f"accuracy_of_{args.episodes}_episodes_seed_{args.seed}"] = episode_accuracy(
                params, horizon, args.episodes, args.seed, right
            )
            row[f"expected_sampled_accuracy_of_{args.episodes}_episodes_seed_{args.seed}"] = float(
                (p_right * counts).sum() / counts.sum()
            )
        rows.append(row)
        print(
            f"H={row['horizon']}: exact {row['exact_greedy_accuracy']:.4f}, {row['failing_count']} failing, "
            f"(target, answer) {row['failing'][:16]}"
        )

    # the channel analysis on every pattern, or on a fixed random sample of them (65,536 at 16 bits)
    probed = targets
    if args.channel_patterns is not None and args.channel_patterns < len(targets):
        sample = torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))[: args.channel_patterns]
        probed = targets[sample.sort().values]
    probe = fast_forward_memory(policy, params, probed, args.probe_horizon)
    # [d_inner], [d_inner, d_state]: the same for every pattern at a blank step
    dt = probe.dt[0, 0]
    dt_a = probe.dt_a[0, 0]
    half_life = math.log(2) / -dt_a
    readout = channel_readout(policy64, params, probed, probe.ssm)
    ablated = ablation(policy64, params, probed, probe, action_dist)
    share = readout / readout.sum()
    carriers = sorted({c for c, acc in enumerate(ablated) if acc < 1.0} | set(torch.argsort(share)[-8:].tolist()))
    channels = [
        {
            "channel": c,
            "dt_blank": float(dt[c]),
            "half_life_max": float(half_life[c].max()),
            "half_life_min": float(half_life[c].min()),
            "readout_share": float(share[c]),
            "accuracy_without_channel": ablated[c],
        }
        for c in range(len(dt))
    ]
    # the memory a longer delay leaves: the channels that decay within it taken out at the probe
    short_memory = []
    for level in (1e5, 1e6, 1e7, 1e8):
        short = [c for c in range(len(dt)) if float(half_life[c].max()) < level]
        answers = answers_without(policy64, params, probed, probe, short, action_dist)
        short_memory.append(
            {
                "half_life_below": level,
                "channels_removed": len(short),
                "exact_accuracy": float((answers == probed).double().mean()),
                "failing_count": int((answers != probed).sum()),
                "failing": failing_pairs(probed, answers),
            }
        )
        print(
            f"H={args.probe_horizon} without the {len(short)} channels of half-life < {level:g}: exact "
            f"{short_memory[-1]['exact_accuracy']:.4f}, {short_memory[-1]['failing_count']} failing"
        )
    f32 = [
        float32_blank_steps(policy, params, targets, h, fast_forward_memory(policy, params, targets, h))
        for h in args.float32_horizons
    ]
    a32 = torch.exp(dt_a.float())
    result = {
        "checkpoint": args.checkpoint,
        "device": f"cpu ({platform.machine()})",
        "dtype": "float64 fast-forward (float32 runs as stated)",
        "torch": torch.__version__,
        "config": {"dt_min": cfg.dt_min, "dt_max": cfg.dt_max, "d_model": cfg.d_model, "d_state": cfg.d_state},
        "pattern_counts": {
            f"{args.episodes}_episodes_seed_{args.seed}": pattern_counts(params, args.episodes, args.seed)
            if len(targets) <= LISTED
            else f"{int((counts > 0).sum())} of {len(targets)} patterns drawn"
        },
        "horizons": rows,
        "blank_step": {
            "dt_min_over_channels": float(dt.min()),
            "dt_median": float(dt.median()),
            "channels_with_dt_below_dt_min": int((dt < cfg.dt_min).sum()),
            "channels_with_half_life_over": {
                str(level): int((half_life.amax(1) > level).sum()) for level in (2e4, 1e5, 1e6, 1e7, 1e8)
            },
            "elements_with_float32_a_equal_1": int((a32 == 1.0).sum()),
            "A_min": float((-mixer.A).min()),
        },
        "probe_horizon": args.probe_horizon,
        "channel_analysis_patterns": len(probed),
        "carriers": carriers,
        "probe_without_short_memory": short_memory,
        "channels": channels,
        "float32_blank_steps": f32,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    figure(
        out.parent / f"{out.name}_half_lives.png",
        half_life,
        carriers,
        readout,
        f"{args.checkpoint}: per-element half-lives at a blank step (float64, CPU); red: channels carrying the "
        f"bits at H={args.probe_horizon}",
    )
    for c in carriers:
        ch = channels[c]
        print(
            f"channel {c:3d}: dt {ch['dt_blank']:.3g}, half-life max {ch['half_life_max']:.3g} min "
            f"{ch['half_life_min']:.3g}, readout share {ch['readout_share']:.3f}, "
            f"accuracy without it {ch['accuracy_without_channel']:.3f}"
        )
    print(json.dumps(result["blank_step"], indent=1))
    for row in f32:
        print("float32:", row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
