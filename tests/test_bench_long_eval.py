"""benchmarks/bench_long_eval.py: its warm-up compiles every shape the timed evaluations run.

Triton compiles a kernel per shape (and stride class), so a block shape that only the timed run
sees puts its compilation into the timing. Nothing here is timed: the trunk's calls are recorded.
"""

import importlib.util
import pathlib

import torch

from mamba_rl.config import TrainConfig
from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.policies import build_policy
from mamba_rl.training import evaluate
from mamba_rl.training.evaluate import play_memory_episodes

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_long_eval.py"
_spec = importlib.util.spec_from_file_location("bench_long_eval", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

EPISODES = 3


def tiny_policy():
    cfg = TrainConfig(
        controller="mamba", num_bits=2, horizon=6, d_model=8, d_state=4, num_layers=1, device="cpu", tensorboard=False
    )
    torch.manual_seed(0)
    return build_policy(cfg, "cpu").eval()


def params_at(horizon: int) -> DelayedMemoryParams:
    return DelayedMemoryParams(num_bits=2, horizon=horizon)


def record_calls(policy, monkeypatch):
    """The set of ``(kind, shape, reset strides)`` of the trunk's sequence calls and the policy's steps."""
    calls = set()
    trunk = policy.actor_trunk
    sequence, step = trunk.sequence, policy.step

    def recording_sequence(x, state, reset):
        calls.add(("sequence", tuple(x.shape), tuple(reset.stride())))
        return sequence(x, state, reset)

    def recording_step(obs, state, reset, **kwargs):
        calls.add(("step", tuple(obs.shape), tuple(reset.stride())))
        return step(obs, state, reset, **kwargs)

    monkeypatch.setattr(trunk, "sequence", recording_sequence)
    monkeypatch.setattr(policy, "step", recording_step)
    return calls


def test_warm_up_runs_every_block_shape_of_the_timed_evaluations(monkeypatch):
    # 16 steps per default block for 3 episodes: the horizons below span one to seven blocks
    monkeypatch.setitem(evaluate.BLOCK_PAIRS, "cpu", 16 * EPISODES)
    args = bench.make_parser().parse_args(
        ["--device", "cpu", "--episodes", str(EPISODES), "--out", "unused.json"]
        + ["--step-horizons", "5", "40", "100", "--block-horizons", "90"]
        + ["--block-steps", "7", "13", "16", "--sweep-horizon", "61"]
    )
    default = evaluate.default_block_steps(EPISODES, "cpu")
    runs = bench.block_runs(args, default)
    assert runs == [(5, None), (40, None), (100, None), (61, None), (61, 7), (61, 13), (90, None)]
    policy = tiny_policy()
    calls = record_calls(policy, monkeypatch)
    bench.warm_up(policy, params_at, runs, EPISODES, 777, torch.device("cpu"), step_path=True)
    warmed = set(calls)
    calls.clear()
    for horizon, block_steps in runs:
        play_memory_episodes(policy, params_at(horizon), EPISODES, 777, bench.MODES, "cpu", block_steps=block_steps)
    timed_blocks = set(calls)
    calls.clear()
    for mode in bench.MODES:
        bench.run_steps(policy, params_at(40), EPISODES, 777, torch.device("cpu"), mode)
    timed_steps = set(calls)
    assert timed_blocks <= warmed, f"block shapes the warm-up missed: {sorted(timed_blocks - warmed)}"
    assert timed_steps <= warmed, f"step shapes the warm-up missed: {sorted(timed_steps - warmed)}"
    # the timed runs hold several block shapes, each a (block size, last block) pair of a plan
    lengths = {shape[1] for kind, shape, _ in timed_blocks}
    assert lengths == {6, 7, 10, 11, 12, 13, 15, 16}, lengths
    # the warm-up is short: one or two blocks per distinct plan end
    for horizon, block_steps in bench.warm_up_horizons(params_at, runs, EPISODES, "cpu"):
        assert len(evaluate.memory_blocks(params_at(horizon), EPISODES, "cpu", block_steps)) <= 2


def test_one_small_warm_up_misses_the_timed_block_shapes(monkeypatch):
    # the property the test above guards: a warm-up at another batch and horizon compiles other shapes
    monkeypatch.setitem(evaluate.BLOCK_PAIRS, "cpu", 16 * EPISODES)
    policy = tiny_policy()
    calls = record_calls(policy, monkeypatch)
    play_memory_episodes(policy, params_at(10), 8, 777, bench.MODES, "cpu")
    warmed = set(calls)
    calls.clear()
    play_memory_episodes(policy, params_at(40), EPISODES, 777, bench.MODES, "cpu")
    assert not set(calls) <= warmed
