"""The distractor probe: the state under other distractors vs under another cue."""

import json

import pytest
import torch
from torch import nn

from mamba_rl import MambaModule
from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.lab import StatePolicy, distractor_probe, write_state_report
from mamba_rl.policies.heads import BitsHead
from tests.lab.test_plots import assert_png

PARAMS = DelayedMemoryParams(num_bits=3, horizon=7, num_distractors=4)


def small_policy(blind: bool, bits_head: bool = False) -> StatePolicy:
    """A random policy on ``PARAMS``; ``blind``: its input projection ignores the distractor channels."""
    torch.manual_seed(0)
    module = MambaModule(PARAMS.obs_dim, 16, d_state=4, in_key="observation", out_key="features")
    with torch.no_grad():
        module.input_proj.weight.mul_(10.0)
        if blind:
            module.input_proj.weight[:, PARAMS.num_bits + 2 :] = 0.0
    head = nn.Linear(16, PARAMS.num_bits if bits_head else PARAMS.num_actions)
    return StatePolicy(module.eval(), head, BitsHead(PARAMS.num_bits) if bits_head else None)


def test_a_memory_blind_to_the_distractor_channels_shows_no_distance():
    probe = distractor_probe(small_policy(blind=True), PARAMS, pairs=12, seed=3)
    # the variants differ from their episode only in the distractor channels or only in the cue
    assert probe.other_distractors.abs().max() == 0
    assert probe.outputs_other_distractors.abs().max() == 0
    assert bool(probe.same_answer_other_distractors.all())
    after_cue = probe.steps >= 1
    # another code is never the episode's own: the state moves from the cue step on, in every pair
    assert bool((probe.other_cue[after_cue] > 0).all())
    assert bool((probe.other_cue[~after_cue] == 0).all())
    summary = probe.at_query()
    assert summary["state_distance_ratio"] == 0.0 and summary["pairs"] == 12


def test_a_state_that_reads_the_distractors_moves_with_them():
    probe = distractor_probe(small_policy(blind=False, bits_head=True), PARAMS, pairs=12, seed=3, stride=2)
    assert probe.steps.tolist() == [0, 2, 4, 6, 8, 9]
    after_cue = probe.steps >= 1
    assert bool((probe.other_distractors[after_cue] > 0).all())
    assert bool((probe.outputs_other_distractors > 0).all())
    assert probe.at_query()["state_distance_ratio"] > 0


def test_the_probe_names_what_it_cannot_probe():
    policy = small_policy(blind=True)
    with pytest.raises(ValueError, match="num_distractors must be >= 1"):
        distractor_probe(policy, DelayedMemoryParams(num_bits=3, horizon=7), pairs=2)
    with pytest.raises(ValueError, match="one horizon"):
        distractor_probe(policy, DelayedMemoryParams(num_bits=3, horizon=(2, 7), num_distractors=4), pairs=2)
    with pytest.raises(ValueError, match="pairs must be an int >= 1"):
        distractor_probe(policy, PARAMS, pairs=0)


def test_the_report_of_a_task_with_distractors_draws_the_probe(tmp_path):
    report = write_state_report(small_policy(blind=True), PARAMS, tmp_path, episodes=8)
    assert "distractors.png" in report["files"]
    assert_png(tmp_path / "distractors.png")
    summary = json.loads((tmp_path / "report.json").read_text())
    assert summary["distractors"]["pairs"] == 4
    assert summary["distractors"]["state_distance_other_distractors"] == 0.0
    assert summary["distractors"]["state_distance_other_cue"] > 0
