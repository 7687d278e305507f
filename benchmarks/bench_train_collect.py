"""Rollout collection speed: TorchRL's Collector (TensorDicts per step) vs mamba-rl's RolloutCollector
(the env's functional core and the policy's tensor API; on CUDA one captured graph per step).

    python benchmarks/bench_train_collect.py [--device cpu|cuda] [--num-envs 64] [--steps 100]
                                             [--json benchmarks/results/train_collect_cpu.json]

Both run the same policy (the same parameters: ``ActorCritic.to_torchrl()``) on the same task.
Correctness first: the TorchRL actor's log-probs are recomputed through the tensor API on the
collected batch and must match. Prints a table and writes JSON (device, shapes, steps/s).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torchrl.collectors import Collector

from mamba_rl.envs import DelayedMemoryEnv, DelayedMemoryParams
from mamba_rl.policies import make_actor_critic
from mamba_rl.training import RolloutCollector


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num-envs", type=int, default=None, help="default 64 on CPU, 1024 on CUDA")
    parser.add_argument("--steps", type=int, default=100, help="steps per collected batch")
    parser.add_argument("--horizon", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
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
