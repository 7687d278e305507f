"""What a resume may change, and that a refused resume changes nothing in the run directory."""

import pytest

from mamba_rl import cli
from mamba_rl.config import ConfigError
from mamba_rl.training import train
from mamba_rl.training.runs import RESUME_MUTABLE_KEYS

from .conftest import assert_same_params, policy_params, progress_updates, snapshot, tiny_config


@pytest.fixture
def run_dir(tmp_path):
    train(tiny_config(num_updates=2), tmp_path / "run", verbose=False)
    return tmp_path / "run"


@pytest.mark.parametrize("override", ["d_model=16", "num_envs=32"])
def test_failed_resume_leaves_the_run_directory_unchanged(run_dir, override, capsys):
    # regression: config.yaml was rewritten before the checkpoint failed to load (size mismatch),
    # so every later plain --resume failed too
    before = snapshot(run_dir)
    assert cli.main(["--resume", str(run_dir), "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and override.split("=")[0] in err and "num_updates" in err
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        train(
            tiny_config(num_updates=3, **{override.split("=")[0]: int(override.split("=")[1])}),
            run_dir,
            resume=True,
            verbose=False,
        )
    assert snapshot(run_dir) == before
    assert cli.main(["--resume", str(run_dir), "--set", "num_updates=3"]) == 0
    assert progress_updates(run_dir) == [1, 2, 3]


@pytest.mark.parametrize("override", ["seed=7", "learning_rate=0.5", "lr_schedule=cosine", "gamma=0.9"])
def test_resume_refuses_keys_outside_the_list_naming_the_key_and_the_list(run_dir, override, capsys):
    before = snapshot(run_dir)
    assert cli.main(["--resume", str(run_dir), "--set", override]) == 2
    err = capsys.readouterr().err
    key = override.split("=")[0]
    assert key in err and all(name in err for name in RESUME_MUTABLE_KEYS)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize(
    "option",
    [["--config", "configs/quick_cpu.yaml"], ["--run-dir", "elsewhere"], ["--seeds", "1"], ["--controllers", "gru"]],
)
def test_resume_refuses_options_that_choose_a_new_run(run_dir, option, capsys):
    assert cli.main(["--resume", str(run_dir), *option]) == 2
    assert option[0] in capsys.readouterr().err


def test_unknown_key_in_a_runs_config_yaml_is_the_same_error_as_in_a_preset(run_dir, tmp_path, capsys):
    # regression: a TypeError traceback from TrainConfig(**values)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text() + "bogus_key: 1\n")
    assert cli.main(["--resume", str(run_dir)]) == 2
    resume_err = capsys.readouterr().err
    preset = tmp_path / "preset.yaml"
    preset.write_text("bogus_key: 1\n")
    assert cli.main(["--config", str(preset)]) == 2
    preset_err = capsys.readouterr().err
    for err in (resume_err, preset_err):
        assert "unknown config key(s) ['bogus_key']" in err and "valid keys" in err


def test_resume_may_extend_the_run_and_change_its_evaluation(run_dir):
    result = train(
        tiny_config(num_updates=4, eval_episodes=8, eval_num_envs=8, log_interval=1),
        run_dir,
        resume=True,
        verbose=False,
    )
    assert result.status == "completed" and result.metrics["updates"] == 4
    assert result.metrics["eval_accuracy_greedy"] is not None
    assert progress_updates(run_dir) == [1, 2, 3, 4]
    assert "num_updates: 4" in (run_dir / "config.yaml").read_text()


def test_resume_of_a_finished_run_evaluates_at_multiples_of_the_trained_horizon(run_dir):
    # a finished sweep cell is evaluated further by a resume that trains no more updates
    result = train(
        tiny_config(
            num_updates=2, eval_episodes=4, eval_num_envs=4, eval_horizons=[10], eval_horizon_multiples=[2, 0.4, 3]
        ),
        run_dir,
        resume=True,
        verbose=False,
    )
    # trained at the top of [1, 5]; 2 x 5 = 10 is also in eval_horizons, 0.4 x 5 = 2, 3 x 5 = 15
    assert list(result.metrics["evaluation"]) == ["5", "2", "10", "15"]
    assert all(entry["greedy"]["episodes"] == 4 for entry in result.metrics["evaluation"].values())
    assert result.status == "completed" and progress_updates(run_dir) == [1, 2]


@pytest.mark.parametrize("controller", ["mamba", "gru"])
def test_resume_after_a_crash_is_bit_identical_with_a_cosine_schedule(tmp_path, controller):
    cfg = dict(controller=controller, lr_schedule="cosine", gru_hidden_size=8, num_updates=4)
    full = train(tiny_config(**cfg), tmp_path / "full", verbose=False)

    def crash(update, info):
        if update == 3:
            raise RuntimeError("simulated crash after update 3, checkpoint at 2")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_config(**cfg, checkpoint_interval=2), tmp_path / "split", callback=crash, verbose=False)
    resumed = train(tiny_config(**cfg), tmp_path / "split", resume=True, verbose=False)
    assert_same_params(policy_params(full.run_dir), policy_params(resumed.run_dir))
    assert progress_updates(resumed.run_dir) == [1, 2, 3, 4]


def test_same_seed_gives_a_bit_identical_run(tmp_path):
    a = train(tiny_config(num_updates=2), tmp_path / "a", verbose=False)
    b = train(tiny_config(num_updates=2), tmp_path / "b", verbose=False)
    assert_same_params(policy_params(a.run_dir), policy_params(b.run_dir))
