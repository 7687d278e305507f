"""Evaluation of a memory-task policy at long horizons: stepping vs blocks of steps, then 1M and 10M steps.

Two ways to play the same evaluation episodes (same ``(seed, episode)`` streams, same sampling
noise), both in :mod:`mamba_rl.training.evaluate`:

- ``step``: :class:`~mamba_rl.training.evaluate._EpisodeBatch`, the env and the whole policy one
  step at a time, replayed from a CUDA graph on CUDA (eager on the CPU), once per mode;
- ``block``: :func:`~mamba_rl.training.evaluate.play_memory_episodes`, what ``mamba-rl-eval``
  runs: the observations generated a block of steps at a time, the actor's trunk over each block
  through its sequence path (the Triton scan on CUDA, the chunked scan on the CPU), the head at
  the query step only, one trunk pass for both modes.

For each ``--step-horizons`` horizon both run on the same episodes and must give the same answers
(the script counts the episodes whose success differs per mode and the largest difference of the
query logits; more than ``--max-disagree`` of the episodes differing is an error: the JSON is
written and the script exits 1), then ``speedup`` is the stepping time of all modes over the
block time. ``--block-horizons`` run by blocks alone (accuracy and time). ``--block-steps`` times
the block path at ``--sweep-horizon`` for several block sizes (the default's justification).
What is timed: each case's evaluation as ``mamba-rl-eval`` runs it once its kernels exist, i.e.
everything an evaluation does (env reset, CUDA graph capture of the step path, the
synchronisation at the end) but not Triton's compilation. Triton compiles a kernel for each
shape it sees, and the block path runs the trunk on ``[episodes, length]`` for each length of
:func:`~mamba_rl.training.evaluate.memory_blocks` (the block size, and the last block's rest),
so the warm-up (:func:`warm_up`) plays, before anything is timed, one short evaluation per
distinct (block size, last block) pair of the timed cases, greedy and sampled, with
``--episodes`` episodes: the same trunk calls with the same shapes and strides, one or two
blocks each. It also steps ``--episodes`` episodes of the shortest horizon through the step
path in both modes (the single-step kernels are compiled for that batch). The JSON is rewritten
after every case, so a run cut by a time limit keeps what it measured.

    # GPU: agreement and speed up to 100,000 steps, the block-size sweep
    python benchmarks/bench_long_eval.py --device cuda --step-horizons 1000 10000 100000 \\
        --block-steps 256 512 1024 2048 4096 --out benchmarks/results/eval/long_eval_h100.json
    # GPU: the committed H = 20,000 policy at 1,000,000 and 10,000,000 blank steps
    python benchmarks/bench_long_eval.py --device cuda --step-horizons --block-horizons 1000000 10000000 \\
        --out benchmarks/results/eval/long_eval_1m_10m_h100.json
    # CPU, small
    python benchmarks/bench_long_eval.py --device cpu --threads 2 --episodes 200 --step-horizons 10 100 1000 \\
        --out benchmarks/results/eval/long_eval_cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mamba_rl.envs import DelayedMemoryParams  # noqa: E402
from mamba_rl.policies import build_policy, load_policy  # noqa: E402
from mamba_rl.training.evaluate import (  # noqa: E402
    _EpisodeBatch,
    default_block_steps,
    memory_blocks,
    play_memory_episodes,
)

DEFAULT_CHECKPOINT = "benchmarks/results/training/h20000_log_mamba_s0/policy.pt"
MODES = ("greedy", "sampled")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """``(fn(), seconds, peak GPU memory in bytes or None)``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return out, seconds, peak


def run_blocks(policy, params, episodes, seed, device, block_steps, progress):
    played, seconds, peak = timed(
        lambda: play_memory_episodes(
            policy, params, episodes, seed, MODES, device, block_steps=block_steps, progress=progress
        ),
        device,
    )
    return played, {
        "seconds": seconds,
        "block_steps": block_steps or default_block_steps(episodes, device),
        "peak_memory_bytes": peak,
        "steps_per_s": episodes * params.max_episode_steps / seconds,
        **{f"accuracy_{mode}": float(played[mode].success.float().mean()) for mode in MODES},
    }


def run_steps(policy, params, episodes, seed, device, mode):
    def play():
        batch = _EpisodeBatch(policy, params, episodes, seed, mode == "greedy", device)
        with torch.no_grad():
            batch.run(cuda_graph=True)
        return batch

    batch, seconds, peak = timed(play, device)
    return batch, {
        "seconds": seconds,
        "peak_memory_bytes": peak,
        "accuracy": float(batch.successes.float().mean()),
        "cuda_graph": device.type == "cuda",
    }


def sweep_sizes(args, default_steps: int) -> list[int | None]:
    """The block sizes timed at ``--sweep-horizon``: the default (None) and ``--block-steps``; none
    without ``--block-steps``."""
    if not args.block_steps:
        return []
    return [None] + [size for size in args.block_steps if size != default_steps]


def block_runs(args, default_steps: int) -> list[tuple[int, int | None]]:
    """``(horizon, block_steps)`` of every block-path evaluation :func:`main` times, in its order
    (``block_steps`` None: the default size)."""
    return (
        [(horizon, None) for horizon in args.step_horizons]
        + [(args.sweep_horizon, size) for size in sweep_sizes(args, default_steps)]
        + [(horizon, None) for horizon in args.block_horizons]
    )


def warm_up_horizons(params_at, runs, episodes: int, device) -> list[tuple[int, int]]:
    """``(horizon, block_steps)`` of the short evaluations whose blocks are those of ``runs``: for
    each distinct (block size, last block) pair of the runs' :func:`memory_blocks`, a horizon of
    that size plus the rest (or of one block), played by blocks of that size. Its trunk calls
    have the shapes ``[episodes, length]`` and the strides of the run's."""
    pairs = {}
    for horizon, block_steps in runs:
        lengths = memory_blocks(params_at(horizon), episodes, device, block_steps)
        first, last = lengths[0], lengths[-1]
        steps = first + (last if last != first else 0)
        # an episode is at least 3 steps (cue, one blank, query); smaller blocks still appear in its plan
        pairs[(first, last)] = (max(1, steps - 2), first)
    return sorted(set(pairs.values()))


def warm_up(policy, params_at, runs, episodes: int, seed: int, device, step_path: bool) -> None:
    """Compile what the timed cases run: the block path on every block shape of ``runs``
    (:func:`warm_up_horizons`), greedy and sampled, and with ``step_path`` the step path on
    ``episodes`` episodes in both modes."""
    for horizon, block_steps in warm_up_horizons(params_at, runs, episodes, device):
        play_memory_episodes(
            policy, params_at(horizon), episodes, seed, MODES, device, block_steps=block_steps, progress=False
        )
    if step_path:
        for mode in MODES:
            run_steps(policy, params_at(1), episodes, seed, device, mode)
    sync(device)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="a memory-task policy or checkpoint")
    parser.add_argument(
        "--untrained",
        choices=("mamba", "gru"),
        default=None,
        help="time an untrained policy of this controller with the checkpoint's config instead "
        "(the answers still agree; the accuracy means nothing)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--episodes", type=int, default=1000, help="episodes per horizon, all in one batch")
    parser.add_argument("--seed", type=int, default=777, help="seed of the evaluation episodes")
    parser.add_argument(
        "--step-horizons",
        type=int,
        nargs="*",
        default=[1000, 10000, 100000],
        help="horizons run both ways and compared",
    )
    parser.add_argument(
        "--block-horizons", type=int, nargs="*", default=[], help="horizons run by blocks alone (e.g. 1000000 10000000)"
    )
    parser.add_argument(
        "--block-steps",
        type=int,
        nargs="*",
        default=[],
        help="block sizes timed at --sweep-horizon (the default size is always in)",
    )
    parser.add_argument("--sweep-horizon", type=int, default=100000)
    parser.add_argument(
        "--max-disagree",
        type=float,
        default=0.005,
        help="largest fraction of episodes whose answers may differ between the two paths",
    )
    parser.add_argument("--out", required=True, help="JSON file to write")
    return parser


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    policy, cfg, _ = load_policy(args.checkpoint, device)
    if not cfg.is_memory_task:
        parser.error(f"--checkpoint must hold a memory-task policy, got one trained on {cfg.env!r}")
    if args.untrained:
        cfg = dataclasses.replace(cfg, controller=args.untrained)
        torch.manual_seed(0)
        policy = build_policy(cfg, device)
    policy.eval()

    def params_at(horizon: int) -> DelayedMemoryParams:
        return DelayedMemoryParams(
            num_bits=cfg.num_bits, horizon=horizon, num_distractors=cfg.num_distractors, wrong_penalty=cfg.wrong_penalty
        )

    out = {
        "checkpoint": args.checkpoint,
        "controller": cfg.controller,
        "untrained": bool(args.untrained),
        "trained_horizon": cfg.horizon,
        "num_bits": cfg.num_bits,
        "num_distractors": cfg.num_distractors,
        "episodes": args.episodes,
        "seed": args.seed,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "dtype": str(next(policy.parameters()).dtype),
        "torch": torch.__version__,
        "default_block_steps": default_block_steps(args.episodes, device),
        "compared": [],
        "block_only": [],
        "block_steps_sweep": [],
    }

    def write() -> None:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)

    # Triton's compilation of every shape the timed cases run is not what is timed
    start = time.perf_counter()
    runs = block_runs(args, out["default_block_steps"])
    warm_up(policy, params_at, runs, args.episodes, args.seed, device, bool(args.step_horizons))
    out["warm_up"] = {
        "seconds": time.perf_counter() - start,
        "block_runs": [list(run) for run in warm_up_horizons(params_at, runs, args.episodes, device)],
    }
    print(f"warm-up: {out['warm_up']['seconds']:.1f} s, (horizon, block_steps) {out['warm_up']['block_runs']}")

    failed = False
    for horizon in args.step_horizons:
        params = params_at(horizon)
        played, block = run_blocks(policy, params, args.episodes, args.seed, device, None, None)
        case = {"horizon": horizon, "block": block, "step": {}}
        logit_diff = 0.0
        for mode in MODES:
            batch, step = run_steps(policy, params, args.episodes, args.seed, device, mode)
            differ = int((batch.successes.bool() != played[mode].success).sum())
            step["disagreements"] = differ
            case["step"][mode] = step
            logit_diff = max(logit_diff, float((batch.logits - played[mode].logits).abs().max()))
            failed |= differ > args.max_disagree * args.episodes
        case["logits_max_abs_diff"] = logit_diff
        case["logits_max_abs"] = float(played["greedy"].logits.abs().max())
        case["speedup"] = sum(case["step"][mode]["seconds"] for mode in MODES) / block["seconds"]
        out["compared"].append(case)
        write()
        print(
            f"H={horizon}: step {sum(case['step'][m]['seconds'] for m in MODES):.2f} s (both modes), "
            f"block {block['seconds']:.2f} s, speedup {case['speedup']:.1f}x; accuracy greedy/sampled "
            f"{block['accuracy_greedy']:.3f}/{block['accuracy_sampled']:.3f}; differing episodes "
            f"{[case['step'][m]['disagreements'] for m in MODES]}, logits max diff {logit_diff:.2e}",
            flush=True,
        )

    params = params_at(args.sweep_horizon)
    for size in sweep_sizes(args, out["default_block_steps"]):
        _, block = run_blocks(policy, params, args.episodes, args.seed, device, size, None)
        out["block_steps_sweep"].append({"horizon": args.sweep_horizon, **block})
        write()
        print(
            f"H={args.sweep_horizon}, block_steps {block['block_steps']}: {block['seconds']:.2f} s, "
            f"peak memory {block['peak_memory_bytes']}",
            flush=True,
        )

    for horizon in args.block_horizons:
        _, block = run_blocks(policy, params_at(horizon), args.episodes, args.seed, device, None, True)
        out["block_only"].append({"horizon": horizon, **block})
        write()
        print(
            f"H={horizon}: block {block['seconds']:.1f} s, accuracy greedy/sampled "
            f"{block['accuracy_greedy']:.3f}/{block['accuracy_sampled']:.3f}",
            flush=True,
        )
    write()
    if failed:
        print(f"the two paths disagree on more than {args.max_disagree:.1%} of the episodes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
