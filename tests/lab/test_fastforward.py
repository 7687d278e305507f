"""The fast-forward across a blank delay equals stepping the float64 model through every blank step."""

import math

import pytest
import torch
from torch import nn

from mamba_rl import MambaModule
from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.lab import StatePolicy
from mamba_rl.lab.fastforward import _observations, advance_ssm, fast_forward_memory, float64_policy


def stepped(policy, params, targets, horizon):
    """``(ssm after the last blank step, query logits)`` of a float64 rollout, one step at a time."""
    policy64 = float64_policy(policy)[0]
    module, head = policy64.module, policy64.head
    state = module.zero_state((len(targets),))
    _, state = module.step(_observations(params, targets, 0, horizon), state)
    blank = _observations(params, targets, 1, horizon)
    for _ in range(horizon):
        _, state = module.step(blank, state)
    features, _ = module.step(_observations(params, targets, horizon + 1, horizon), state)
    return state.ssm, head(features)


def random_policy(params, num_layers=1, **options):
    torch.manual_seed(3)
    module = MambaModule(
        input_size=params.obs_dim,
        hidden_size=12,
        d_state=5,
        num_layers=num_layers,
        in_key="obs",
        out_key="f",
        **options,
    )
    return StatePolicy(module, nn.Linear(12, params.num_actions))


@pytest.mark.parametrize("horizon", [7, 50, 300])
@pytest.mark.parametrize("init", ["mamba_ssm", "rl_dt_1e-6"])
def test_fast_forward_equals_stepping_every_blank_step(horizon, init):
    params = DelayedMemoryParams(num_bits=3, horizon=horizon)
    options = {"preset": "mamba_ssm"} if init == "mamba_ssm" else {"preset": "rl", "dt_min": 1e-6}
    policy = random_policy(params, **options)
    targets = torch.arange(params.num_actions)
    ff = fast_forward_memory(policy, params, targets, horizon)
    ssm, logits = stepped(policy, params, targets, horizon)
    assert ff.warmup == 6 and ff.ssm.dtype == torch.float64
    torch.testing.assert_close(ff.ssm, ssm, rtol=0, atol=1e-9 * ssm.abs().max().item())
    torch.testing.assert_close(ff.logits, logits, rtol=0, atol=1e-9)


@pytest.mark.parametrize("horizon", [2, 50, 300])
def test_fast_forward_of_the_trained_fixture_equals_stepping(memory_policy, horizon):
    policy, params = memory_policy
    targets = torch.arange(params.num_actions)
    ff = fast_forward_memory(policy, params, targets, horizon)
    ssm, logits = stepped(policy, params, targets, horizon)
    torch.testing.assert_close(ff.ssm, ssm, rtol=0, atol=1e-9 * ssm.abs().max().item())
    torch.testing.assert_close(ff.logits, logits, rtol=0, atol=1e-9)
    # the fixture was trained at delay 10 and answers every pattern there
    assert (fast_forward_memory(policy, params, targets, 10).actions == targets).all()


def test_limit_forgets_the_cue():
    params = DelayedMemoryParams(num_bits=2, horizon=10)
    policy = random_policy(params)
    ff = fast_forward_memory(policy, params, torch.arange(4), math.inf)
    # the fixed point -b / (a - 1) holds nothing of the cue: every pattern gets the same logits
    torch.testing.assert_close(ff.logits, ff.logits[:1].expand_as(ff.logits), rtol=0, atol=1e-9)
    far = fast_forward_memory(policy, params, torch.arange(4), 10**15)
    torch.testing.assert_close(far.ssm, ff.ssm, rtol=1e-9, atol=1e-12)


def test_advance_holds_a_state_whose_decay_is_exactly_one():
    ssm, drive = torch.tensor([2.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    held = advance_ssm(ssm, torch.zeros(1, dtype=torch.float64), drive, 10)
    assert held.item() == 2.0 + 10 * 0.5


def test_distractors_are_refused_with_the_reason():
    params = DelayedMemoryParams(num_bits=2, horizon=10, num_distractors=4)
    with pytest.raises(ValueError, match="num_distractors must be 0.*not time-invariant"):
        fast_forward_memory(random_policy(params), params, torch.arange(4), 100)


def test_a_stack_whose_later_layer_inputs_move_is_refused():
    params = DelayedMemoryParams(num_bits=2, horizon=10)
    policy = random_policy(params, num_layers=2)
    with pytest.raises(ValueError, match="layer 1's scan input .* changes between blank steps"):
        fast_forward_memory(policy, params, torch.arange(4), 100)
