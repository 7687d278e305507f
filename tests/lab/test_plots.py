"""State pictures: written, non-empty, correct and wrong answers split as the env scores them (issue 6)."""

import json
from dataclasses import replace

import pytest
import torch
from matplotlib.figure import Figure

from mamba_rl.config import TrainConfig
from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.envs.adapters import DelayedMemoryTask
from mamba_rl.lab import bits_right, play_episodes, rollout_with_ssm_delta, state_figure, write_state_report
from mamba_rl.lab.__main__ import main as lab_main
from mamba_rl.lab.plots import REPORT_SEED
from mamba_rl.policies import build_policy, make_actor_critic
from mamba_rl.training.evaluate import play_memory_episodes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PICTURES = ("answer_bits.png", "ssm_heatmap.png", "state_norms.png", "state_pca.png")


def assert_png(path, min_bytes=10_000):
    data = open(path, "rb").read()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) >= min_bytes, f"{path} is only {len(data)} bytes"


def test_report_writes_pictures_of_correct_and_wrong_answers(memory_policy, tmp_path):
    policy, params = memory_policy
    # trained with a delay of 10; at 40 some answers are wrong
    params = replace(params, horizon=40)
    report = write_state_report(policy, params, tmp_path, episodes=32, seed=3)
    assert sorted(report["files"]) == sorted(["report.json", *PICTURES])
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
    assert isinstance(fig, Figure) and len(fig.axes) == 3
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


def bits_policy(params: DelayedMemoryParams):
    """An untrained Mamba policy with a bits head (one logit per bit), float64, whose bits' logits
    at the query step of ``params`` vary with the cue around 0 (its head scaled up and centred),
    each bit's sign set to agree with the cue's bit in most episodes: some answers right, some
    wrong."""
    cfg = TrainConfig(
        controller="mamba",
        discrete_head="bits",
        num_bits=params.num_bits,
        horizon=params.horizon,
        num_distractors=params.num_distractors,
        d_model=16,
        d_state=4,
        num_layers=1,
        device="cpu",
        tensorboard=False,
    )
    torch.manual_seed(0)
    policy = build_policy(cfg, "cpu").double().eval()
    linear = policy.actor_head[-1]
    with torch.no_grad():
        linear.weight.mul_(30000.0)
        logits = play_memory_episodes(policy, params, 256, 0)["greedy"].logits
        linear.bias.sub_(logits.mean(0))
        target = DelayedMemoryTask(params, 256, "cpu", autoreset=False).reset(0)[0]["target"]
        # [256, num_bits]
        cue_bits = (target[:, None] >> torch.arange(params.num_bits)) & 1
        agree = ((logits - logits.mean(0) > 0).long() == cue_bits).double().mean(0)
        sign = torch.where(agree >= 0.5, 1.0, -1.0).double()
        linear.weight.mul_(sign[:, None])
        linear.bias.mul_(sign)
    return policy


def test_pictures_of_a_bits_head_answer_as_the_evaluation(tmp_path):
    params = DelayedMemoryParams(num_bits=3, horizon=1)
    policy = bits_policy(params)
    episodes, seed = 64, 5
    evaluated = play_memory_episodes(policy, params, episodes, seed, ("greedy",))["greedy"]
    played = play_episodes(policy, params, episodes, seed=seed)
    torch.testing.assert_close(played.outputs, evaluated.logits)
    assert torch.equal(played.success, evaluated.success)
    # both right and wrong answers, so that the comparison above can fail
    assert 0 < int(played.success.sum()) < episodes
    # the greedy answer is the bits whose logit is positive, not the argmax over the 3 bits' logits
    expected = ((played.outputs > 0).long() << torch.arange(3)).sum(-1)
    assert torch.equal(played.answer, expected)
    assert torch.equal(played.answer, policy.action_dist.mode(evaluated.logits))
    assert not torch.equal(played.answer, played.outputs.argmax(-1))
    # sampled, each bit from its own Bernoulli: a bit whose logit is far from 0 is the greedy one
    sampled = play_episodes(policy, params, episodes, seed=seed, greedy=False)
    shifts = torch.arange(3)
    certain = played.outputs.abs() > 12
    assert int(certain.sum()) >= episodes // 4
    assert torch.equal(
        ((sampled.answer[:, None] >> shifts) & 1)[certain], ((played.answer[:, None] >> shifts) & 1)[certain]
    )
    # the report counts the evaluation's right answers
    report = write_state_report(policy, params, tmp_path, episodes=episodes, seed=seed)
    assert report["correct"] == int(evaluated.success.sum())
    for name in PICTURES:
        assert_png(tmp_path / name)
    summary = json.loads((tmp_path / "report.json").read_text())
    right = ((played.answer ^ played.target)[:, None] >> torch.arange(3)) & 1 == 0
    assert summary["bits_right"] == pytest.approx(right.double().mean(0).tolist())


def test_state_figure_of_16_bits_draws_one_bar_per_bit():
    params = DelayedMemoryParams(num_bits=16, horizon=1)
    policy = bits_policy(params)
    fig = state_figure(policy, params, episodes=8)
    bars = [patch for patch in fig.axes[2].patches]
    assert len(bars) == 16
    played = play_episodes(policy, params, 8, seed=REPORT_SEED)
    assert [bar.get_height() for bar in bars] == pytest.approx(bits_right(played).tolist())
