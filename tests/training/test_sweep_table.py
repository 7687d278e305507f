"""``scripts/sweep_table.py``: the memory sweep's rows, its per-cell summary over seeds, its plots
and each cell's next step, from fake single-cell sweeps."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("sweep_table", ROOT / "scripts" / "sweep_table.py")
sweep_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep_table)


def _run(root, horizon, controller, seed, status, updates, evaluation=None, num_updates=4, eval_episodes=8):
    """A fake run ``root/h<H>/<controller>_<seed>/<controller>__h1-<H>__s<seed>/`` of ``updates``
    updates of 100 env-steps and 2 s each; ``evaluation`` maps a horizon to its greedy accuracy."""
    run = root / f"h{horizon}" / f"{controller}_{seed}" / f"{controller}__h1-{horizon}__s{seed}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"horizon: [1, {horizon}]\n")
    evaluation = {
        str(h): {"greedy": {"accuracy": acc}, "sampled": {"accuracy": acc / 2}} for h, acc in (evaluation or {}).items()
    }
    metrics = {
        "status": status,
        "updates": updates,
        "global_step": 100 * updates,
        "train_time_s": 2.0 * updates,
        "device_name": "FakeGPU",
        "train_accuracy_last": 0.5,
        "evaluation": evaluation,
        "config": {"horizon": [1, horizon], "num_updates": num_updates, "eval_episodes": eval_episodes},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    lines = ["update,global_step,train/accuracy,time/rollout_s,time/update_s"]
    lines += [f"{u},{100 * u},{0.1 * u},1.5,0.5" for u in range(1, updates + 1)]
    (run / "progress.csv").write_text("\n".join(lines) + "\n")
    return run


@pytest.fixture
def sweep(tmp_path):
    _run(tmp_path, 10, "mamba", 0, "completed", 4, {10: 1.0, 20: 0.9, 50: 0.5, 100: 0.25})
    _run(tmp_path, 10, "mamba", 1, "completed", 4, {10: 0.8, 20: 0.7, 50: 0.3, 100: 0.25})
    _run(tmp_path, 10, "mamba", 2, "diverged", 3)
    _run(tmp_path, 10, "gru", 0, "completed", 4, {10: 0.6, 20: 0.5})
    # an unfinished run's evaluation (an earlier piece) stays out of the summary
    _run(tmp_path, 10, "gru", 1, "time_limit", 2, {10: 0.1})
    (tmp_path / "h10" / "gru_2").mkdir()
    return tmp_path


def test_every_seed_is_a_row_with_its_accuracy_at_each_multiple(sweep):
    sweep_table.main([str(sweep)])
    with open(sweep / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["controller"], r["seed"], r["status"]) for r in rows] == [
        ("gru", "0", "completed"),
        ("gru", "1", "time_limit"),
        ("gru", "2", "no metrics.json"),
        ("mamba", "0", "completed"),
        ("mamba", "1", "completed"),
        ("mamba", "2", "diverged"),
    ]
    mamba0 = rows[3]
    assert (mamba0["greedy_H"], mamba0["sampled_H"], mamba0["greedy_2H"], mamba0["greedy_10H"]) == (
        "1.0",
        "0.5",
        "0.9",
        "0.25",
    )
    assert (mamba0["env_steps"], mamba0["train_time_s"], mamba0["device"]) == ("400", "8", "FakeGPU")
    assert rows[0]["greedy_5H"] == ""
    for name in ("accuracy_vs_horizon.png", "training_curves.png"):
        assert (sweep / name).stat().st_size > 10_000
    markdown = (sweep / "results.md").read_text()
    assert "| mamba | 10 | 50 (5H) | 2 of 3 | 0.400 | 0.300 | 0.500 |" in markdown
    assert "| gru | 10 | 10 (1H) | 1 of 3 | 0.600 | 0.600 | 0.600 |" in markdown
    assert "| gru | 10 | 50 (5H)" not in markdown


def test_training_time_sums_rollout_and_update_seconds_over_unlogged_updates(tmp_path):
    progress = tmp_path / "progress.csv"
    # logged every second update: each logged row stands for two updates of 2 s
    progress.write_text(
        "update,global_step,train/accuracy,time/rollout_s,time/update_s\n2,200,0.1,1.5,0.5\n4,400,,1.5,0.5\n6,600,0.3,1,1\n"
    )
    assert sweep_table.training_curve(progress) == ([200, 600], [4.0, 12.0], [0.1, 0.3])


def test_next_step_trains_to_the_budget_then_evaluates_once(tmp_path):
    cell = tmp_path / "h10" / "gru_0"
    assert sweep_table.next_step(cell, 4) == "train"
    run = _run(tmp_path, 10, "gru", 0, "time_limit", 2, eval_episodes=0)
    assert sweep_table.next_step(cell, 4) == "train"
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.update(status="completed", updates=4)
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert sweep_table.next_step(cell, 4) == "evaluate"
    # a larger budget goes on training
    assert sweep_table.next_step(cell, 6) == "train"
    metrics.update(evaluation={"10": {"greedy": {"accuracy": 1.0}}}, config={**metrics["config"], "eval_episodes": 8})
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert sweep_table.next_step(cell, 4) == "done"
    metrics.update(status="diverged")
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert sweep_table.next_step(cell, 4) == "failed"


def test_policy_files_are_written_for_finished_evaluated_runs_only(sweep):
    import torch

    from mamba_rl.io import load_checkpoint, save_checkpoint

    finished = sweep / "h10" / "mamba_0" / "mamba__h1-10__s0"
    unfinished = sweep / "h10" / "gru_1" / "gru__h1-10__s1"
    for run in (finished, unfinished):
        payload = {
            "config": {"horizon": [1, 10]},
            "update": 4,
            "policy": {"weight": torch.arange(6.0).view(2, 3)},
            "optimizer": {"state": {0: {"exp_avg": torch.ones(2, 3)}}},
            "collector": {"noise": torch.zeros(1000)},
        }
        save_checkpoint(payload, run / "checkpoint.pt")
    assert sweep_table.write_policies(sweep) == [finished / "policy.pt"]
    assert not (unfinished / "policy.pt").exists()
    policy = load_checkpoint(finished / "policy.pt")
    assert torch.equal(policy["policy"]["weight"], torch.arange(6.0).view(2, 3))
    assert policy["update"] == 4 and "optimizer" not in policy and "collector" not in policy
    # up to date: nothing is written again
    assert sweep_table.write_policies(sweep) == []


def test_a_checkpoint_older_than_the_finished_run_writes_no_policy(sweep, capsys):
    """A sweep folder that received a run's final tables but kept a checkpoint of an earlier
    update (a piece's checkpoint, the final one left on another machine) must not label that
    older policy as the evaluated one; a policy.pt of the final update is kept as it is."""
    import torch

    from mamba_rl.io import load_checkpoint, save_checkpoint

    run = sweep / "h10" / "mamba_0" / "mamba__h1-10__s0"
    older = {"config": {"horizon": [1, 10]}, "update": 3, "policy": {"weight": torch.zeros(2)}}
    save_checkpoint(older, run / "checkpoint.pt")
    assert sweep_table.write_policies(sweep) == []
    assert not (run / "policy.pt").exists()
    assert "update 3, the run finished at update 4" in capsys.readouterr().err
    # the final policy arrived separately (older mtime than the checkpoint): left as it is
    final = {"config": {"horizon": [1, 10]}, "update": 4, "policy": {"weight": torch.ones(2)}}
    save_checkpoint(final, run / "policy.pt")
    save_checkpoint(older, run / "checkpoint.pt")
    assert sweep_table.write_policies(sweep) == []
    assert torch.equal(load_checkpoint(run / "policy.pt")["policy"]["weight"], torch.ones(2))
