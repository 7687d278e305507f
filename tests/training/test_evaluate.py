"""Evaluation of the memory task by blocks of steps: the answers of the step-by-step ground truth
(:class:`~mamba_rl.training.evaluate._EpisodeBatch`), with memory bounded by the block."""

import pytest
import torch

from mamba_rl.config import TrainConfig
from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.envs.adapters import DelayedMemoryTask
from mamba_rl.policies import build_policy
from mamba_rl.training.evaluate import _EpisodeBatch, evaluate_modes, memory_blocks, play_memory_episodes

MODES = ("greedy", "sampled")


def small_policy(controller: str, num_distractors: int = 0, dtype=torch.float64, discrete_head="categorical"):
    """A tiny random policy for the 2-bit task (two layers, so that the state carried between
    blocks is more than one layer's), in ``dtype``."""
    cfg = TrainConfig(
        controller=controller,
        discrete_head=discrete_head,
        num_bits=2,
        horizon=6,
        num_distractors=num_distractors,
        d_model=8,
        d_state=4,
        num_layers=2,
        gru_hidden_size=8,
        device="cpu",
        tensorboard=False,
        progress_bar=False,
    )
    torch.manual_seed(0)
    policy = build_policy(cfg, "cpu").to(dtype).eval()
    # logits far enough apart that the greedy and sampled answers vary across episodes
    with torch.no_grad():
        for p in policy.actor_head.parameters():
            p.mul_(300.0)
    return policy


def stepped(policy, params, n, seed, mode, first_episode):
    """The step-by-step ground truth: ``(successes [n] bool, returns [n], query logits [n, A])``."""
    batch = _EpisodeBatch(policy, params, n, seed, mode == "greedy", torch.device("cpu"), first_episode)
    with torch.no_grad():
        batch.run(cuda_graph=False)
    return batch.successes.bool(), batch.returns, batch.logits


@pytest.mark.parametrize("num_distractors", [0, 3], ids=["clean", "distractors3"])
@pytest.mark.parametrize("controller", ["mamba", "gru"])
@pytest.mark.parametrize(
    "horizon,block_steps",
    [(7, 4), (5, 64), (3, 1)],
    ids=["H7-block4", "H5-block64", "H3-block1"],
)
def test_block_evaluation_gives_the_stepped_episodes_answers(controller, num_distractors, horizon, block_steps):
    # float64: the sequence path and the single step differ by rounding alone (~1e-15 here)
    policy = small_policy(controller, num_distractors)
    params = DelayedMemoryParams(num_bits=2, horizon=horizon, num_distractors=num_distractors, wrong_penalty=0.5)
    n, seed, first = 16, 11, 3
    played = play_memory_episodes(policy, params, n, seed, MODES, first_episode=first, block_steps=block_steps)
    right = 0
    for mode in MODES:
        successes, returns, logits = stepped(policy, params, n, seed, mode, first)
        torch.testing.assert_close(played[mode].logits, logits, rtol=1e-10, atol=1e-10)
        assert torch.equal(played[mode].success, successes), mode
        assert torch.equal(played[mode].reward, returns), mode
        right += int(successes.sum())
    # the comparison sees right and wrong answers
    assert 0 < right < 2 * n


@pytest.mark.parametrize("controller", ["mamba", "gru"])
def test_block_evaluation_answers_through_the_bits_head(controller):
    # the bits head's outputs are one logit per bit: an answer taken as their argmax would be a bit's index
    policy = small_policy(controller, discrete_head="bits")
    params = DelayedMemoryParams(num_bits=2, horizon=5)
    played = play_memory_episodes(policy, params, 32, 7, MODES, block_steps=4)
    for mode in MODES:
        successes, returns, logits = stepped(policy, params, 32, 7, mode, 0)
        torch.testing.assert_close(played[mode].logits, logits, rtol=1e-10, atol=1e-10)
        assert torch.equal(played[mode].success, successes), mode
    # the greedy answer is the head's mode: right exactly where that is the episode's target
    env, _, _ = DelayedMemoryTask(params, 32, "cpu", autoreset=False).reset(7)
    greedy = policy.action_dist.mode(played["greedy"].logits)
    assert torch.equal(played["greedy"].success, greedy == env["target"])
    assert 0 < int(played["greedy"].success.sum()) < 32


def test_block_evaluation_in_float32_agrees_with_stepping():
    policy = small_policy("mamba", 2, dtype=torch.float32)
    params = DelayedMemoryParams(num_bits=2, horizon=40, num_distractors=2)
    played = play_memory_episodes(policy, params, 8, 3, ("greedy",), block_steps=16)["greedy"]
    successes, _, logits = stepped(policy, params, 8, 3, "greedy", 0)
    # float32: the two paths sum in different orders, ~1e-6 relative
    torch.testing.assert_close(played.logits, logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(played.success, successes)


@pytest.mark.parametrize("controller", ["mamba", "gru"])
def test_evaluation_in_several_batches_counts_the_stepped_episodes(controller):
    policy = small_policy(controller, 1)
    params = DelayedMemoryParams(num_bits=2, horizon=9, num_distractors=1, wrong_penalty=1.0)
    episodes, seed = 7, 5
    # 3 batches of at most 3 episodes, blocks of 4 steps: 11 steps = 4 + 4 + 3
    results = evaluate_modes(policy, params, episodes, MODES, seed=seed, num_envs=3, block_steps=4)
    for mode in MODES:
        successes, returns, _ = stepped(policy, params, episodes, seed, mode, 0)
        assert results[mode]["successes"] == int(successes.sum()), mode
        assert results[mode]["mean_return"] == pytest.approx(float(returns.double().mean()), abs=1e-12)


def test_evaluation_counts_the_episodes_and_right_answers_of_each_wrong_pattern():
    # the per-pattern counts are those of the stepped episodes, over several batches: the targets
    # from the env's own reset, the successes from stepping
    policy = small_policy("mamba", 1)
    params = DelayedMemoryParams(num_bits=2, horizon=5, num_distractors=1)
    episodes, seed = 40, 9
    results = evaluate_modes(policy, params, episodes, MODES, seed=seed, num_envs=16, block_steps=4)
    env, _, _ = DelayedMemoryTask(params, episodes, "cpu", autoreset=False).reset(seed)
    for mode in MODES:
        successes, _, _ = stepped(policy, params, episodes, seed, mode, 0)
        expected = []
        for pattern in range(4):
            mine = env["target"] == pattern
            seen, right = int(mine.sum()), int((successes & mine).sum())
            if right < seen:
                expected.append([pattern, seen, right])
        assert results[mode]["wrong_patterns"] == expected, mode
        assert expected, "the comparison must see wrong answers"
        wrong = sum(seen - right for _, seen, right in expected)
        assert wrong == episodes - results[mode]["successes"]


def test_block_evaluation_of_a_horizon_range_scores_each_episode_at_its_own_query():
    policy = small_policy("mamba")
    params = DelayedMemoryParams(num_bits=2, horizon=(2, 12))
    played = play_memory_episodes(policy, params, 9, 4, MODES, block_steps=5)
    for mode in MODES:
        successes, returns, logits = stepped(policy, params, 9, 4, mode, 0)
        torch.testing.assert_close(played[mode].logits, logits, rtol=1e-10, atol=1e-10)
        assert torch.equal(played[mode].success, successes) and torch.equal(played[mode].reward, returns)


@pytest.mark.parametrize("controller", ["mamba", "gru"])
def test_block_evaluation_holds_one_block_whatever_the_horizon(controller, monkeypatch):
    policy = small_policy(controller)
    trunk = policy.actor_trunk
    lengths = []
    sequence = trunk.sequence

    def recording(x, state, reset):
        lengths.append(x.shape[1])
        return sequence(x, state, reset)

    monkeypatch.setattr(trunk, "sequence", recording)
    for horizon in (50, 5000):
        lengths.clear()
        params = DelayedMemoryParams(num_bits=2, horizon=horizon)
        play_memory_episodes(policy, params, 2, 0, ("greedy",), block_steps=1024)
        # the trunk sees at most block_steps steps at a time, and every step once
        assert max(lengths) <= 1024 and sum(lengths) == horizon + 2, (horizon, lengths)
        # memory_blocks is the plan the evaluation follows (benchmarks warm its shapes up from it)
        assert lengths == memory_blocks(params, 2, "cpu", 1024), (horizon, lengths)


def test_block_evaluation_names_a_bad_argument():
    policy = small_policy("mamba")
    params = DelayedMemoryParams(num_bits=2, horizon=3)
    with pytest.raises(ValueError, match="block_steps must be >= 1, got 0"):
        play_memory_episodes(policy, params, 2, 0, ("greedy",), block_steps=0)
    with pytest.raises(ValueError, match="modes must be"):
        play_memory_episodes(policy, params, 2, 0, ("argmax",))


@pytest.mark.gpu
@pytest.mark.parametrize("controller", ["mamba", "gru"])
def test_block_evaluation_on_cuda_gives_the_cuda_graph_steps_answers(controller):
    policy = small_policy(controller, 2, dtype=torch.float32).cuda()
    params = DelayedMemoryParams(num_bits=2, horizon=(3, 700), num_distractors=2)
    played = play_memory_episodes(policy, params, 600, 7, MODES, block_steps=256)
    for mode in MODES:
        batch = _EpisodeBatch(policy, params, 600, 7, mode == "greedy", torch.device("cuda"))
        with torch.no_grad():
            batch.run(cuda_graph=True)
        # float32 on the GPU: the Triton scan and the fused step round differently
        torch.testing.assert_close(played[mode].logits, batch.logits, rtol=1e-3, atol=1e-3)
        assert torch.equal(played[mode].success, batch.successes.bool()), mode


def test_wrong_patterns_are_listed_most_often_wrong_first():
    from mamba_rl.training.evaluate import format_wrong_patterns

    results = {
        "100": {
            "greedy": {"wrong_patterns": [[1, 10, 9], [2, 8, 0], [3, 5, 4]]},
            "sampled": {"wrong_patterns": []},
        },
        "200": {"greedy": {"wrong_patterns": [[5, 3, 0]]}},
    }
    lines = format_wrong_patterns(results, limit=2).splitlines()
    assert lines == [
        "horizon 100, greedy: 3 patterns answered wrong: 2 0/8, 1 9/10 and 1 more",
        "horizon 100, sampled: every pattern right",
        "horizon 200, greedy: 1 pattern answered wrong: 5 0/3",
    ]
