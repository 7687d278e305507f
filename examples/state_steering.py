"""Steer a trained policy through its SSM state: in the middle of the delay, find by gradient descent an
additive change of the state that makes the policy answer a chosen code, then apply it in a real rollout.

    python examples/state_steering.py [--checkpoint PATH] [--num-envs 64] [--at-step K] [--code C]
                                      [--path step|sequence] [--plot steering.png]

``--checkpoint`` takes a trainer checkpoint (``mamba-rl-train``'s ``checkpoint.pt`` or its run
directory; its actor trunk must be Mamba) or a state-lab policy file; the default is the small
policy saved beside the state lab's tests (3 bits, delay 10, trained by supervised learning).
The chosen code defaults to ``(target + 1) mod 2**num_bits``: always a wrong answer, so a steered
rollout that the env scores 0 is the proof that the change took.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from mamba_rl.lab import load_policy, rollout_with_ssm_delta, steer_ssm_state, trace
from mamba_rl.state import MambaState

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "tests" / "lab" / "data" / "memory_policy.pt"


def plot_steering(policy, before, steered, at_step: int, path: str, max_lines: int = 24) -> None:
    """PCA of the SSM state from ``at_step`` to the query: unsteered (solid, colour = true code)
    and steered (dashed, colour = chosen code) trajectories."""
    from matplotlib.figure import Figure

    from mamba_rl.lab.plots import _code_colors, _pca

    module = policy.module
    rows = slice(0, max_lines)
    obs = before.observations[rows, at_step:]
    last = int(before.query_step.max()) - at_step + 1
    state = MambaState(before.state_at_step.ssm[rows], before.state_at_step.conv[rows])
    plain = trace(module, obs[:, :last], state=state)
    pushed = trace(module, obs[:, :last], state=MambaState(state.ssm + steered.delta_ssm[rows], state.conv))
    # [K, B, C]
    plain_values, pushed_values = plain.ssm.flatten(2), pushed.ssm.flatten(2)
    mean, components, ratio = _pca(torch.cat([plain_values, pushed_values]).flatten(0, 1))
    colors = _code_colors(2 ** (before.observations.shape[-1] - 2))
    fig = Figure(figsize=(7.5, 6), layout="constrained")
    ax = fig.subplots()
    for values, codes, style in ((plain_values, before.target, "-"), (pushed_values, steered.code, "--")):
        xy = ((values.double() - mean) @ components).numpy()
        for i in range(xy.shape[1]):
            color = colors[int(codes[i])]
            ax.plot(xy[:, i, 0], xy[:, i, 1], style, color=color, lw=1.1, alpha=0.8)
            ax.plot(*xy[-1, i], marker="*", color=color, ms=10, mec="k", mew=0.5)
            ax.plot(*xy[0, i], marker="o", color=color, ms=4, mec="k", mew=0.4)
    ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.0f}%)")
    ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.0f}%)")
    ax.grid(alpha=0.3)
    ax.set_title(
        f"SSM state from step {at_step} to the query: unsteered (solid, colour = true code)\n"
        "steered (dashed, colour = chosen code); dot: start, star: state the query reads",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--horizon", type=int, default=None, help="delay of the episodes (default: the trained one)")
    parser.add_argument(
        "--at-step",
        type=int,
        default=None,
        help="step whose entering SSM state is changed (default: the middle of the delay)",
    )
    parser.add_argument("--code", type=int, default=None, help="the answer to steer to (default: target + 1)")
    parser.add_argument(
        "--path",
        choices=("step", "sequence"),
        default="step",
        help="code path the change is optimised through (default step: the rollout's own)",
    )
    parser.add_argument("--margin", type=float, default=2.0, help="logit margin asked for (default 2)")
    parser.add_argument("--max-iterations", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--plot", default=None, help="write a PCA picture of steered vs unsteered states here")
    args = parser.parse_args()

    policy, params, info = load_policy(args.checkpoint, args.device)
    if params is None:
        parser.error(f"{args.checkpoint} does not say which task it was trained on")
    if args.horizon is not None:
        params = replace(params, horizon=args.horizon)
    low = params.horizon_range[0]
    at_step = args.at_step if args.at_step is not None else low // 2 + 1
    print(
        f"policy: {args.checkpoint} ({policy.module.num_layers} layer(s), d_model={policy.module.d_model}); "
        f"task: {params.num_bits} bits, horizon {params.horizon}; changing the SSM state entering step {at_step} "
        f"(cue at 0, query at {low + 1})"
    )

    before = rollout_with_ssm_delta(policy, params, args.num_envs, args.seed, at_step)
    print(f"unsteered rollout: accuracy {before.success.float().mean():.3f} on the true codes")
    if args.code is None:
        code = (before.target + 1) % params.num_actions
    else:
        if not 0 <= args.code < params.num_actions:
            parser.error(f"--code must be in 0..{params.num_actions - 1}, got {args.code}")
        code = torch.full_like(before.target, args.code)

    start = time.perf_counter()
    steered = steer_ssm_state(
        policy,
        before.state_at_step,
        before.observations[:, at_step:],
        code,
        query_index=before.query_step - at_step,
        path=args.path,
        margin=args.margin,
        max_iterations=args.max_iterations,
    )
    seconds = time.perf_counter() - start
    print(
        f"optimiser ({args.path} path): {steered.iterations} Adam steps in {seconds:.1f} s; promised answer = "
        f"chosen code for {steered.success.float().mean():.3f} of the episodes; min margin "
        f"{steered.margin.min():.2f}; |delta| / |state|: median {steered.relative_size.median():.2f}"
    )

    after = rollout_with_ssm_delta(policy, params, args.num_envs, args.seed, at_step, steered.delta_ssm)
    kept = (after.answer == steered.answer).float().mean()
    chosen = (after.answer == code).float().mean()
    logit_gap = (after.logits - steered.logits).abs().max()
    print(
        f"steered rollout: answered the chosen code in {chosen:.3f} of the episodes; the promised answer in "
        f"{kept:.3f}; max |rollout logits - promised logits| = {logit_gap:.2e}; env accuracy on the true codes "
        f"now {after.success.float().mean():.3f}"
    )
    if args.plot:
        plot_steering(policy, before, steered, at_step, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
