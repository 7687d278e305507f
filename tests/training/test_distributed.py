"""One run on several processes (gloo on the CPU): the ranks stay in step, a 2-rank gradient is the
gradient of the whole batch, a resume continues bit for bit, torchrun restarts a run that lost a rank.

The processes are started with ``torch.multiprocessing.spawn`` (a file store, no port to pick) and,
for the command line, with ``python -m torch.distributed.run``; each test starts them once and
checks several properties, since a process start (importing torch) takes seconds.
"""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mamba_rl import cli
from mamba_rl.config import ConfigError, TrainConfig
from mamba_rl.io import load_checkpoint
from mamba_rl.policies import build_policy, make_train_env, memory_params
from mamba_rl.training import train
from mamba_rl.training.distributed import Ranks
from mamba_rl.training.evaluate import evaluate_env, evaluate_horizons
from mamba_rl.training.rollout import Rollout, RolloutCollector
from mamba_rl.training.trainer import ReplayModule, ppo_update, rollout_advantages
from tests.reliability.conftest import TINY as RELIABILITY_TINY

REPO = Path(__file__).resolve().parents[2]


# the reliability tests' tiny memory-task run, 8 envs per process and an 8-wide GRU
TINY = {**RELIABILITY_TINY, "num_envs": 8, "gru_hidden_size": 8}


def tiny(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, **overrides})


def _worker(rank: int, world_size: int, store: str, task, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world_size, timeout=timedelta(seconds=120)
    )
    try:
        task(Ranks(rank, world_size, rank, launched=True), *args)
    finally:
        dist.destroy_process_group()


def spawn(task, tmp_path: Path, *args, world_size: int = 2) -> None:
    """``task(ranks, *args)`` on ``world_size`` gloo processes (an assertion failing in one fails the test)."""
    mp.spawn(_worker, args=(world_size, str(tmp_path / "store"), task, args), nprocs=world_size, join=True)


def flat_params(policy) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in policy.parameters()]).clone()


def without_times(run_dir: Path) -> list[str]:
    """``progress.csv`` without its timing columns (they differ from run to run)."""
    lines = (run_dir / "progress.csv").read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, name in enumerate(header) if not name.startswith("time/")]
    return [",".join(line.split(",")[i] for i in keep) for line in lines]


# --- two ranks train one run ----------------------------------------------------------------


# the runs whose ranks are compared: the memory task with each controller, and a Gymnasium env
RUNS = {
    "mamba": dict(controller="mamba"),
    "gru": dict(controller="gru"),
    "cartpole": dict(env="CartPole-v1", policy_mask_key=None, chunk_len=8),
}


def _train_runs(ranks: Ranks, root: Path) -> None:
    for name, overrides in RUNS.items():
        seen = []
        train(
            tiny(**overrides),
            root / name,
            verbose=False,
            ranks=ranks,
            callback=lambda update, info: seen.append(flat_params(info["policy"])),
        )
        torch.save(seen, root / f"{name}_params_rank{ranks.rank}.pt")
    train(tiny(num_updates=4), root / "full", verbose=False, ranks=ranks)
    train(tiny(num_updates=2), root / "split", verbose=False, ranks=ranks)
    train(tiny(num_updates=4), root / "split", resume=True, verbose=False, ranks=ranks)


def assert_same_state(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def test_two_ranks_keep_equal_parameters_and_resume_bit_identically(tmp_path):
    spawn(_train_runs, tmp_path, tmp_path)
    for name, overrides in RUNS.items():
        rank0 = torch.load(tmp_path / f"{name}_params_rank0.pt")
        rank1 = torch.load(tmp_path / f"{name}_params_rank1.pt")
        assert len(rank0) == len(rank1) == 3
        for update, (a, b) in enumerate(zip(rank0, rank1), 1):
            assert torch.equal(a, b), f"{name}: the ranks' parameters differ after update {update}"
        assert not torch.equal(rank0[0], rank0[-1]), f"{name}: the updates changed nothing"
        # rank 0 alone wrote the run directory; the metrics count the env steps of both ranks
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["world_size"] == 2 and metrics["global_step"] == 3 * 2 * tiny(**overrides).steps_per_update
        assert len((tmp_path / name / "progress.csv").read_text().splitlines()) == 4

    full, split = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "split")
    assert full["world_size"] == 2 and len(full["rank_states"]) == 1
    # each rank stepped its own environments
    carry0, carry1 = full["collector"]["carry"], full["rank_states"][0]["collector"]["carry"]
    assert not torch.equal(carry0["obs"], carry1["obs"])
    for key in ("policy", "optimizer", "collector", "minibatch_generator", "rank_states", "update", "global_step"):
        assert_same_state(full[key], split[key], key)
    assert without_times(tmp_path / "full") == without_times(tmp_path / "split")

    # a 2-process run does not resume on 1 process: its ranks' environments and streams would be lost
    with pytest.raises(ConfigError, match="saved by a run on 2.*--nproc_per_node 2"):
        train(tiny(num_updates=5), tmp_path / "full", resume=True, verbose=False)


# --- the gradient of 2 ranks x E envs is the gradient of 1 process with 2E envs ---------------


def _env_rows(rollout: Rollout, rows: slice) -> Rollout:
    """The rollout of environments ``rows`` alone."""
    fields = {name: getattr(rollout, name) for name in Rollout.__dataclass_fields__}
    for name, value in fields.items():
        if isinstance(value, torch.Tensor):
            fields[name] = value[rows]
    fields["chunk_states"] = {name: value[:, rows] for name, value in rollout.chunk_states.items()}
    return Rollout(**fields)


def _gradient(policy, rollout, cfg, ranks=None, ddp=None) -> torch.Tensor:
    advantages, returns = rollout_advantages(rollout, cfg)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
    ppo_update(
        policy, optimizer, rollout, advantages, returns, cfg, torch.Generator().manual_seed(0), ranks=ranks, ddp=ddp
    )
    return torch.cat([p.grad.reshape(-1) for p in policy.parameters()])


def _gradients_and_evaluations(ranks: Ranks) -> None:
    envs_per_rank = 4
    rows = slice(ranks.rank * envs_per_rank, (ranks.rank + 1) * envs_per_rank)
    for controller in ("mamba", "gru"):
        for mask in ("decision", None):
            # one minibatch, one epoch, no clipping: the update's gradient is the batch's
            cfg = tiny(
                controller=controller,
                num_envs=2 * envs_per_rank,
                num_minibatches=1,
                update_epochs=1,
                max_grad_norm=1e9,
                policy_mask_key=mask,
                chunks_per_rollout=2,
            )
            torch.manual_seed(0)
            policy = build_policy(cfg, "cpu", make_train_env(cfg, 1, "cpu"))
            collector = RolloutCollector(
                policy, memory_params(cfg), cfg.num_envs, cfg.resolved_chunk_len, 2, seed=3, device="cpu"
            )
            rollout = collector.collect()
            expected = _gradient(copy.deepcopy(policy), rollout, cfg)
            mine = copy.deepcopy(policy)
            ddp = torch.nn.parallel.DistributedDataParallel(ReplayModule(mine))
            got = _gradient(mine, _env_rows(rollout, rows), cfg, ranks, ddp)
            # float32 sums in another order (per rank, then over the ranks)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7, msg=f"{controller}, mask {mask}")
            assert expected.abs().max() > 1e-3

    # evaluation split over the ranks: the numbers of one process
    cfg = tiny(horizon=5)
    torch.manual_seed(1)
    policy = build_policy(cfg, "cpu", make_train_env(cfg, 1, "cpu"))
    one = evaluate_horizons(policy, cfg, [3, 5], 7, num_envs=3, device="cpu")
    split = evaluate_horizons(policy, cfg, [3, 5], 7, num_envs=3, device="cpu", ranks=ranks)
    for horizon in one:
        for mode in ("greedy", "sampled"):
            assert split[horizon][mode] == one[horizon][mode], (horizon, mode)
    cfg = tiny(env="CartPole-v1", policy_mask_key=None, chunk_len=8)
    policy = build_policy(cfg, "cpu", make_train_env(cfg, 1, "cpu"))
    one = evaluate_env(policy, cfg, 5, num_envs=2, device="cpu")
    split = evaluate_env(policy, cfg, 5, num_envs=2, device="cpu", ranks=ranks)
    for mode in ("greedy", "sampled"):
        assert split[mode] == one[mode], mode


def test_two_rank_gradient_equals_one_process_gradient_and_evaluation_splits(tmp_path):
    spawn(_gradients_and_evaluations, tmp_path)


# --- one rank through the distributed path is the plain run -----------------------------------


def test_the_distributed_path_at_world_size_1_trains_the_plain_run(tmp_path):
    # what torchrun --nproc_per_node 1 runs: a process group of one rank (no DDP: nothing to all-reduce)
    plain = train(tiny(eval_episodes=6), tmp_path / "plain", verbose=False)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = train(tiny(eval_episodes=6), tmp_path / "ddp", verbose=False, ranks=Ranks(launched=True))
    finally:
        dist.destroy_process_group()
    assert_same_state(load_checkpoint(tmp_path / "plain")["policy"], load_checkpoint(tmp_path / "ddp")["policy"])
    assert without_times(tmp_path / "plain") == without_times(tmp_path / "ddp")
    assert ddp.metrics["evaluation"]["5"]["greedy"] == plain.metrics["evaluation"]["5"]["greedy"]


# --- torchrun: a rank killed mid-run, the job restarted, the run resumed ----------------------


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _worker_pid(agent: int, rank: int) -> int | None:
    """The pid of the torchrun worker of rank ``rank`` (read from its environment)."""
    for pid in _children(agent):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's workers through /proc")
def test_torchrun_restarts_a_run_whose_rank_died_from_its_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    args = []
    for key, value in {**TINY, "num_updates": 30, "eval_episodes": 4}.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["--max-restarts", "1", str(REPO / "train.py"), *args, "--run-dir", str(run_dir), "--auto-resume"]
    # torchrun shares its rendezvous store with the workers, and restarted workers may read the
    # previous attempt's addresses there and fail to connect; this turns the sharing off
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            # two updates logged and checkpointed
            progress = run_dir / "progress.csv"
            logged = len(progress.read_text().splitlines()) - 1 if progress.exists() else 0
            if logged >= 2 and (run_dir / "checkpoint.pt").exists():
                break
            time.sleep(0.05)
        victim = _worker_pid(process.pid, rank=1)
        assert victim is not None, "no worker of rank 1 found"
        os.kill(victim, signal.SIGKILL)
        output, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "resuming at update" in output
    updates = [int(line.split(",", 1)[0]) for line in (run_dir / "progress.csv").read_text().splitlines()[1:]]
    assert updates == list(range(1, 31)), "each update logged once, in order"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["world_size"] == 2 and metrics["updates"] == 30
    # one process cannot continue it
    assert cli.main(["--resume", str(run_dir), "--set", "num_updates=31"]) == 2
