"""The functional core of the delayed multi-bit memory task: exact rewards, visibility,
episode length, seeding, partial resets and bad input."""

import math

import numpy as np
import pytest
import torch

from mamba_rl.envs import (
    MAX_HORIZON,
    DelayedMemoryParams,
    check_action,
    delayed_memory_init,
    delayed_memory_observe,
    delayed_memory_reset,
    delayed_memory_step,
)
from mamba_rl.envs.delayed_memory import mix32

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def started(num_envs, params, seed=0, device="cpu"):
    return delayed_memory_reset(delayed_memory_init(num_envs, params, seed, device), None, params)


def bits_of(target, num_bits):
    """[N] int64 -> [N, num_bits] float32, least significant bit first."""
    shifts = torch.arange(num_bits, device=target.device)
    return ((target.unsqueeze(-1) >> shifts) & 1).to(torch.float32)


def run_episode(params, num_envs, seed, answer):
    """Steps a fixed-horizon batch through one episode; answer(state) gives the actions.

    Returns stacked per-step records (leading dim = steps taken) and the first observation.
    """
    state = started(num_envs, params, seed)
    first_obs, first_decision = delayed_memory_observe(state, params)
    records = {"obs": [], "reward": [], "done": [], "decision": [], "success": [], "t": []}
    for _ in range(params.max_episode_steps):
        records["t"].append(state.t)
        state, obs, reward, done, decision, success = delayed_memory_step(state, answer(state), params)
        for name, value in zip(
            ["obs", "reward", "done", "decision", "success"],
            [obs, reward, done, decision, success],
        ):
            records[name].append(value)
    return {k: torch.stack(v) for k, v in records.items()}, first_obs, first_decision, state


def test_mix32_equals_uint32_lowbias32_reference():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(0, 2**32, size=10_000, dtype=np.uint64), [0, 1, 2**31, 2**32 - 1]]).astype(
        np.uint32
    )
    ref = x.copy()
    ref ^= ref >> np.uint32(16)
    ref *= np.uint32(0x7FEB352D)
    ref ^= ref >> np.uint32(15)
    ref *= np.uint32(0x846CA68B)
    ref ^= ref >> np.uint32(16)
    got = mix32(torch.from_numpy(x.astype(np.int64)))
    np.testing.assert_array_equal(got.numpy(), ref.astype(np.int64))
    assert [mix32(int(v)) for v in x[-4:]] == ref[-4:].astype(np.int64).tolist()


@pytest.mark.parametrize("num_bits,horizon", [(1, 1), (4, 7), (16, 63)], ids=lambda v: str(v))
def test_right_answer_earns_one_at_query_step_only(num_bits, horizon):
    params = DelayedMemoryParams(num_bits=num_bits, horizon=horizon)
    rec, _, _, _ = run_episode(params, 37, seed=1, answer=lambda s: s.target)
    query = horizon + 1
    expected = torch.zeros(horizon + 2, 37)
    expected[query] = 1.0
    torch.testing.assert_close(rec["reward"], expected, rtol=0, atol=0)
    assert rec["success"][query].all() and not rec["success"][:query].any()
    assert rec["done"][query].all() and not rec["done"][:query].any()
    # decision describes the step to come: the step after t = horizon is the query step
    assert rec["decision"][horizon].all()
    assert rec["decision"].sum() == 37


@pytest.mark.parametrize("wrong_penalty", [0.0, 0.5])
def test_wrong_answer_earns_minus_penalty_at_query_step_only(wrong_penalty):
    params = DelayedMemoryParams(num_bits=3, horizon=4, wrong_penalty=wrong_penalty)
    wrong = lambda s: (s.target + 1) % params.num_actions  # noqa: E731
    rec, _, _, _ = run_episode(params, 16, seed=2, answer=wrong)
    expected = torch.zeros(6, 16)
    expected[5] = -wrong_penalty
    torch.testing.assert_close(rec["reward"], expected, rtol=0, atol=0)
    # +0.0, never -0.0, without a penalty
    assert not torch.signbit(rec["reward"]).any() or wrong_penalty > 0
    assert not rec["success"].any()
    assert rec["done"][5].all()


def test_bits_visible_at_cue_step_only_and_flags_where_documented():
    params = DelayedMemoryParams(num_bits=5, horizon=6, num_distractors=3)
    rec, first_obs, first_decision, state = run_episode(params, 64, 3, lambda s: s.target)
    k = params.num_bits
    torch.testing.assert_close(first_obs[:, :k], bits_of(state.target, k), rtol=0, atol=0)
    assert (first_obs[:, k] == 1).all() and (first_obs[:, k + 1] == 0).all()
    assert not first_decision.any()
    # rec["obs"][i] is the observation at t = i + 1: delay steps, query, terminal
    assert (rec["obs"][:, :, :k] == 0).all()
    assert (rec["obs"][:, :, k] == 0).all()
    query_flag = rec["obs"][:, :, k + 1]
    assert (query_flag[params.horizon] == 1).all()
    assert query_flag.sum() == 64


@pytest.mark.parametrize("horizon", [1, 2, 50, (1, 9)], ids=str)
def test_episode_takes_horizon_plus_two_actions(horizon):
    params = DelayedMemoryParams(num_bits=2, horizon=horizon)
    state = started(200, params, seed=4)
    first_horizon = state.horizon.clone()
    steps = torch.zeros(200, dtype=torch.int64)
    finished = torch.zeros(200, dtype=torch.bool)
    for _ in range(params.max_episode_steps):
        steps += ~finished
        state, _, _, done, _, _ = delayed_memory_step(state, state.target, params)
        finished |= done
    assert finished.all()
    torch.testing.assert_close(steps, first_horizon + 2, rtol=0, atol=0)


def test_horizon_range_draws_every_value_from_low_to_high_inclusive():
    params = DelayedMemoryParams(num_bits=1, horizon=(3, 6))
    state = started(2000, params, seed=5)
    values, counts = state.horizon.unique(return_counts=True)
    assert values.tolist() == [3, 4, 5, 6]
    assert counts.min() > 400


def test_log_uniform_horizon_gives_each_decade_the_same_share():
    params = DelayedMemoryParams(num_bits=1, horizon=(1, 999), horizon_sampling="log_uniform")
    state = started(30000, params, seed=5)
    h = state.horizon
    assert int(h.min()) == 1 and int(h.max()) == 999
    # log10(delay) uniform on [0, 3): a third of the episodes per decade, 1/3 * log10(2) at delay 1
    shares = torch.stack([((h >= lo) & (h < 10 * lo)).float().mean() for lo in (1, 10, 100)])
    torch.testing.assert_close(shares, torch.full((3,), 1 / 3), atol=0.015, rtol=0)
    assert abs(float((h == 1).float().mean()) - math.log10(2) / 3) < 0.01
    # the same episodes draw the same delays again; a fixed horizon ignores the switch
    torch.testing.assert_close(started(30000, params, seed=5).horizon, h, rtol=0, atol=0)
    fixed = DelayedMemoryParams(num_bits=1, horizon=7, horizon_sampling="log_uniform")
    assert started(100, fixed, seed=5).horizon.eq(7).all()
    narrow = DelayedMemoryParams(num_bits=1, horizon=(3, 6), horizon_sampling="log_uniform")
    assert started(2000, narrow, seed=5).horizon.unique().tolist() == [3, 4, 5, 6]


def test_targets_cover_every_code_with_balanced_bits():
    params = DelayedMemoryParams(num_bits=4, horizon=1)
    state = started(8192, params, seed=6)
    assert state.target.unique().tolist() == list(range(16))
    ones = bits_of(state.target, 4).mean(0)
    assert ((ones - 0.5).abs() < 0.03).all()


def test_actions_during_delay_change_nothing():
    params = DelayedMemoryParams(num_bits=4, horizon=9, num_distractors=2)
    gen = torch.Generator().manual_seed(0)
    random_then_right = lambda s: torch.where(  # noqa: E731
        s.t == s.horizon + 1, s.target, torch.randint(0, 16, s.t.shape, generator=gen)
    )
    rec_a, *_ = run_episode(params, 32, 7, random_then_right)
    rec_b, *_ = run_episode(params, 32, 7, lambda s: s.target)
    for key in rec_a:
        torch.testing.assert_close(rec_a[key], rec_b[key], rtol=0, atol=0)


def test_same_seed_same_episodes_and_other_seed_other_episodes():
    params = DelayedMemoryParams(num_bits=6, horizon=(2, 5), num_distractors=4)

    def trace(seed):
        torch.manual_seed(seed + 100)  # the global RNG must not matter
        state = started(50, params, seed)
        out = []
        for _ in range(40):
            result = delayed_memory_step(state, torch.zeros(50, dtype=torch.int64), params, True)
            state = result.state
            out += [result.observation, result.reward, state.target]
        return out

    for a, b in zip(trace(11), trace(11)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not all(torch.equal(a, b) for a, b in zip(trace(11), trace(12)))


def test_env_episodes_do_not_depend_on_batch_size():
    params = DelayedMemoryParams(num_bits=8, horizon=(1, 4), num_distractors=33)
    small, large = started(3, params, 13), started(1000, params, 13)
    for _ in range(30):
        small = delayed_memory_step(small, small.target, params, autoreset=True)
        large = delayed_memory_step(large, large.target, params, autoreset=True)
        torch.testing.assert_close(small.observation, large.observation[:3], rtol=0, atol=0)
        small, large = small.state, large.state


def test_partial_reset_leaves_other_envs_and_their_future_untouched():
    params = DelayedMemoryParams(num_bits=4, horizon=(3, 8), num_distractors=5)
    base = started(40, params, 14)
    for _ in range(2):
        base = delayed_memory_step(base, base.target, params, autoreset=True).state
    mask = torch.zeros(40, dtype=torch.bool)
    mask[[0, 7, 39]] = True
    reset = delayed_memory_reset(base, mask, params)
    for field, before, after in zip(base._fields, base, reset):
        assert torch.equal(before[~mask], after[~mask]), field
    assert (reset.t[mask] == 0).all() and (reset.episode[mask] == base.episode[mask] + 1).all()
    # the untouched envs then play exactly what they would have played
    for _ in range(25):
        a = delayed_memory_step(base, base.target, params, autoreset=True)
        b = delayed_memory_step(reset, reset.target, params, autoreset=True)
        torch.testing.assert_close(a.observation[~mask], b.observation[~mask], rtol=0, atol=0)
        torch.testing.assert_close(a.reward[~mask], b.reward[~mask], rtol=0, atol=0)
        base, reset = a.state, b.state


def test_init_state_is_terminal_until_reset():
    params = DelayedMemoryParams(num_bits=2, horizon=3)
    state = delayed_memory_init(4, params, seed=0)
    result = delayed_memory_step(state, torch.zeros(4, dtype=torch.int64), params)
    assert result.done.all() and (result.reward == 0).all() and not result.decision.any()


def test_stepping_a_terminated_env_is_a_noop_that_reports_done():
    params = DelayedMemoryParams(num_bits=2, horizon=2)
    rec, _, _, state = run_episode(params, 5, 15, lambda s: s.target)
    for _ in range(3):
        result = delayed_memory_step(state, state.target, params)
        assert result.done.all() and (result.reward == 0).all()
        assert not result.success.any() and not result.decision.any()
        for before, after in zip(state, result.state):
            assert torch.equal(before, after)
        state = result.state


def test_autoreset_equals_step_then_reset():
    params = DelayedMemoryParams(num_bits=3, horizon=(1, 3), num_distractors=2)
    state = started(64, params, 16)
    for _ in range(12):
        action = (state.target + state.t) % params.num_actions
        auto = delayed_memory_step(state, action, params, autoreset=True)
        manual = delayed_memory_step(state, action, params)
        restarted = delayed_memory_reset(manual.state, manual.done, params)
        obs, decision = delayed_memory_observe(restarted, params)
        torch.testing.assert_close(auto.observation, obs, rtol=0, atol=0)
        assert torch.equal(auto.decision, decision)
        for name in ["reward", "done", "success"]:
            assert torch.equal(getattr(auto, name), getattr(manual, name)), name
        for a, b in zip(auto.state, restarted):
            assert torch.equal(a, b)
        state = auto.state


def test_distractors_are_fair_coins_that_change_every_step_in_every_channel():
    params = DelayedMemoryParams(num_bits=1, horizon=200, num_distractors=40)
    state = started(64, params, 17)
    noise = []
    for _ in range(50):
        result = delayed_memory_step(state, state.target, params)
        noise.append(result.observation[:, 3:])
        state = result.state
    # [T, N, D]
    noise = torch.stack(noise)
    assert set(noise.unique().tolist()) == {0.0, 1.0}
    assert (noise.mean() - 0.5).abs() < 0.01
    # channels c and c + 32 come from different hash words, and steps differ
    assert not torch.equal(noise[..., :8], noise[..., 32:40])
    assert (noise[1:] != noise[:-1]).float().mean() > 0.45


def test_step_traces_into_one_graph_without_breaks():
    params = DelayedMemoryParams(num_bits=4, horizon=(2, 5), num_distractors=3)
    step = torch.compile(delayed_memory_step, fullgraph=True, backend="eager")
    state = started(16, params, 18)
    eager_state = state
    for _ in range(10):
        action = (state.target + 1) % 16
        compiled = step(state, action, params, True)
        eager = delayed_memory_step(eager_state, action, params, True)
        torch.testing.assert_close(compiled.observation, eager.observation, rtol=0, atol=0)
        state, eager_state = compiled.state, eager.state


def test_all_bits_active_is_the_full_width_hash_of_the_episode():
    params = DelayedMemoryParams(num_bits=7, horizon=(1, 4))
    assert params.active_bits == 7
    state = started(500, params, 20)
    for _ in range(12):
        # the target as the hash defines it, independent of active_bits
        assert torch.equal(state.target, mix32(state.episode_key ^ 0x68E31DA4) & 127)
        state = delayed_memory_step(state, state.target, params, autoreset=True).state


@pytest.mark.parametrize("active_bits", [1, 3, 6])
def test_inactive_bits_are_zero_and_active_ones_those_of_the_full_task(active_bits):
    full = DelayedMemoryParams(num_bits=6, horizon=(1, 5), num_distractors=3)
    part = DelayedMemoryParams(num_bits=6, horizon=(1, 5), num_distractors=3, active_bits=active_bits)
    assert part.obs_dim == full.obs_dim and part.num_actions == full.num_actions
    a, b = started(400, full, 21), started(400, part, 21)
    mask = 2**active_bits - 1
    for _ in range(15):
        assert (b.target < 2**active_bits).all()
        assert torch.equal(b.target, a.target & mask)
        assert torch.equal(b.horizon, a.horizon)
        obs_a, _ = delayed_memory_observe(a, full)
        obs_b, _ = delayed_memory_observe(b, part)
        assert (obs_b[:, active_bits:6] == 0).all()
        # the active bits, the flags and the distractors are those of the full task
        assert torch.equal(obs_b[:, :active_bits], obs_a[:, :active_bits])
        assert torch.equal(obs_b[:, 6:], obs_a[:, 6:])
        a = delayed_memory_step(a, a.target, full, autoreset=True).state
        b = delayed_memory_step(b, b.target, part, autoreset=True).state
    # every code below 2**active_bits turns up
    assert b.target.unique().numel() == 2**active_bits


def test_only_the_active_bits_of_an_answer_are_scored():
    params = DelayedMemoryParams(num_bits=6, horizon=1, active_bits=2)
    state = started(300, params, 23)
    # cue, then the one delay step
    at_query = delayed_memory_step(delayed_memory_step(state, state.target, params).state, state.target, params).state
    noise = torch.randint(0, 16, (300,), generator=torch.Generator().manual_seed(0)) << 2
    # any inactive bits: right; one active bit flipped: wrong; out of range: wrong
    for answer, right in [(state.target | noise, True), (state.target ^ 2, False), (state.target + 64, False)]:
        result = delayed_memory_step(at_query, answer, params)
        assert bool(result.success.all()) is right and bool((result.reward == 1.0).all()) is right


def test_active_bits_changed_in_the_state_apply_at_the_next_reset_without_recompiling():
    from torch._dynamo.testing import CompileCounter

    params = DelayedMemoryParams(num_bits=5, horizon=2, active_bits=2)
    counter = CompileCounter()
    step = torch.compile(delayed_memory_step, fullgraph=True, backend=counter)
    state = started(256, params, 22)
    assert (state.target < 4).all()
    state.active_bits.fill_(5)
    # the episode under way keeps its target; the next ones draw 5 bits
    for _ in range(4):
        state = step(state, state.target, params, True).state
    assert (state.t == 0).all() and state.target.max() >= 16
    assert counter.frame_count == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_episodes_equal_cpu_episodes():
    params = DelayedMemoryParams(num_bits=7, horizon=(1, 6), num_distractors=35)
    cpu, gpu = started(300, params, 19), started(300, params, 19, "cuda")
    for _ in range(20):
        cpu = delayed_memory_step(cpu, cpu.target, params, autoreset=True)
        gpu = delayed_memory_step(gpu, gpu.target, params, autoreset=True)
        torch.testing.assert_close(gpu.observation.cpu(), cpu.observation, rtol=0, atol=0)
        cpu, gpu = cpu.state, gpu.state


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_bits": 0}, "num_bits must be an int in 1..16, got 0"),
        ({"num_bits": 17}, "num_bits must be an int in 1..16, got 17"),
        ({"num_bits": 2.0}, "num_bits must be an int in 1..16, got 2.0"),
        ({"num_bits": True}, "num_bits must be an int in 1..16, got True"),
        ({"horizon": 0}, f"horizon must be in 1..{MAX_HORIZON}, got 0"),
        ({"horizon": -5}, f"horizon must be in 1..{MAX_HORIZON}, got -5"),
        ({"horizon": MAX_HORIZON + 1}, f"got {MAX_HORIZON + 1}"),
        ({"horizon": (5, 3)}, "low <= high, got low=5 > high=3"),
        ({"horizon": (0, 3)}, "horizon range (low, high) must lie in"),
        ({"horizon": 10.0}, "horizon must be an int >= 1 or a pair of ints (low, high), got 10.0"),
        ({"horizon": (1, 2, 3)}, "got (1, 2, 3)"),
        ({"num_distractors": -1}, "num_distractors must be an int >= 0, got -1"),
        ({"num_bits": 4, "active_bits": 0}, "active_bits must be an int in 1..num_bits=4 (or None for all), got 0"),
        ({"num_bits": 4, "active_bits": 5}, "active_bits must be an int in 1..num_bits=4 (or None for all), got 5"),
        ({"active_bits": 2.0}, "active_bits must be an int in 1..num_bits=4 (or None for all), got 2.0"),
        ({"wrong_penalty": -1.0}, "wrong_penalty must be a finite number >= 0"),
        ({"wrong_penalty": math.nan}, "got nan"),
        ({"wrong_penalty": math.inf}, "got inf"),
        (
            {"horizon_sampling": "loguniform"},
            "horizon_sampling must be one of 'uniform', 'log_uniform', got 'loguniform'",
        ),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else "",
)
def test_bad_params_raise_naming_argument_and_value(kwargs, message):
    with pytest.raises(ValueError) as info:
        DelayedMemoryParams(**kwargs)
    assert message in str(info.value)


def test_bad_num_envs_or_seed_raise():
    params = DelayedMemoryParams()
    with pytest.raises(ValueError, match="num_envs must be an int >= 1, got 0"):
        delayed_memory_init(0, params, seed=0)
    with pytest.raises(ValueError, match="seed must be an int, got 'x'"):
        delayed_memory_init(2, params, seed="x")


def test_check_action_rejects_wrong_dtype_shape_and_range_without_clipping():
    params = DelayedMemoryParams(num_bits=2)
    good = torch.tensor([0, 3, 1], dtype=torch.int32)
    assert check_action(good, params, 3).dtype == torch.int64
    with pytest.raises(TypeError, match="integer dtype .* got torch.float32"):
        check_action(torch.zeros(3), params, 3)
    with pytest.raises(TypeError, match="got torch.bool"):
        check_action(torch.zeros(3, dtype=torch.bool), params, 3)
    with pytest.raises(TypeError, match="must be a torch.Tensor, got list"):
        check_action([0, 1, 2], params, 3)
    with pytest.raises(ValueError, match=r"shape \[3\] .* got \[3, 1\]"):
        check_action(torch.zeros(3, 1, dtype=torch.int64), params, 3)
    with pytest.raises(ValueError, match=r"in 0..3 \(num_bits=2\), got \[4, -1\] at env indices \[0, 2\]"):
        check_action(torch.tensor([4, 1, -1]), params, 3)
    # the range check alone can be skipped
    assert check_action(torch.tensor([4, 1, -1]), params, 3, check_range=False).tolist() == [4, 1, -1]
