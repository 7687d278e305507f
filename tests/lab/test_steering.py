"""Steering: a change of the SSM state, optimised through the acting code path, keeps its promise in a
real rollout (issue 6)."""

import pytest
import torch
from torchrl.envs.utils import step_mdp

from mamba_rl import MambaModule
from mamba_rl.envs import DelayedMemoryEnv, DelayedMemoryParams
from mamba_rl.lab import StatePolicy, rollout_with_ssm_delta, steer_ssm_state, steered_logits
from mamba_rl.module import MambaState
from mamba_rl.policies.heads import BitsHead
from tests.conftest import assert_close

NUM_ENVS = 48
SEED = 7


def steer(policy, params, at_step, path):
    before = rollout_with_ssm_delta(policy, params, NUM_ENVS, SEED, at_step)
    # always a wrong answer, so a steered answer cannot be the memory's own
    code = (before.target + 1) % params.num_actions
    steered = steer_ssm_state(
        policy,
        before.state_at_step,
        before.observations[:, at_step:],
        code,
        query_index=before.query_step - at_step,
        path=path,
    )
    return before, code, steered


@pytest.mark.parametrize("path", ["step", "sequence"])
def test_steered_state_makes_a_real_rollout_answer_the_chosen_code(memory_policy, path):
    policy, params = memory_policy
    at_step = 6  # the middle of the delay: cue at 0, query at 11
    before, code, steered = steer(policy, params, at_step, path)
    assert before.success.all(), "the fixture policy answers every unsteered episode right"
    assert steered.success.float().mean() >= 0.95, f"optimiser reached the code in {steered.success.float().mean()}"
    after = rollout_with_ssm_delta(policy, params, NUM_ENVS, SEED, at_step, delta_ssm=steered.delta_ssm)
    assert torch.equal(after.answer, steered.answer), "the rollout must give the answer the optimiser promised"
    assert torch.equal(after.answer == code, steered.success)
    # the env scores against the true code: every steered episode is now wrong
    assert not after.success[steered.success].any()
    if path == "step":
        # the very code path that acts: the same logits, bit for bit
        assert torch.equal(after.logits, steered.logits)
    else:
        assert_close(after.logits, steered.logits)
    assert (steered.margin[steered.success] >= 2.0 - 1e-4).all()


def test_steered_state_keeps_its_promise_in_a_torchrl_env_rollout(memory_policy):
    """The TorchRL faces: DelayedMemoryEnv and the module's TensorDict step mode, with the change
    written into the TensorDict's state entry."""
    policy, params = memory_policy
    at_step = 4
    before, code, steered = steer(policy, params, at_step, "step")
    module, head = policy.module, policy.head
    env = DelayedMemoryEnv(NUM_ENVS, num_bits=params.num_bits, horizon=params.horizon, seed=SEED)
    td = env.reset()
    td["is_init"] = torch.ones(NUM_ENVS, 1, dtype=torch.bool)
    answers = None
    with torch.no_grad():
        for t in range(params.max_episode_steps):
            if t == at_step:
                td[module.ssm_key] = td[module.ssm_key] + steered.delta_ssm
            td = module(td)
            td["action"] = head(td["features"]).argmax(-1)
            decision = td["decision"].squeeze(-1)
            answers = td["action"].clone() if answers is None else torch.where(decision, td["action"], answers)
            td = env.step(td)
            td = step_mdp(td, keep_other=True, exclude_action=False)
            td["is_init"] = torch.zeros(NUM_ENVS, 1, dtype=torch.bool)
    assert torch.equal(td["target"], before.target)
    assert torch.equal(answers, steered.answer)


def test_gradients_reach_an_injected_state():
    """Regression (the project's origin): in-place cache updates made gradients with respect to an
    injected state impossible. The steering objective is differentiable in the change, through
    both paths, and the gradient is right (gradcheck, float64)."""
    torch.manual_seed(0)
    module = MambaModule(
        4, 6, num_layers=2, d_state=3, in_key="obs", out_key="feat", backend="torch", dtype=torch.float64
    )
    head = torch.nn.Linear(6, 3, dtype=torch.float64)
    policy = StatePolicy(module, head)
    obs = torch.randn(2, 5, 4, dtype=torch.float64)
    zero = module.zero_state((2,))
    state = MambaState(
        torch.randn(zero.ssm.shape, dtype=torch.float64), torch.randn(zero.conv.shape, dtype=torch.float64)
    )
    query = torch.tensor([4, 2])
    for path in ("step", "sequence"):
        delta = torch.zeros_like(state.ssm, requires_grad=True)
        assert torch.autograd.gradcheck(lambda d: steered_logits(policy, state, d, obs, query, path), (delta,))
    step = steered_logits(policy, state, state.ssm * 0.1, obs, query, "step")
    sequence = steered_logits(policy, state, state.ssm * 0.1, obs, query, "sequence")
    assert_close(step, sequence)


def test_steering_only_the_chosen_layers():
    torch.manual_seed(0)
    module = MambaModule(4, 8, num_layers=2, d_state=4, in_key="obs", out_key="feat", backend="torch")
    policy = StatePolicy(module, torch.nn.Linear(8, 4))
    obs = torch.randn(3, 4, 4)
    steered = steer_ssm_state(
        policy, module.zero_state((3,)), obs, torch.tensor([0, 1, 2]), layers=[1], max_iterations=5
    )
    assert steered.delta_ssm[:, 0].abs().max() == 0
    assert steered.delta_ssm[:, 1].abs().max() > 0


def test_rollout_rejects_a_change_at_the_reset_step(memory_policy):
    policy, params = memory_policy
    with pytest.raises(ValueError, match="at_step"):
        rollout_with_ssm_delta(policy, params, 4, 0, at_step=0)
    with pytest.raises(ValueError, match="delta_ssm"):
        rollout_with_ssm_delta(policy, params, 4, 0, at_step=2, delta_ssm=torch.zeros(3, 1, 64, 8))


def test_a_bits_head_rollout_answers_its_positive_bits_and_steering_refuses_it():
    torch.manual_seed(0)
    module = MambaModule(5, 8, d_state=4, in_key="observation", out_key="features", backend="torch")
    head = torch.nn.Linear(8, 3)
    with torch.no_grad():
        head.weight.mul_(30.0)
    policy = StatePolicy(module, head, BitsHead(3))
    params = DelayedMemoryParams(num_bits=3, horizon=4)
    rolled = rollout_with_ssm_delta(policy, params, 16, SEED, at_step=2)
    expected = ((rolled.logits > 0).long() << torch.arange(3)).sum(-1)
    assert torch.equal(rolled.answer, expected)
    assert torch.equal(rolled.success, rolled.answer == rolled.target)
    with pytest.raises(TypeError, match="BitsHead"):
        steer_ssm_state(policy, rolled.state_at_step, rolled.observations[:, 2:], rolled.target)
