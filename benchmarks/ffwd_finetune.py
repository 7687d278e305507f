"""Can a Mamba memory policy hold its bits across 10,000,000 blank steps? Fine-tune it through the
exact fast-forward and see.

The blank delay is a time-invariant linear recurrence per SSM element, so the state after any delay
has a closed form (:mod:`mamba_rl.lab.fastforward`) that is differentiable in every parameter. This
script fine-tunes a trained policy (float64, CPU) on the cross-entropy of its query-step logits for
all ``2**num_bits`` patterns at delays spread log-uniformly over ``--horizons`` (each pattern's
episode is fixed by its bits), a supervised stand-in for the policy-gradient signal that delays
that long would give. It reports, before and after, the exact greedy accuracy at each evaluation
delay (:func:`~mamba_rl.lab.fastforward.fast_forward_memory`) and the blank-step step sizes of the
channels: whether the parametrisation can hold the memory, and what changes when it does.

    PYTHONPATH=. python benchmarks/ffwd_finetune.py \\
        benchmarks/results/training/h20000_log_mamba_s0/policy.pt \\
        --out benchmarks/results/eval/ffwd_finetune_h20000_s0.json \\
        --save benchmarks/results/training/h20000_log_mamba_s0_ffwd_finetune/policy.pt
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.io import load_checkpoint, save_checkpoint
from mamba_rl.lab.fastforward import _observations, advance_ssm, blank_scan_inputs, fast_forward_memory, query_logits
from mamba_rl.lab.policy import StatePolicy
from mamba_rl.policies import load_policy
from mamba_rl.state import MambaState

EVAL_HORIZONS = [10, 1_000, 20_000, 100_000, 1_000_000, 10_000_000, 100_000_000]


def query_logits_at(policy: StatePolicy, params, targets, horizons: torch.Tensor, warmup: int) -> torch.Tensor:
    """``[K, P, A]``: the query logits after each of ``horizons`` (all >= ``warmup``) blank steps,
    differentiable: cue and ``warmup`` blank steps through the model's step, the rest in closed form."""
    module = policy.module
    state = module.zero_state((len(targets),))
    _, state = module.step(_observations(params, targets, 0, warmup + 1), state)
    blank = _observations(params, targets, 1, warmup + 1)
    for _ in range(warmup):
        inputs = blank_scan_inputs(module, blank, state)[0]
        _, state = module.step(blank, state)
    logits = []
    for horizon in horizons.tolist():
        ssm = advance_ssm(state.ssm[:, 0], inputs["dt_a"], inputs["drive"], horizon - warmup)
        logits.append(query_logits(policy, params, targets, MambaState(ssm[:, None], state.conv)))
    return torch.stack(logits)


def exact_accuracies(policy, params, targets) -> dict[str, float]:
    return {
        str(h): float((fast_forward_memory(policy, params, targets, h).actions == targets).double().mean())
        for h in EVAL_HORIZONS
    }


def blank_dt(policy, params, targets) -> torch.Tensor:
    return fast_forward_memory(policy, params, targets, 100).dt[0, 0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True, help="JSON file")
    parser.add_argument("--horizons", type=float, nargs=2, default=[10, 3e7], help="log-uniform training delays")
    parser.add_argument("--per-step", type=int, default=8, help="delays drawn per optimiser step")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--save", default=None, help="also write the fine-tuned policy (float32) as a trainer checkpoint here"
    )
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    policy, cfg, _ = load_policy(args.checkpoint, "cpu")
    params = DelayedMemoryParams(num_bits=cfg.num_bits, horizon=10)
    targets = torch.arange(params.num_actions)
    before = {"accuracy": exact_accuracies(policy, params, targets), "blank_dt": blank_dt(policy, params, targets)}

    tuned = copy.deepcopy(policy).to(torch.float64)
    tuned.actor_trunk.core.backend = "torch"
    state_policy = StatePolicy(tuned.actor_trunk.core, tuned.actor_head)
    trainable = [p for p in list(state_policy.module.parameters()) + list(state_policy.head.parameters())]
    optimiser = torch.optim.Adam(trainable, lr=args.lr)
    low, high = math.log(args.horizons[0]), math.log(args.horizons[1])
    warmup = cfg.d_conv + 2
    started = time.perf_counter()
    log = []
    for step in range(args.steps):
        horizons = torch.exp(torch.empty(args.per_step, dtype=torch.float64).uniform_(low, high)).round()
        logits = query_logits_at(state_policy, params, targets, horizons.clamp_min(warmup), warmup)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.repeat(len(horizons)))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 25 == 0 or step == args.steps - 1:
            log.append({"step": step, "loss": loss.item()})
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
    seconds = time.perf_counter() - started
    tuned.eval()
    after = {"accuracy": exact_accuracies(tuned, params, targets), "blank_dt": blank_dt(tuned, params, targets)}

    def dt_summary(dt: torch.Tensor) -> dict:
        return {
            "min": float(dt.min()),
            "median": float(dt.median()),
            "channels_below_1e-7": int((dt < 1e-7).sum()),
            "channels_below_1e-8": int((dt < 1e-8).sum()),
        }

    result = {
        "checkpoint": args.checkpoint,
        "device": f"cpu ({platform.machine()})",
        "dtype": "float64",
        "torch": torch.__version__,
        "training": {
            "loss": "cross-entropy of the query logits, all patterns, delays log-uniform in --horizons",
            "horizons": args.horizons,
            "per_step": args.per_step,
            "steps": args.steps,
            "lr": args.lr,
            "seconds": seconds,
            "log": log,
        },
        "before": {"exact_greedy_accuracy": before["accuracy"], "blank_dt": dt_summary(before["blank_dt"])},
        "after": {"exact_greedy_accuracy": after["accuracy"], "blank_dt": dt_summary(after["blank_dt"])},
    }
    if args.save:
        checkpoint = load_checkpoint(args.checkpoint)
        checkpoint["policy"] = {k: v.detach().to(torch.float32) for k, v in tuned.state_dict().items()}
        checkpoint = {k: v for k, v in checkpoint.items() if k not in ("format", "version", "sha256")}
        result["saved"] = str(save_checkpoint(checkpoint, args.save))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("before", "after")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
