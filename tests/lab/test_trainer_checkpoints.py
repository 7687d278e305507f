"""The state lab on the trainer's checkpoints: loading, and ``mamba-rl-eval --plot-states`` (issue 6)."""

import torch

from mamba_rl import config, evaluate, io
from mamba_rl.lab import StatePolicy, load_policy, trace


def write_checkpoint(tmp_path, controller="mamba"):
    cfg = config.TrainConfig(num_bits=2, horizon=6, controller=controller, d_model=16, device="cpu")
    torch.manual_seed(0)
    policy = evaluate.build_policy(cfg, "cpu")
    path = tmp_path / "checkpoint.pt"
    io.save_checkpoint({"config": config.config_to_dict(cfg), "policy": policy.state_dict(), "update": 3}, path)
    return path, policy


def test_lab_loads_a_trainer_checkpoint_and_its_task(tmp_path):
    path, policy = write_checkpoint(tmp_path)
    loaded, params, info = load_policy(tmp_path)
    assert isinstance(loaded, StatePolicy)
    assert (params.num_bits, params.horizon) == (2, 6)
    assert info["update"] == 3
    obs = torch.randn(3, 8, params.obs_dim)
    reset = torch.zeros(3, 8, dtype=torch.bool)
    reset[:, 0] = True
    logits, _, _ = policy.sequence(obs, policy.zero_state(3), reset)
    torch.testing.assert_close(loaded.head(trace(loaded, obs, reset=reset).out).transpose(0, 1), logits)


def test_eval_plot_states_writes_pictures_per_horizon(tmp_path, capsys):
    path, _ = write_checkpoint(tmp_path)
    out = tmp_path / "states"
    code = evaluate.main(
        [
            "--checkpoint",
            str(path),
            "--horizons",
            "4",
            "9",
            "--episodes",
            "16",
            "--device",
            "cpu",
            "--modes",
            "greedy",
            "--plot-states",
            str(out),
        ]
    )
    assert code == 0
    for horizon in (4, 9):
        for name in ("ssm_heatmap.png", "state_norms.png", "state_pca.png", "report.json"):
            assert (out / f"horizon_{horizon}" / name).stat().st_size > 0
    assert "state pictures, horizon 9" in capsys.readouterr().out


def test_eval_plot_states_refuses_a_gru_policy(tmp_path, capsys):
    path, _ = write_checkpoint(tmp_path, controller="gru")
    code = evaluate.main(
        [
            "--checkpoint",
            str(path),
            "--horizons",
            "4",
            "--episodes",
            "4",
            "--device",
            "cpu",
            "--plot-states",
            str(tmp_path / "states"),
        ]
    )
    assert code == 2
    assert "needs a Mamba policy" in capsys.readouterr().err


def test_lab_policy_file_rebuilds_the_module_config_and_parameters(tmp_path):
    from torch import nn

    from mamba_rl import MambaModule
    from mamba_rl.lab.policy import save_lab_policy

    torch.manual_seed(0)
    module = MambaModule(
        5, 8, 2, d_state=4, expand=3, norm="layernorm", bias=True, in_key="observation", out_key="features"
    )
    head = nn.Linear(8, 4)
    path = save_lab_policy(tmp_path / "policy.pt", module, head)
    loaded, _, _ = load_policy(path)
    shape_fields = ("d_model", "num_layers", "d_state", "d_conv", "expand", "conv_bias", "bias", "start_marker", "norm")
    assert all(getattr(loaded.module.config, f) == getattr(module.config, f) for f in shape_fields)
    for name, value in module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[name], value), name
