"""examples/torchrl_ppo.py, the TorchRL-only recurrent PPO script, runs with each trunk."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "torchrl_ppo.py"


def load_script():
    spec = importlib.util.spec_from_file_location("torchrl_ppo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("env", ["CartPole-v1", "Pendulum-v1"], ids=["discrete", "continuous"])
@pytest.mark.parametrize("trunk", ["gru", "lstm", "mamba"])
def test_example_trains_a_few_batches_with_each_trunk(trunk, env, tmp_path):
    script = load_script()
    out = tmp_path / "run.json"
    args = script.parse_args(
        [
            "--env",
            env,
            "--trunk",
            trunk,
            "--hidden",
            "8",
            "--num-envs",
            "2",
            "--steps",
            "24",
            "--total-frames",
            "144",
            "--epochs",
            "1",
            "--minibatches",
            "2",
            "--json",
            str(out),
        ]
    )
    result = script.train(args)
    assert result["frames"] == 144 and len(result["curve"]) == 3
    assert json.loads(out.read_text())["trunk"] == trunk
    if env == "CartPole-v1":
        # a random CartPole policy ends episodes within 72 steps: returns are recorded
        assert sum(point["episodes"] for point in result["curve"]) > 0 and math.isfinite(result["final_return"])


def test_example_run_is_complete_when_total_frames_is_not_a_whole_number_of_batches(tmp_path):
    # the collector rounds total_frames to whole batches of 48 (a finished run may hold fewer frames than
    # asked: 159,744 of 160,000 in batches of 1,024); the grid skips only complete runs
    script = load_script()
    out = tmp_path / "run.json"
    args = script.parse_args(
        [
            "--env",
            "CartPole-v1",
            "--trunk",
            "mamba",
            "--hidden",
            "8",
            "--num-envs",
            "2",
            "--steps",
            "24",
            "--total-frames",
            "100",
            "--epochs",
            "1",
            "--minibatches",
            "2",
            "--json",
            str(out),
            "--mamba-option",
            "d_state=4",
        ]
    )
    result = script.train(args)
    assert result["frames"] % 48 == 0 and result["complete"]
    assert json.loads(out.read_text())["complete"]
    assert result["args"]["mamba_options"] == {"d_state": 4}


def test_example_rejects_a_mamba_option_that_is_not_key_value():
    script = load_script()
    with pytest.raises(SystemExit):
        script.parse_args(["--mamba-option", "d_state"])


def test_example_one_hots_a_discrete_popgym_observation():
    pytest.importorskip("popgym")
    script = load_script()
    env = script.make_env("popgym-RepeatFirstEasy-v0", 2, seed=0)
    obs = env.reset()["observation"]
    # Discrete(4) cards, one-hot, float32
    assert obs.shape == (2, 4) and obs.dtype.is_floating_point and (obs.sum(-1) == 1).all()
    env.close()


def test_grid_table_reports_mean_and_spread_over_complete_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("torchrl_ppo_grid", SCRIPT.with_name("torchrl_ppo_grid.py"))
    grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid)
    runs = [("gru", 0, 0.5, True), ("gru", 1, 0.7, True), ("mamba", 0, 0.9, True), ("mamba", 1, -5.0, False)]
    for trunk, seed, score, complete in runs:
        record = {"env": "E", "trunk": trunk, "seed": seed, "frames": 100, "final_return": score, "complete": complete}
        (tmp_path / f"E__{trunk}__{seed}.json").write_text(json.dumps(record))
    text = grid.table(tmp_path, ["E"], ["gru", "mamba"])
    # the incomplete mamba run is left out
    assert "| E | 100 | 0.600 +- 0.141 (n=2) | 0.900 +- 0.000 (n=1) |" in text
