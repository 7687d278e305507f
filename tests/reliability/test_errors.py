"""A user's mistake is one ``error:`` line naming the argument, what was expected and what came;
divergence and a wall-clock stop say plainly what happened and what to do."""

import json

import pytest
import torch

from mamba_rl import cli
from mamba_rl.config import ConfigError, check_machine, load_config
from mamba_rl.training import TrainingDiverged, train
from mamba_rl.training import trainer as trainer_module

from .conftest import REPO, tiny_config, tiny_overrides


@pytest.mark.parametrize(
    "override, message",
    [
        ("device=cuda:abc", "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ("device=tpu", "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ("learning_rate=1e300", "learning_rate must be in (0, 1.0]"),
        ("dt_max=.inf", "dt_max must be a finite float >= dt_min=0.001, got inf"),
        ("dt_min=1e-50", "dt_min must give a finite initial step in float32"),
        ("dt_init_floor=1e-50", "dt_init_floor must give a finite initial step in float32"),
        ("dt_max=1e39", "dt_max must give a finite initial step in float32"),
        ("eval_horizon_multiples=[2, 0]", "eval_horizon_multiples must be finite numbers > 0, got [2.0, 0.0]"),
        ("eval_horizon_multiples=[.nan]", "eval_horizon_multiples must be finite numbers > 0"),
        ("eval_horizon_multiples=[0.001]", "0.001 x the trained horizon 50 rounds to 0 steps"),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(override, message, capsys):
    assert cli.main(["--set", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["mamba_backend=triton"], "mamba_backend='triton' needs a CUDA device (no CUDA on this machine)"),
        (["controller=gru", "gru_backend=triton"], "gru_backend='triton' needs a CUDA device"),
        (["device=cuda"], "device='cuda' but CUDA is not available on this machine"),
        (["device=cuda:1"], "device='cuda:1' but CUDA is not available on this machine"),
    ],
)
def test_cuda_only_settings_on_a_machine_without_cuda_fail_before_the_run_starts(
    tmp_path, monkeypatch, capsys, overrides, message
):
    # regression: Triton's "0 active drivers" from deep inside the first forward pass
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    sets = [arg for override in overrides for arg in ("--set", override)]
    assert cli.main([*tiny_overrides(), *sets, "--run-dir", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    # the Triton interpreter runs the kernels on the CPU
    if "mamba_backend=triton" in overrides:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        check_machine(load_config(None, overrides))


def test_user_errors_during_setup_are_one_line_not_tracebacks(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main([*tiny_overrides(num_updates=1), "--run-dir", str(run)]) == 0
    capsys.readouterr()
    # an existing run directory
    assert cli.main([*tiny_overrides(num_updates=1), "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already holds a run" in err and "--resume" in err
    # a horizon above the env's maximum
    assert cli.main([*tiny_overrides(horizon=3_000_000_000), "--run-dir", str(tmp_path / "h")]) == 1
    assert capsys.readouterr().err.startswith("error: horizon")
    # a run directory that cannot be created (a file in the way)
    (tmp_path / "file").write_text("")
    assert cli.main([*tiny_overrides(), "--run-dir", str(tmp_path / "file" / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    # a resume of a directory without a run
    assert cli.main(["--resume", str(tmp_path / "nothing")]) == 2
    assert "no config.yaml" in capsys.readouterr().err


def _diverging_update(*args, **kwargs):
    nan = torch.tensor(float("nan"))
    return {
        "losses/loss": nan,
        "losses/policy": nan,
        "losses/value": nan,
        "losses/entropy": nan,
        "losses/approx_kl": nan,
        "losses/clip_fraction": nan,
        "losses/grad_norm": nan,
    }


def test_divergence_at_update_1_does_not_advise_a_resume(tmp_path, monkeypatch, capsys):
    # regression: the message advised --resume although no checkpoint existed, and that resume failed
    monkeypatch.setattr(trainer_module, "ppo_update", _diverging_update)
    with pytest.raises(TrainingDiverged) as info:
        train(tiny_config(), tmp_path / "run", verbose=False)
    message = str(info.value)
    assert "update 1" in message and "no checkpoint had been saved yet" in message and "--resume" not in message
    assert "learning_rate" in message
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "diverged"
    assert cli.main([*tiny_overrides(), "--run-dir", str(tmp_path / "cli")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: non-finite loss at update 1") and "Traceback" not in err


def test_a_wall_clock_stop_is_reported_as_not_finished(tmp_path, capsys):
    # regression: a preset cut short by max_wall_time_s printed its table as if done, exit 0
    assert cli.main([*tiny_overrides(num_updates=50, max_wall_time_s=1e-3), "--run-dir", str(tmp_path / "run")]) == 3
    err = capsys.readouterr().err
    assert "NOT FINISHED: stopped by max_wall_time_s=0.001 after 1 of 50 updates" in err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "time_limit"


@pytest.mark.parametrize("preset", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_presets_stop_on_updates_or_target_not_on_the_machines_speed(preset):
    # regression: quick_cpu stopped on max_wall_time_s=250, so its result depended on the CPU's load
    cfg = load_config(preset)
    assert cfg.max_wall_time_s is None or cfg.max_wall_time_s >= 1800, "a wall-clock limit is only a safety net"


def test_device_index_and_learning_rate_ranges_in_the_api():
    with pytest.raises(ConfigError, match="got 'cuda:abc'"):
        tiny_config(device="cuda:abc")
    with pytest.raises(ConfigError, match="learning_rate"):
        tiny_config(learning_rate=2.0)
    assert tiny_config(device="cuda:3").device == "cuda:3"
