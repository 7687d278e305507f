"""The state lab's command line.

    python -m mamba_rl.lab equivalence [--checkpoint PATH] [--steps 64] [--backends torch triton] ...
    python -m mamba_rl.lab report --checkpoint PATH --out DIR [--horizon 100] [--episodes 64] ...

``equivalence``: step, sequence and chunked sequence (and the TensorDict faces) on every backend,
compared (:func:`mamba_rl.lab.check_equivalence`); exit status 1 if they disagree.
``report``: the state pictures of a trained policy, correct vs wrong answers
(:func:`mamba_rl.lab.write_state_report`).
"""

from __future__ import annotations

import argparse
import sys

COMMANDS = ("equivalence", "report")


def report_main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mamba_rl.lab report",
        description="Write the state pictures of a trained policy (correct vs wrong).",
    )
    parser.add_argument("--checkpoint", required=True, help="trainer checkpoint (file or run dir) or lab policy file")
    parser.add_argument("--out", required=True, help="directory for the PNGs and report.json")
    parser.add_argument(
        "--horizon",
        type=int,
        nargs="+",
        default=None,
        help="delay of the episodes: one int, or two for a range (default: the trained one)",
    )
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stride", type=int, default=1, help="keep every stride-th state (long horizons)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from dataclasses import replace

    from mamba_rl.lab.plots import REPORT_SEED, write_state_report
    from mamba_rl.lab.policy import load_policy

    try:
        policy, params, _ = load_policy(args.checkpoint, args.device)
    except ValueError as err:
        print(f"report: error: {err}", file=sys.stderr)
        return 2
    if params is None:
        print("report: error: the checkpoint does not say which task it was trained on", file=sys.stderr)
        return 2
    if args.horizon:
        if len(args.horizon) > 2:
            parser.error(f"--horizon takes one int or two (a range), got {args.horizon}")
        params = replace(params, horizon=args.horizon[0] if len(args.horizon) == 1 else tuple(args.horizon))
    result = write_state_report(
        policy,
        params,
        args.out,
        episodes=args.episodes,
        seed=REPORT_SEED if args.seed is None else args.seed,
        stride=args.stride,
    )
    print(
        f"{result['correct']} correct, {result['wrong']} wrong of {result['episodes']} episodes "
        f"(accuracy {result['accuracy']:.3f}); wrote " + ", ".join(sorted(result["files"])) + f" to {args.out}"
    )
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if argv[0] == "equivalence":
        from mamba_rl.lab.equivalence import main as equivalence_main

        return equivalence_main(argv[1:])
    return report_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
