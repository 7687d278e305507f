"""A run directory has one owner at a time; sweeps add rows and never drop them."""

import csv

import pytest

from mamba_rl import cli
from mamba_rl.training import run_sweep, train
from mamba_rl.training.runs import RunDirLocked, RunLock

from .conftest import progress_updates, tiny_config, tiny_overrides


def test_a_second_run_into_a_locked_run_directory_fails_and_writes_nothing(tmp_path, capsys):
    # regression: two runs into one directory both exited 0 with their progress.csv rows interleaved
    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(RunDirLocked, match=f"{run} is in use by another run \\(pid "):
            train(tiny_config(), run, verbose=False)
        assert cli.main([*tiny_overrides(), "--run-dir", str(run)]) == 1
        assert "error: " in capsys.readouterr().err
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    assert not (run / ".lock").exists()
    train(tiny_config(num_updates=1), run, verbose=False)
    assert progress_updates(run) == [1]


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    # what a killed owner leaves: the file with its pid, no flock held (the kernel dropped it)
    (run / ".lock").write_text("pid 999999 on somehost\n")
    train(tiny_config(num_updates=1), run, verbose=False)
    assert "pid 999999 on somehost" in capsys.readouterr().err
    assert not (run / ".lock").exists()


def _rows(sweep_dir):
    with open(sweep_dir / "results.csv", newline="") as handle:
        return [(row["controller"], row["horizon"], row["seed"]) for row in csv.DictReader(handle)]


def test_a_second_sweep_into_the_same_directory_adds_rows(tmp_path, capsys):
    # regression: the second sweep's results.csv/results.md replaced the first one's
    base = tiny_config(num_updates=1, eval_episodes=4, eval_num_envs=4)
    run_sweep(base, ["mamba"], [3], [0], tmp_path, verbose=False)
    run_sweep(base, ["mamba"], [4], [0], tmp_path, verbose=False)
    assert _rows(tmp_path) == [("mamba", "3", "0"), ("mamba", "4", "0")]
    # the same cell again: its finished run is reused, its row kept once
    before = (tmp_path / "mamba__h1-3__s0" / "checkpoint.pt").read_bytes()
    run_sweep(base, ["mamba"], [3], [0], tmp_path, verbose=True)
    assert "reused" in capsys.readouterr().err
    assert (tmp_path / "mamba__h1-3__s0" / "checkpoint.pt").read_bytes() == before
    assert sorted(_rows(tmp_path)) == [("mamba", "3", "0"), ("mamba", "4", "0")]
    assert (tmp_path / "results.md").read_text().count("| mamba |") == 4
    # a cell whose run went on for fewer updates than asked is resumed, not trained again
    run_sweep(
        tiny_config(num_updates=2, eval_episodes=4, eval_num_envs=4), ["mamba"], [4], [0], tmp_path, verbose=False
    )
    assert progress_updates(tmp_path / "mamba__h1-4__s0") == [1, 2]
    assert len(_rows(tmp_path)) == 2


def test_a_sweep_folder_moved_elsewhere_keeps_one_row_per_run(tmp_path):
    # regression: a sweep resumed from another path (a GPU machine's runs/ copied into the
    # repository) matched its rows by the full run_dir string and listed a resumed run twice
    base = tiny_config(num_updates=1, eval_episodes=4, eval_num_envs=4)
    run_sweep(base, ["mamba"], [3], [0], tmp_path / "first", verbose=False)
    (tmp_path / "first").rename(tmp_path / "moved")
    run_sweep(base, ["mamba"], [3], [0], tmp_path / "moved", verbose=False)
    assert _rows(tmp_path / "moved") == [("mamba", "3", "0")]


def test_a_second_env_sweep_into_the_same_directory_adds_rows_and_reuses_finished_runs(tmp_path, capsys):
    # regression: the env sweep rewrote results.csv with only its own rows and refused a finished cell
    from mamba_rl.config import TrainConfig
    from mamba_rl.training.env_sweep import run_env_sweep

    base = TrainConfig(
        env="CartPole-v1",
        controller="gru",
        gru_hidden_size=8,
        num_envs=2,
        chunk_len=8,
        num_minibatches=1,
        device="cpu",
        num_updates=1,
        eval_episodes=2,
        eval_num_envs=2,
        progress_bar=False,
        tensorboard=False,
    )
    run_env_sweep(base, ["gru"], [0], tmp_path, verbose=False)
    run_env_sweep(base, ["gru"], [1], tmp_path, verbose=False)
    with open(tmp_path / "results.csv", newline="") as handle:
        assert [(row["controller"], row["seed"]) for row in csv.DictReader(handle)] == [("gru", "0"), ("gru", "1")]
    before = (tmp_path / "gru__s0" / "checkpoint.pt").read_bytes()
    run_env_sweep(base, ["gru"], [0], tmp_path, verbose=True)
    assert "reused" in capsys.readouterr().err
    assert (tmp_path / "gru__s0" / "checkpoint.pt").read_bytes() == before
    with open(tmp_path / "results.csv", newline="") as handle:
        assert sorted(row["seed"] for row in csv.DictReader(handle)) == ["0", "1"]
