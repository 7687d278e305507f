"""SequenceRolloutCollector: the step collector's rollouts, played by blocks through the sequence path."""

import pytest
import torch

from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.envs.adapters import DelayedMemoryTask, make_env
from mamba_rl.policies import make_actor_critic
from mamba_rl.training import RolloutCollector, SequenceRolloutCollector, train
from mamba_rl.training.rollout import default_block_steps
from tests.conftest import assert_close

# what the env alone decides, whatever the policy's rounding
ENV_FIELDS = ("obs", "done", "is_init", "decision", "episode_length")
# what also depends on the sampled actions (scored by the env)
SCORED_FIELDS = ("reward", "success", "episode_return")

CONFIGS = {
    # delays of 1 to 9 steps: several episodes, and resets, inside every 13-step chunk
    "short-range": dict(num_bits=3, horizon=(1, 9)),
    "distractors": dict(num_bits=2, horizon=(2, 6), num_distractors=3),
    "fixed-penalty": dict(num_bits=2, horizon=4, wrong_penalty=0.5),
}


def _policy(controller, head, params):
    torch.manual_seed(0)
    return make_actor_critic(
        controller, params.obs_dim, params.num_actions, d_model=16, gru_hidden_size=16, discrete_head=head
    )


def _collectors(controller, head, config, block_steps=5, num_envs=6, chunk_len=13, num_chunks=3):
    params = DelayedMemoryParams(**CONFIGS[config])
    policy = _policy(controller, head, params)
    args = (policy, params, num_envs, chunk_len, num_chunks, 0, torch.device("cpu"))
    return policy, params, RolloutCollector(*args, cuda_graph=False), SequenceRolloutCollector(*args, block_steps)


def _copy(rollout):
    names = (*ENV_FIELDS, *SCORED_FIELDS, "action", "log_prob", "value")
    return {name: getattr(rollout, name).clone() for name in names}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("head", ["categorical", "bits"])
@pytest.mark.parametrize("controller", ["mamba", "gru"])
def test_sequence_collector_gives_the_step_collectors_rollouts(controller, head, config):
    """Two consecutive collects (the second goes on with the first's episodes and states), 3 chunks
    of 13 steps in blocks of 5: the env's fields equal the step collector's bit for bit, the
    actions are the same, the log-probs, values, chunk states and carried states agree to float
    rounding."""
    _, _, step, sequence = _collectors(controller, head, config)
    for collect in range(2):
        expected, got = step.collect(), sequence.collect()
        if collect == 1:
            assert not bool(got.is_init[:, 0].all()), "the second collect must start mid-episode"
        assert bool(got.is_init[:, 1:].any()), "episodes must restart inside rows"
        for name in (*ENV_FIELDS, *SCORED_FIELDS, "action", "terminated"):
            a, b = getattr(got, name), getattr(expected, name)
            assert a.dtype == b.dtype and torch.equal(a, b), (collect, name)
        for name in ("log_prob", "value", "bootstrap_value"):
            assert_close(getattr(got, name), getattr(expected, name), msg=f"{collect} {name}")
        assert got.chunk_len == expected.chunk_len and got.final_value is expected.final_value is None
        assert set(got.chunk_states) == set(expected.chunk_states)
        for name, value in expected.chunk_states.items():
            assert_close(got.chunk_states[name], value, msg=f"{collect} chunk state {name}")
    for name, value in step.carry.items():
        if value.is_floating_point():
            assert_close(sequence.carry[name], value, msg=name)
        else:
            assert torch.equal(sequence.carry[name], value), name


@pytest.mark.parametrize("head", ["categorical", "bits"])
@pytest.mark.parametrize("controller", ["mamba", "gru"])
def test_sequence_rollout_is_what_the_step_policy_and_the_env_give_for_its_actions(controller, head):
    """Whatever the actions: the policy stepped one step at a time on the rollout's observations
    and resets, from its stored chunk states, gives its log-probs of the rollout's actions and its
    values; the env stepped with the rollout's actions gives every env field bit for bit."""
    policy, params, _, sequence = _collectors(controller, head, "distractors", block_steps=4)
    sequence.collect()
    carry = sequence.carry
    env_state = {name[len("env.") :]: value.clone() for name, value in carry.items() if name.startswith("env.")}
    episode_return = sequence.carry["episode_return"].clone()
    episode_length = sequence.carry["episode_length"].clone()
    rollout = sequence.collect()
    n, steps = rollout.done.shape
    task = DelayedMemoryTask(params, n, "cpu")
    with torch.no_grad():
        for chunk in range(rollout.num_chunks):
            state = {name: value[chunk].clone() for name, value in rollout.chunk_states.items()}
            for t in range(chunk * rollout.chunk_len, (chunk + 1) * rollout.chunk_len):
                logits, value, state = policy.step(rollout.obs[:, t], state, rollout.is_init[:, t])
                log_prob, _ = policy.action_dist.log_prob_entropy(logits, rollout.action[:, t])
                assert_close(rollout.log_prob[:, t], log_prob, msg=f"log_prob at {t}")
                assert_close(rollout.value[:, t], value, msg=f"value at {t}")
    for t in range(steps):
        env_state, step = task.step(env_state, rollout.action[:, t])
        episode_return += step.reward
        episode_length += 1
        assert torch.equal(rollout.reward[:, t], step.reward) and torch.equal(rollout.success[:, t], step.success)
        assert torch.equal(rollout.done[:, t], step.terminated)
        assert torch.equal(rollout.episode_return[:, t], torch.where(step.terminated, episode_return, 0.0))
        assert torch.equal(rollout.episode_length[:, t], torch.where(step.terminated, episode_length, 0))
        if t + 1 < steps:
            assert torch.equal(rollout.obs[:, t + 1], step.obs)
            assert torch.equal(rollout.decision[:, t + 1], step.decision)
            assert torch.equal(rollout.is_init[:, t + 1], step.terminated)
        episode_return = torch.where(step.terminated, 0.0, episode_return)
        episode_length = torch.where(step.terminated, 0, episode_length)
    assert torch.equal(sequence.carry["obs"], step.obs)
    for name, value in env_state.items():
        assert torch.equal(sequence.carry[f"env.{name}"], value), name


@pytest.mark.parametrize("controller", ["mamba", "gru"])
def test_sequence_collector_resumed_from_its_state_dict_collects_what_it_would_have(controller):
    """A collector restored from another's state (carry and sampling generator) collects what
    that one collects next, bit for bit; the step collector's state loads too (the same carry)."""
    policy, params, step, sequence = _collectors(controller, "categorical", "short-range")
    sequence.collect()
    saved = sequence.state_dict()
    expected = _copy(sequence.collect())
    args = (policy, params, 6, 13, 3, 1, torch.device("cpu"))
    resumed = SequenceRolloutCollector(*args, block_steps=5)
    resumed.load_state_dict(saved)
    got = _copy(resumed.collect())
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    step.collect()
    from_step = SequenceRolloutCollector(*args, block_steps=5)
    from_step.load_state_dict(step.state_dict())
    for name in ENV_FIELDS:
        assert torch.equal(getattr(from_step.collect(), name), getattr(step.collect(), name)), name


def test_block_size_does_not_change_the_rollout():
    """One block per step, blocks of 5 and one block per chunk: the same env fields and actions."""
    rollouts = []
    for block_steps in (1, 5, 13):
        *_, sequence = _collectors("mamba", "categorical", "short-range", block_steps=block_steps)
        sequence.collect()
        rollouts.append(_copy(sequence.collect()))
    for other in rollouts[1:]:
        for name in (*ENV_FIELDS, *SCORED_FIELDS, "action"):
            assert torch.equal(other[name], rollouts[0][name]), name
        for name in ("log_prob", "value"):
            assert_close(other[name], rollouts[0][name], msg=name)


def test_default_blocks_bound_the_pairs_and_the_head_outputs():
    assert default_block_steps(512, 16, "cuda") == 2048
    assert default_block_steps(64, 16, "cpu") == 512
    # 2**16 logits a step: 256 times fewer pairs
    assert default_block_steps(512, 2**16, "cuda") == 8
    assert default_block_steps(10**7, 16, "cpu") == 1


def test_sequence_collector_refuses_an_env_whose_observations_may_depend_on_the_actions():
    env = make_env("CartPole-v1", 2, "cpu")
    policy = make_actor_critic("gru", env.obs_dim, action_space=env.action_space, gru_hidden_size=8)
    with pytest.raises(ValueError, match="action_independent_observations"):
        SequenceRolloutCollector(policy, env, 2, 4, 1, 0, torch.device("cpu"))


def test_trainer_collects_the_memory_task_by_blocks(tmp_path, monkeypatch):
    from tests.test_trainer import small_config

    played = []
    original = SequenceRolloutCollector.collect

    def collect(self):
        played.append(self.block_steps)
        return original(self)

    monkeypatch.setattr(SequenceRolloutCollector, "collect", collect)
    train(small_config(num_updates=2), tmp_path / "run", verbose=False)
    assert len(played) == 2


def test_state_saved_on_another_device_type_loads_and_samples_deterministically():
    """Regression: resuming on the CPU a run trained on CUDA (``device`` may change on resume)
    failed inside ``Generator.set_state`` ("Expected a CPUGeneratorImplState of size 5056"): a
    CUDA generator's state is 16 bytes. The carry loads as saved, and the sampling goes on from a
    seed drawn from the saved state, the same for every load of it."""
    policy, params, _, sequence = _collectors("mamba", "categorical", "short-range")
    sequence.collect()
    saved = sequence.state_dict()
    # what a CUDA generator's get_state() gives: its seed and offset
    saved["generator"] = torch.tensor([7, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0], dtype=torch.uint8)
    collected = []
    for _ in range(2):
        resumed = SequenceRolloutCollector(policy, params, 6, 13, 3, 1, torch.device("cpu"), block_steps=5)
        resumed.load_state_dict(saved)
        for name, value in saved["carry"].items():
            assert torch.equal(resumed.carry[name], value), name
        collected.append(_copy(resumed.collect()))
    for name, value in collected[0].items():
        assert torch.equal(collected[1][name], value), name
