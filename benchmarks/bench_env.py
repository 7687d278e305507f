"""Env-only throughput of the delayed multi-bit memory env, with random actions; writes JSON.

Cases (each for every ``--num-envs``):

- ``functional_eager``: :func:`delayed_memory_step` (same-step autoreset) in a Python loop.
- ``functional_compiled``: the same step, ``torch.compile``'d, called once per step.
- ``functional_cuda_graph`` / ``functional_compiled_cuda_graph`` (CUDA only): ``--graph-steps``
  steps of the eager / compiled step captured into one CUDA graph, replayed.
- ``torchrl_step_and_maybe_reset``: ``DelayedMemoryEnv.step_and_maybe_reset`` in a loop, actions
  from ``torch.randint``, action range check on (``validate_actions=True``, the default).
- ``torchrl_step_and_maybe_reset_novalidate``: the same with ``validate_actions=False``.
- ``torchrl_rollout``: ``env.rollout(T, break_when_any_done=False)`` with TorchRL's random
  policy (it stacks the trajectory, so it also measures that copy).

The functional cases draw their random actions from a counter-based hash on the device
(uniform over the ``2**num_bits`` actions, like jax.random inside a jitted loop), so the
captured graphs need no host RNG; every functional case consumes the observation, reward and
done of every step (a running reward sum and done count) so nothing is optimised away.

Correctness is checked before timing: the compiled step and the graph replay must reproduce
the eager step bit for bit, and the TorchRL env must pay exactly one reward per episode to an
answering policy. After timing, each functional case's done count must equal
``num_envs * (steps // (horizon + 2))`` (the envs start together and the horizon is fixed).

Usage::

    python benchmarks/bench_env.py --device cpu --out benchmarks/results/env_cpu.json
    python benchmarks/bench_env.py --device cuda --out benchmarks/results/env_h100.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time

import torch

from mamba_rl.envs import (
    DelayedMemoryEnv,
    DelayedMemoryParams,
    delayed_memory_init,
    delayed_memory_reset,
    delayed_memory_step,
)
from mamba_rl.envs.delayed_memory import mix32

# in the order they run: the slow-to-compile cases last
ALL_CASES = [
    "functional_eager",
    "functional_cuda_graph",
    "torchrl_step_and_maybe_reset",
    "torchrl_step_and_maybe_reset_novalidate",
    "torchrl_rollout",
    "functional_compiled",
    "functional_compiled_cuda_graph",
]
_ACTION_SALT = 0x5BD1E995


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_loop_step(params: DelayedMemoryParams):
    """One benchmark step: hash actions, env step with autoreset, consume the outputs.

    carry: (state, step int64 [], index int64 [N], reward_sum float32 [N], done_count int64 [N],
    obs_sum float32 [])
    """

    def loop_step(state, step, index, reward_sum, done_count, obs_sum):
        action = mix32(index ^ mix32((step + _ACTION_SALT) & 0xFFFFFFFF)) & (params.num_actions - 1)
        result = delayed_memory_step(state, action, params, autoreset=True)
        return (
            result.state,
            step + 1,
            index,
            reward_sum + result.reward,
            done_count + result.done,
            # one read of the observation per step, so it must be materialised
            obs_sum + result.observation[:, -1].sum(),
        )

    return loop_step


def fresh_carry(num_envs: int, params: DelayedMemoryParams, device: torch.device):
    state = delayed_memory_reset(delayed_memory_init(num_envs, params, 0, device), None, params)
    return (
        state,
        torch.zeros((), dtype=torch.int64, device=device),
        torch.arange(num_envs, dtype=torch.int64, device=device),
        torch.zeros(num_envs, dtype=torch.float32, device=device),
        torch.zeros(num_envs, dtype=torch.int64, device=device),
        torch.zeros((), dtype=torch.float32, device=device),
    )


def flatten(carry):
    state, *rest = carry
    return list(state) + rest


def assert_same_carry(a, b, what: str) -> None:
    for x, y in zip(flatten(a), flatten(b)):
        if not torch.equal(x, y):
            raise AssertionError(f"{what} differs from the eager step")


def check_done_count(carry, steps: int, params: DelayedMemoryParams) -> dict:
    """Exact done count for lockstep envs with a fixed horizon; reward rate ~ 1/num_actions."""
    _, _, _, reward_sum, done_count, _ = carry
    low, high = params.horizon_range
    total_done = int(done_count.sum())
    out = {"episodes": total_done}
    if low == high:
        expected = done_count.numel() * (steps // (low + 2))
        if total_done != expected:
            raise AssertionError(f"done count {total_done} != expected {expected}")
    if total_done >= 1000:
        rate = float(reward_sum.sum()) / total_done
        p = 1.0 / params.num_actions
        sd = math.sqrt(p * (1 - p) / total_done)
        if params.wrong_penalty == 0 and abs(rate - p) > 6 * sd:
            raise AssertionError(f"success rate {rate} far from 1/num_actions = {p}")
        out["success_rate"] = rate
    return out


def time_loop(run_chunk, steps_per_chunk: int, device, min_time: float, max_chunks: int):
    """Calls run_chunk() until min_time has passed; returns (chunks, seconds)."""
    sync(device)
    start = time.perf_counter()
    chunks = 0
    while True:
        run_chunk()
        chunks += 1
        if chunks % 4 == 0 or chunks >= max_chunks:
            sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= min_time or chunks >= max_chunks:
                return chunks, elapsed


def bench_functional(case, num_envs, params, device, args) -> dict:
    loop_step = make_loop_step(params)
    compiled = "compiled" in case
    step_fn = torch.compile(loop_step, dynamic=False) if compiled else loop_step
    carry = fresh_carry(num_envs, params, device)
    warmup = 8

    if compiled:
        # correctness first: the compiled step equals the eager step bit for bit
        eager = carry
        compile_start = time.perf_counter()
        for _ in range(warmup):
            carry = step_fn(*carry)
            eager = loop_step(*eager)
        sync(device)
        compile_seconds = time.perf_counter() - compile_start
        assert_same_carry(carry, eager, "compiled step")
    else:
        compile_seconds = 0.0
        for _ in range(warmup):
            carry = step_fn(*carry)
    steps_done = warmup

    if case.endswith("cuda_graph"):
        k = args.graph_steps
        static = [t.clone() for t in flatten(carry)]
        n_state = len(carry[0])

        def run_k():
            c = (type(carry[0])(*static[:n_state]), *static[n_state:])
            for _ in range(k):
                c = step_fn(*c)
            for dst, src in zip(static, flatten(c)):
                dst.copy_(src)

        before = [t.clone() for t in static]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            run_k()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        for dst, src in zip(static, before):
            dst.copy_(src)
        with torch.cuda.graph(graph):
            run_k()
        # correctness: one replay equals k eager steps from the same carry
        for dst, src in zip(static, before):
            dst.copy_(src)
        graph.replay()
        eager = (type(carry[0])(*before[:n_state]), *before[n_state:])
        for _ in range(k):
            eager = loop_step(*eager)
        replayed = (type(carry[0])(*static[:n_state]), *static[n_state:])
        assert_same_carry(replayed, eager, "CUDA graph replay")
        steps_done += k
        chunks, seconds = time_loop(graph.replay, k, device, args.min_time, args.max_steps // k)
        steps_done += chunks * k
        timed_steps = chunks * k
        carry = (type(carry[0])(*static[:n_state]), *static[n_state:])
    else:
        holder = [carry]

        def run_chunk():
            c = holder[0]
            for _ in range(16):
                c = step_fn(*c)
            holder[0] = c

        chunks, seconds = time_loop(run_chunk, 16, device, args.min_time, args.max_steps // 16)
        carry = holder[0]
        timed_steps = chunks * 16
        steps_done += timed_steps

    check = check_done_count(carry, steps_done, params)
    return {
        "steps_per_env": timed_steps,
        "seconds": seconds,
        "compile_seconds": compile_seconds,
        "check": check,
    }


def answer_policy(td):
    decision = td["decision"].squeeze(-1)
    td["action"] = torch.where(decision, td["target"], torch.zeros_like(td["target"]))
    return td


def check_torchrl_env(num_envs, params, device) -> None:
    """An answering policy earns exactly one reward per episode, at its end."""
    env = DelayedMemoryEnv(min(num_envs, 256), params.num_bits, (1, 5), params.num_distractors, device=device, seed=0)
    rollout = env.rollout(20, answer_policy, break_when_any_done=False)
    if not torch.equal(rollout["next", "reward"].bool(), rollout["next", "done"]):
        raise AssertionError("TorchRL env: rewards do not match episode ends")


def bench_torchrl(case, num_envs, params, device, args) -> dict:
    env = DelayedMemoryEnv(
        num_envs,
        params.num_bits,
        params.horizon,
        params.num_distractors,
        params.wrong_penalty,
        device=device,
        seed=0,
        validate_actions=not case.endswith("novalidate"),
    )
    gen = torch.Generator(device=device).manual_seed(0)
    if case == "torchrl_rollout":
        length = args.rollout_steps
        env.rollout(4, break_when_any_done=False)

        def run_chunk():
            env.rollout(length, break_when_any_done=False)

        chunks, seconds = time_loop(run_chunk, length, device, args.min_time, 1000)
        return {"steps_per_env": chunks * length, "seconds": seconds, "rollout_steps": length}

    holder = [env.reset()]
    done_count = torch.zeros((), dtype=torch.int64, device=device)
    steps = [0]

    def one_step():
        td = holder[0]
        td["action"] = torch.randint(0, params.num_actions, (num_envs,), device=device, generator=gen)
        stepped, holder[0] = env.step_and_maybe_reset(td)
        done_count.add_(stepped["next", "done"].sum())
        steps[0] += 1

    for _ in range(4):
        one_step()

    def run_chunk():
        for _ in range(4):
            one_step()

    start_steps = steps[0]
    chunks, seconds = time_loop(run_chunk, 4, device, args.min_time, args.max_steps // 4)
    low = params.horizon_range[0]
    expected = num_envs * (steps[0] // (low + 2)) if params.horizon_range[1] == low else None
    if expected is not None and int(done_count) != expected:
        raise AssertionError(f"TorchRL env: done count {int(done_count)} != {expected}")
    return {
        "steps_per_env": steps[0] - start_steps,
        "seconds": seconds,
        "check": {"episodes": int(done_count)},
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        # a copy of the tree without .git (the GPU machine): the caller may pass it
        return os.environ.get("GIT_COMMIT")


def write_json(report: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(json.dumps(report, indent=2) + "\n")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[4096, 65536])
    parser.add_argument("--cases", nargs="+", default=None, choices=ALL_CASES)
    parser.add_argument("--num-bits", type=int, default=4)
    parser.add_argument("--horizon", type=int, default=1000)
    parser.add_argument("--num-distractors", type=int, default=0)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds timed per case")
    parser.add_argument("--max-steps", type=int, default=200_000, help="per case, per env")
    parser.add_argument("--graph-steps", type=int, default=64, help="steps per CUDA graph")
    parser.add_argument("--rollout-steps", type=int, default=64)
    parser.add_argument("--out", default=None, help="JSON path (stdout only if absent)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    params = DelayedMemoryParams(num_bits=args.num_bits, horizon=args.horizon, num_distractors=args.num_distractors)
    cases = args.cases
    if cases is None:
        # the first CPU compile builds C++ (about a minute per size on 2 cores), then is cached
        cases = [c for c in ALL_CASES if device.type == "cuda" or "cuda_graph" not in c]

    report = {
        "benchmark": "bench_env",
        "meta": {
            "device": str(device),
            "device_name": device_name(device),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "cpu_count": os.cpu_count(),
            "git_commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python"] + sys.argv),
        },
        "config": {
            "num_bits": params.num_bits,
            "horizon": params.horizon,
            "num_distractors": params.num_distractors,
            "obs_dim": params.obs_dim,
            "observation_dtype": "float32",
            "action_dtype": "int64",
            "min_time_s": args.min_time,
            "graph_steps": args.graph_steps,
            "rollout_steps": args.rollout_steps,
        },
        "results": [],
    }
    check_torchrl_env(max(args.num_envs), params, device)
    for case in cases:
        for num_envs in args.num_envs:
            bench = bench_functional if case.startswith("functional") else bench_torchrl
            try:
                row = bench(case, num_envs, params, device, args)
            except AssertionError:
                raise
            except Exception as error:  # a backend missing here (no compiler, say)
                row = {"error": f"{type(error).__name__}: {error}"[:500]}
            row = {"case": case, "device": str(device), "num_envs": num_envs, **row}
            if "seconds" in row:
                row["env_steps_per_s"] = num_envs * row["steps_per_env"] / row["seconds"]
            report["results"].append(row)
            rate = row.get("env_steps_per_s")
            shown = f"{rate / 1e6:10.2f} M env-steps/s" if rate else row.get("error")
            print(f"{case:42s} N={num_envs:6d} {shown}", flush=True)
            # rewritten after every case, so a run cut short keeps what it measured
            if args.out:
                write_json(report, args.out)
    if not args.out:
        print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
