"""Rollout collection speed: TorchRL's Collector (TensorDicts per step) vs mamba-rl's RolloutCollector
(the env's functional core and the policy's tensor API; on CUDA one captured graph per step); and,
with ``--config``, RolloutCollector vs SequenceRolloutCollector (the memory task by blocks through
the policy's sequence path) on a training preset's exact rollout.

    python benchmarks/bench_train_collect.py [--device cpu|cuda] [--num-envs 64] [--steps 100]
                                             [--json benchmarks/results/train_collect_cpu.json]
    python benchmarks/bench_train_collect.py --config configs/h20000_gpu.yaml [--set controller=gru]
                                             [--repeats 3] [--json benchmarks/results/sequence_collect_h100.json]

Both comparisons run the same policy (the same parameters) on the same task. Correctness first:
the TorchRL actor's log-probs are recomputed through the tensor API on the collected batch and must
match; the sequence collector's first rollout must equal the step collector's (the env's fields
bit for bit, the actions, log-probs and values to float rounding). Then the two collectors are
timed in turns (A B A B, after one untimed collect each: CUDA graph capture, compilation). Prints
a table and writes JSON (device, dtype, shapes, seconds per rollout, steps/s).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torchrl.collectors import Collector

from mamba_rl.config import load_config
from mamba_rl.envs import DelayedMemoryEnv, DelayedMemoryParams
from mamba_rl.policies import build_policy, make_actor_critic, make_train_env
from mamba_rl.training import RolloutCollector, SequenceRolloutCollector


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_torchrl(policy, device, num_envs, steps, horizon, repeats):
    env = DelayedMemoryEnv(num_envs, num_bits=4, horizon=horizon, device=device, seed=0, validate_actions=False)
    modules = policy.to_torchrl()
    collector = Collector(
        env,
        modules.actor,
        frames_per_batch=num_envs * steps,
        total_frames=num_envs * steps * (repeats + 1),
        device=device,
        auto_register_policy_transforms=True,
    )
    times, first = [], None
    start = time.perf_counter()
    for batch in collector:
        _sync(device)
        first = batch.clone() if first is None else first
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
    collector.shutdown()
    # correctness: the tensor API reproduces the first batch's log-probs (it starts from reset)
    batch = first
    with torch.no_grad():
        state = policy.zero_state(num_envs, device)
        worst = 0.0
        for t in range(min(steps, 20)):
            step = batch[:, t]
            logits, _, state = policy.step(step["observation"], state, step["is_init"].squeeze(-1))
            log_prob = torch.log_softmax(logits, -1).gather(-1, step["action"][:, None]).squeeze(-1)
            worst = max(worst, float((log_prob - step["action_log_prob"]).abs().max()))
    assert worst < 1e-4, f"TorchRL actor and tensor API disagree by {worst}"
    return num_envs * steps / min(times[1:])


def bench_fast(policy, device, num_envs, steps, horizon, repeats, cuda_graph):
    params = DelayedMemoryParams(num_bits=4, horizon=horizon)
    collector = RolloutCollector(policy, params, num_envs, steps, 1, 0, device, cuda_graph=cuda_graph)
    collector.collect()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        collector.collect()
        _sync(device)
        times.append(time.perf_counter() - start)
    return num_envs * steps / min(times)


# the env's fields: bit for bit the step collector's for the same actions
EXACT_FIELDS = ("obs", "done", "is_init", "decision", "episode_length", "reward", "success", "episode_return")


def check_sequence_collector(expected: dict, got: dict) -> dict:
    """The sequence collector's rollout ``got`` against the step collector's ``expected`` (their
    buffers, ``{field: [N, S, ...]}``), from the same start: the
    env's observations and flags equal, the actions equal but for the rare noise that falls
    within float rounding of a boundary between two actions, the log-probs and values close.
    Raises on a difference; returns what it measured."""
    same_action = expected["action"] == got["action"]
    action_agreement = float(same_action.float().mean())
    assert action_agreement > 0.999, f"only {action_agreement:.4%} of the actions agree"
    for name in ("obs", "done", "is_init", "decision", "episode_length"):
        assert torch.equal(expected[name], got[name]), name
    # the scored fields where the actions agree (every field where they all do)
    rows = same_action.reshape(same_action.shape[0], -1).all(1)
    for name in EXACT_FIELDS[5:]:
        assert torch.equal(expected[name][rows], got[name][rows]), name
    worst = {}
    for name in ("log_prob", "value"):
        worst[name] = float((expected[name] - got[name])[same_action].abs().max())
        assert worst[name] < 1e-3, f"{name} differs by {worst[name]}"
    return {"action_agreement": action_agreement, "max_abs_diff": worst}


def _timed_collect(collector, device) -> float:
    _sync(device)
    start = time.perf_counter()
    collector.collect()
    _sync(device)
    return time.perf_counter() - start


def bench_sequence(cfg, repeats: int) -> dict:
    """RolloutCollector vs SequenceRolloutCollector on ``cfg``'s rollout (as the trainer makes them)."""
    device = torch.device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    env = make_train_env(cfg, cfg.num_envs, device)
    policy = build_policy(cfg, device, env)
    args = (policy, env, cfg.num_envs, cfg.resolved_chunk_len, cfg.chunks_per_rollout, cfg.seed, device)
    step = RolloutCollector(*args, cuda_graph=cfg.cuda_graph, compile_env=cfg.compile_env and device.type == "cuda")
    sequence = SequenceRolloutCollector(*args)
    times = {"step": [_timed_collect(step, device)], "sequence": []}
    expected = {name: value.clone() for name, value in step.buffers.items()}
    memory_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times["sequence"].append(_timed_collect(sequence, device))
    peak = torch.cuda.max_memory_allocated(device) - memory_before if device.type == "cuda" else None
    check = check_sequence_collector(expected, sequence.buffers)
    for _ in range(repeats):
        for name, collector in (("step", step), ("sequence", sequence)):
            times[name].append(_timed_collect(collector, device))
    steps = cfg.steps_per_update  # env-steps per rollout (envs x steps)
    # the first collect of each (capture, compilation) is left out
    best = {name: min(values[1:]) for name, values in times.items()}
    return {
        "controller": cfg.controller,
        "check": check,
        "seconds": times,
        "step_collector_s": best["step"],
        "sequence_collector_s": best["sequence"],
        "speedup": best["step"] / best["sequence"],
        "step_collector_sps": steps / best["step"],
        "sequence_collector_sps": steps / best["sequence"],
        "sequence_block_steps": sequence.block_steps,
        "sequence_peak_extra_memory_gb": None if peak is None else peak / 2**30,
        "step_cuda_graph": step.use_cuda_graph,
        "step_env_compiled": step.env_compiled,
    }


def main_sequence(args) -> None:
    cfg = load_config(args.config, [*args.set, *([f"device={args.device}"] if args.device else [])])
    row = bench_sequence(cfg, args.repeats)
    device = torch.device(cfg.device)
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": str(args.config),
        "overrides": list(args.set),
        "num_envs": cfg.num_envs,
        "chunk_len": cfg.resolved_chunk_len,
        "chunks_per_rollout": cfg.chunks_per_rollout,
        "horizon": cfg.horizon,
        "num_bits": cfg.num_bits,
        "num_distractors": cfg.num_distractors,
        "discrete_head": cfg.discrete_head,
        "dtype": "float32",
        "d_model": cfg.d_model,
        "gru_hidden_size": cfg.gru_hidden_size,
        "result": row,
    }
    print(json.dumps(info, indent=2))
    print("| controller | step collector s | sequence collector s | speedup |")
    print("|---|---:|---:|---:|")
    print(
        f"| {row['controller']} | {row['step_collector_s']:.3f} | {row['sequence_collector_s']:.3f} | "
        f"{row['speedup']:.2f}x |"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(info, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="default cuda when available (with --config: the config's)")
    parser.add_argument("--num-envs", type=int, default=None, help="default 64 on CPU, 1024 on CUDA")
    parser.add_argument("--steps", type=int, default=100, help="steps per collected batch")
    parser.add_argument("--horizon", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--config", default=None, help="a preset: time the step and the sequence collectors on it")
    parser.add_argument("--set", nargs="*", default=[], help="key=value overrides of --config")
    args = parser.parse_args()
    if args.config is not None:
        main_sequence(args)
        return
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    num_envs = args.num_envs or (1024 if device.type == "cuda" else 64)
    rows = []
    for controller in ("mamba", "gru"):
        torch.manual_seed(0)
        policy = make_actor_critic(controller, 6, 16, d_model=64, gru_hidden_size=128, device=device)
        row = {
            "controller": controller,
            "torchrl_collector_sps": bench_torchrl(policy, device, num_envs, args.steps, args.horizon, args.repeats),
        }
        row["fast_eager_sps"] = bench_fast(policy, device, num_envs, args.steps, args.horizon, args.repeats, False)
        if device.type == "cuda":
            row["fast_cuda_graph_sps"] = bench_fast(
                policy, device, num_envs, args.steps, args.horizon, args.repeats, True
            )
        rows.append(row)
        print(row, flush=True)
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "num_envs": num_envs,
        "steps_per_batch": args.steps,
        "horizon": args.horizon,
        "dtype": "float32",
        "policy": "d_model 64 (Mamba) / hidden 128 (GRU), shared trunk",
        "results": rows,
    }
    print("| controller | TorchRL Collector steps/s | RolloutCollector eager | RolloutCollector CUDA graph |")
    print("|---|---:|---:|---:|")
    for r in rows:
        graph = f"{r['fast_cuda_graph_sps']:,.0f}" if "fast_cuda_graph_sps" in r else "n/a"
        print(f"| {r['controller']} | {r['torchrl_collector_sps']:,.0f} | {r['fast_eager_sps']:,.0f} | {graph} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
