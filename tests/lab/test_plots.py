"""State pictures: written, non-empty, correct and wrong answers split as the env scores them (issue 6)."""

import json
from dataclasses import replace

import torch
from matplotlib.figure import Figure

from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.lab import play_episodes, rollout_with_ssm_delta, state_figure, write_state_report
from mamba_rl.lab.__main__ import main as lab_main
from mamba_rl.policies import make_actor_critic

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PICTURES = ("ssm_heatmap.png", "state_norms.png", "state_pca.png")


def assert_png(path, min_bytes=10_000):
    data = open(path, "rb").read()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) >= min_bytes, f"{path} is only {len(data)} bytes"


def test_report_writes_pictures_of_correct_and_wrong_answers(memory_policy, tmp_path):
    policy, params = memory_policy
    # trained with a delay of 10; at 40 some answers are wrong
    params = replace(params, horizon=40)
    report = write_state_report(policy, params, tmp_path, episodes=32, seed=3)
    assert sorted(report["files"]) == ["report.json", *sorted(PICTURES)]
    for name in PICTURES:
        assert_png(tmp_path / name)
    summary = json.loads((tmp_path / "report.json").read_text())
    assert summary["correct"] + summary["wrong"] == 32
    assert summary["correct"] > 0 and summary["wrong"] > 0
    # the traced answers are those of stepping the policy, as mamba-rl-eval does
    stepped = rollout_with_ssm_delta(policy, params, 32, seed=3, at_step=1)
    assert summary["correct"] == int(stepped.success.sum())


def test_report_without_wrong_answers_still_writes_both_panels(memory_policy, tmp_path):
    policy, params = memory_policy
    report = write_state_report(policy, params, tmp_path, episodes=16)
    assert report["wrong"] == 0 and report["accuracy"] == 1.0
    for name in PICTURES:
        assert_png(tmp_path / name)


def test_pictures_of_a_horizon_range_and_a_strided_trace(memory_policy, tmp_path):
    policy, params = memory_policy
    params = replace(params, horizon=(4, 30))
    report = write_state_report(policy, params, tmp_path, episodes=24, stride=3)
    for name in PICTURES:
        assert_png(tmp_path / name)
    assert report["episodes"] == 24


def test_play_episodes_scores_each_episode_at_its_own_query_step(memory_policy):
    policy, params = memory_policy
    params = replace(params, horizon=(5, 15))
    played = play_episodes(policy, params, 20, seed=1)
    stepped = rollout_with_ssm_delta(policy, params, 20, seed=1, at_step=1)
    assert torch.equal(played.target, stepped.target)
    assert torch.equal(played.answer, stepped.answer)
    assert torch.equal(played.success, stepped.success)
    assert torch.equal(played.query_step, stepped.query_step)


def test_state_figure_is_a_figure_tensorboard_takes(memory_policy, tmp_path):
    policy, params = memory_policy
    policy.module.train()
    fig = state_figure(policy, params, episodes=8)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert policy.module.training, "state_figure must restore the policy's training mode"
    policy.module.eval()
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(tmp_path) as writer:
        writer.add_figure("states/summary", fig, global_step=0)
    assert any(p.name.startswith("events.out.tfevents") and p.stat().st_size > 10_000 for p in tmp_path.iterdir())


def test_report_of_an_untrained_trainer_actor_critic(tmp_path):
    params = DelayedMemoryParams(num_bits=2, horizon=5)
    policy = make_actor_critic(
        "mamba", obs_dim=params.obs_dim, num_actions=params.num_actions, d_model=16, num_layers=2
    )
    report = write_state_report(policy, params, tmp_path, episodes=8)
    for name in PICTURES:
        assert_png(tmp_path / name)
    assert report["episodes"] == 8


def test_lab_report_command(tmp_path, capsys):
    from tests.lab.conftest import FIXTURE

    assert (
        lab_main(["report", "--checkpoint", str(FIXTURE), "--out", str(tmp_path), "--episodes", "8", "--horizon", "20"])
        == 0
    )
    assert "of 8 episodes" in capsys.readouterr().out
    for name in PICTURES:
        assert_png(tmp_path / name)
