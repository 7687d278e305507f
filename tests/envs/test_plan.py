"""The memory task's plan (its next steps before any action) against its step loop, bit for bit."""

import pytest
import torch

from mamba_rl.envs import DelayedMemoryParams, DelayedMemoryState, delayed_memory_states_ahead, delayed_memory_step
from mamba_rl.envs.adapters import DelayedMemoryTask

CASES = {
    "h1": dict(horizon=1),
    "h7-distractors3": dict(horizon=7, num_distractors=3),
    "range1-9-active2": dict(horizon=(1, 9), active_bits=2),
    "log-uniform1-60-distractors40": dict(horizon=(1, 60), horizon_sampling="log_uniform", num_distractors=40),
    "range2-5-penalty": dict(horizon=(2, 5), wrong_penalty=0.5),
}


def _params(case):
    return DelayedMemoryParams(num_bits=3, **CASES[case])


@pytest.mark.parametrize("autoreset", [True, False], ids=["autoreset", "no-autoreset"])
@pytest.mark.parametrize("steps", [1, 2, 63])
@pytest.mark.parametrize("case", list(CASES))
def test_plan_gives_the_step_loops_observations_flags_state_and_rewards(case, steps, autoreset):
    """From a state mid-episode (and, without autoreset, terminal ones), ``plan`` and ``score``
    give what ``steps`` calls of ``step`` give with random actions: observations, decisions,
    ends of episodes, rewards, successes and the state after, bit for bit."""
    params = _params(case)
    n = 5
    task = DelayedMemoryTask(params, n, "cpu", autoreset=autoreset)
    state, obs, decision = task.reset(seed=3)
    generator = torch.Generator().manual_seed(0)
    # a few steps first, so that the envs are at different places of their episodes
    for _ in range(4):
        state, _ = task.step(state, torch.randint(params.num_actions, (n,), generator=generator))
    plan = task.plan(state, steps)
    action = torch.randint(params.num_actions, (n, steps), generator=generator)
    reward, success = task.score(plan, action)
    obs, decision = plan.obs[:, 0].clone(), plan.decision[:, 0].clone()
    for s in range(steps):
        assert torch.equal(plan.obs[:, s], obs) and torch.equal(plan.decision[:, s], decision), s
        state, step = task.step(state, action[:, s])
        assert torch.equal(plan.terminated[:, s], step.terminated), s
        assert torch.equal(reward[:, s], step.reward) and torch.equal(success[:, s], step.success), s
        obs, decision = step.obs, step.decision
    assert torch.equal(plan.obs[:, steps], obs) and torch.equal(plan.decision[:, steps], decision)
    for name, value in state.items():
        assert torch.equal(plan.state[name], value), name
    if steps == 63:
        assert bool(plan.terminated.any()), "the case must end episodes inside the plan"


def test_states_ahead_of_a_terminal_state_restart_at_the_next_step():
    """A state after its query step (t = horizon + 2, as a fresh init) ends at the next step and,
    with autoreset, starts the next episode after it, as :func:`delayed_memory_step` does."""
    params = _params("range1-9-active2")
    state = DelayedMemoryState(*(torch.tensor([v]) for v in (11, 4, 5, 9, 7, 2, 2)))
    ahead = delayed_memory_states_ahead(state, 12, params)
    now = state
    for s in range(13):
        assert all(torch.equal(a[:, s], b) for a, b in zip(ahead, now)), s
        now = delayed_memory_step(now, torch.zeros(1, dtype=torch.int64), params, autoreset=True).state
