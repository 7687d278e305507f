"""Memory of the PPO replay against the number of answers (``2**num_bits``), with the actor head at
every step (``full``) or only at the steps the policy mask selects (``masked``, what the trainer runs).

One rollout of the memory task (``--envs`` envs, delays log-uniform in ``1..--horizon``, one chunk
of ``horizon + 2`` steps) is replayed as ``ppo_update`` replays a minibatch, through the PPO loss
(Mamba or GRU trunk as the GPU presets build them; ``--heads``: the ``discrete_head`` values).
Before measuring, the masked replay's logits must equal the full replay's at the masked steps.
Measured per case:

- ``saved_mb``: the tensors autograd holds for the backward pass (each storage counted once), plus
  the logits and values: what one minibatch keeps alive between its forward and backward;
- ``peak_mb`` (CUDA only): ``torch.cuda.max_memory_allocated`` over forward and backward;
- ``ms``: forward + backward;
- ``per_step_kb`` / ``per_decision_kb``: ``saved_mb`` split into a part per replayed step and a
  part per scored step (a least-squares-free split: the full case's head cost per step is its
  excess over the masked case), and ``minibatch_gb``: the same extrapolated to a minibatch of
  ``--mb-envs`` envs x ``--mb-steps`` steps with ``--mb-decisions`` scored steps (defaults: the
  H = 20,000 presets, 128 envs x 20,002 steps, ~1,270 episodes ending in a minibatch).

The rollout step's cost of the head is timed too (``step_ms``: the policy step and the
head's sampling for ``--rollout-envs`` envs, the trainer's collection batch).

    python benchmarks/bench_replay_memory.py --device cpu --out benchmarks/results/replay_memory_cpu.json
    python benchmarks/bench_replay_memory.py --device cuda --envs 64 --horizon 2000 \
        --out benchmarks/results/replay_memory_H100.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mamba_rl.config import TrainConfig  # noqa: E402
from mamba_rl.evaluate import build_policy  # noqa: E402
from mamba_rl.policies.build import memory_params  # noqa: E402
from mamba_rl.training import RolloutCollector, ppo_loss, replay  # noqa: E402
from mamba_rl.training.trainer import rollout_advantages  # noqa: E402


def _config(controller: str, bits: int, horizon: int, envs: int, discrete_head: str) -> TrainConfig:
    return TrainConfig(
        controller=controller,
        discrete_head=discrete_head,
        num_bits=bits,
        horizon=[1, horizon],
        horizon_sampling="log_uniform",
        num_envs=envs,
        d_model=64,
        gru_hidden_size=128,
        bc_init_scale=30.0,
        dt_min=1e-5,
        progress_bar=False,
        tensorboard=False,
    )


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loss(policy, rollout, advantages, returns, mask):
    """One minibatch of every env, as ``ppo_update`` computes it (``mask`` None: the head at every step)."""
    env_idx = torch.arange(rollout.obs.shape[0], device=rollout.obs.device)
    logits, value = replay(policy, rollout, env_idx, "chunk", mask)
    action, old_log_prob, adv = rollout.action, rollout.log_prob, advantages
    weight = rollout.decision.float()
    if mask is not None:
        action, old_log_prob, adv = action[mask], old_log_prob[mask], adv[mask]
        weight = torch.ones(logits.shape[0], device=logits.device)
    out = ppo_loss(
        logits,
        value,
        action,
        old_log_prob,
        rollout.value,
        adv,
        returns,
        weight,
        ent_coef=0.02,
        action_dist=policy.action_dist,
    )
    return out.loss, logits, value


def _measure(policy, rollout, advantages, returns, mask, device) -> dict:
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    policy.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    _sync(device)
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, logits, value = _loss(policy, rollout, advantages, returns, mask)
    for t in (logits, value):
        storage = t.untyped_storage()
        storages[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
    loss.backward()
    _sync(device)
    ms = (time.perf_counter() - start) * 1e3
    result = {"saved_mb": sum(storages.values()) / 2**20, "ms": ms, "logits_shape": list(logits.shape)}
    if device.type == "cuda":
        result["peak_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return result


@torch.no_grad()
def _step_ms(policy, bits, envs, device, repeats=3) -> float:
    obs = torch.zeros(envs, bits + 2, device=device)
    state = policy.zero_state(envs, device)
    reset = torch.zeros(envs, dtype=torch.bool, device=device)
    noise = torch.rand(envs, *policy.action_dist.noise_shape, device=device)
    times = []
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        params, _, _ = policy.step(obs, state, reset)
        policy.action_dist.sample(params, noise)
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return min(times[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--controllers", nargs="+", default=["mamba", "gru"])
    parser.add_argument("--heads", nargs="+", default=["categorical"], help="discrete_head values")
    parser.add_argument("--envs", type=int, default=4)
    parser.add_argument("--horizon", type=int, default=50)
    parser.add_argument("--full-limit-mb", type=float, default=4096, help="skip full cases whose logits exceed this")
    parser.add_argument("--mb-envs", type=int, default=128)
    parser.add_argument("--mb-steps", type=int, default=20002)
    parser.add_argument("--mb-decisions", type=int, default=1270)
    parser.add_argument("--rollout-envs", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    cases = [(c, h, b) for c in args.controllers for h in args.heads for b in args.bits]
    for controller, head, bits in cases:
        torch.manual_seed(0)
        cfg = _config(controller, bits, args.horizon, args.envs, head)
        policy = build_policy(cfg, device)
        collector = RolloutCollector(
            policy, memory_params(cfg), args.envs, args.horizon + 2, 1, 0, device, cuda_graph=False
        )
        rollout = collector.collect()
        advantages, returns = rollout_advantages(rollout, cfg)
        mask = rollout.decision
        steps, decisions = mask.numel(), int(mask.sum())
        full_logits_mb = steps * policy.action_dist.num_outputs * 4 / 2**20
        row = {"controller": controller, "discrete_head": head, "num_bits": bits}
        row.update(steps=steps, decisions=decisions)
        row["masked"] = _measure(policy, rollout, advantages, returns, mask, device)
        if full_logits_mb <= args.full_limit_mb:
            with torch.no_grad():
                _, full, _ = _loss(policy, rollout, advantages, returns, None)
                _, masked, _ = _loss(policy, rollout, advantages, returns, mask)
            if not torch.allclose(full[mask], masked, atol=1e-5, rtol=1e-5):
                raise SystemExit(f"{controller} {head} {bits} bits: masked logits differ from the full replay's")
            row["full"] = _measure(policy, rollout, advantages, returns, None, device)
            # the head's cost per step: what the full replay holds beyond the masked one, per unmasked step
            head_kb = (row["full"]["saved_mb"] - row["masked"]["saved_mb"]) * 1024 / (steps - decisions)
            trunk_kb = (row["masked"]["saved_mb"] * 1024 - head_kb * decisions) / steps
        else:
            head_kb = trunk_kb = None
        row["per_step_kb"], row["per_decision_kb"] = trunk_kb, head_kb
        if head_kb is not None:
            row["minibatch_gb"] = {
                "full": (trunk_kb + head_kb) * args.mb_envs * args.mb_steps / 2**20,
                "masked": (trunk_kb * args.mb_envs * args.mb_steps + head_kb * args.mb_decisions) / 2**20,
            }
        row["step_ms"] = _step_ms(policy, bits, args.rollout_envs, device)
        rows.append(row)
        print(json.dumps(row))
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": args.threads,
        "args": vars(args),
        "rows": rows,
    }
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
