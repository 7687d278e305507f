"""kill -9 at random points, SIGTERM, and Ctrl-C during the final evaluation."""

import json
import os
import random
import signal
import time

import pytest

from mamba_rl.io import load_checkpoint
from mamba_rl.training import train
from mamba_rl.training import trainer as trainer_module
from mamba_rl.training.runs import SignalsRaise

from .conftest import assert_same_params, policy_params, progress_updates, tiny_config, tiny_overrides, train_process

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


def _wait_for_rows(process, run_dir, rows: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while len(progress_updates(run_dir)) < rows:
        if process.poll() is not None:
            raise AssertionError(f"train.py ended early ({process.returncode}): {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"train.py logged no {rows} rows in {timeout} s")
        time.sleep(0.02)


def test_kill_9_at_random_points_then_resume_loses_no_row_and_is_bit_identical(tmp_path):
    rng = random.Random(23)
    run = tmp_path / "run"
    updates = 30
    args = tiny_overrides(num_updates=updates)
    stale_lock_seen = False
    for _ in range(2):
        resume = (run / "checkpoint.pt").exists()
        process = train_process(["--resume", str(run)] if resume else [*args, "--run-dir", str(run)])
        # kill during the next few updates, at a random moment inside one
        _wait_for_rows(process, run, max(progress_updates(run) or [0]) + rng.randint(1, 3))
        time.sleep(rng.uniform(0.0, 0.1))
        process.send_signal(signal.SIGKILL)
        _, err = process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL, err
        stale_lock_seen |= "taking it over" in err
        if (run / "checkpoint.pt").exists():
            load_checkpoint(run / "checkpoint.pt")
    assert stale_lock_seen, "the second process must take over the lock the killed one left"
    resumed = train(tiny_config(num_updates=updates), run, resume=(run / "checkpoint.pt").exists(), verbose=False)
    full = train(tiny_config(num_updates=updates), tmp_path / "full", verbose=False)
    assert progress_updates(run) == list(range(1, updates + 1))
    assert_same_params(policy_params(full.run_dir), policy_params(resumed.run_dir))


def test_sigterm_saves_a_checkpoint_and_writes_metrics_like_ctrl_c(tmp_path):
    # regression: SIGTERM (what SLURM sends) killed the run: work since the last checkpoint lost, no metrics.json
    run = tmp_path / "run"
    process = train_process([*tiny_overrides(num_updates=500, checkpoint_interval=100), "--run-dir", str(run)])
    _wait_for_rows(process, run, 2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "SIGTERM" in err and "--resume" in err
    metrics = json.loads((run / "metrics.json").read_text())
    last = progress_updates(run)[-1]
    assert metrics["status"] == "interrupted" and metrics["updates"] == last
    assert load_checkpoint(run / "checkpoint.pt")["update"] == last
    assert not (run / ".lock").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_final_evaluation_still_writes_metrics(tmp_path, monkeypatch, signum):
    # regression: Ctrl-C during the final evaluation left no metrics.json
    def interrupted_evaluation(*args, **kwargs):
        os.kill(os.getpid(), signum)
        time.sleep(5)
        raise AssertionError("the signal did not interrupt the evaluation")

    monkeypatch.setattr(trainer_module, "evaluate_horizons", interrupted_evaluation)
    result = train(tiny_config(num_updates=2, eval_episodes=8), tmp_path / "run", verbose=False)
    assert result.status == "interrupted"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["updates"] == 2 and metrics["evaluation"] == {}
    assert load_checkpoint(tmp_path / "run")["update"] == 2


def test_signals_raise_stops_on_sigint_inherited_as_ignored():
    # regression: with SIGINT ignored by the parent (a shell's background job, a pytest-xdist worker),
    # Ctrl-C during the final evaluation did not stop it, although it stops training
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt), SignalsRaise():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
