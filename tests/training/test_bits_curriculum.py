"""The curriculum over the memory task's number of bits: when it adds bits, what it logs and
saves, that a resumed run is the same run, and that the accuracy target waits for every bit."""

import pytest
import torch

from mamba_rl.config import ConfigError, TrainConfig
from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.policies import build_policy
from mamba_rl.training import RolloutCollector
from mamba_rl.training.trainer import BitsCurriculum, set_active_bits, train


def curriculum_config(**kwargs):
    base = dict(
        num_bits=4,
        horizon=2,
        num_envs=16,
        chunks_per_rollout=4,
        d_model=16,
        device="cpu",
        num_updates=8,
        eval_episodes=0,
        progress_bar=False,
        tensorboard=False,
        checkpoint_interval=1,
        discrete_head="bits",
        bits_curriculum_start=1,
        bits_curriculum_step=2,
        bits_curriculum_threshold=0.05,
        bits_curriculum_patience=2,
    )
    return TrainConfig(**{**base, **kwargs})


def test_curriculum_adds_bits_after_patience_updates_in_a_row_at_the_threshold():
    curriculum = BitsCurriculum(num_bits=5, start=2, step=2, threshold=0.9, patience=2)
    # a dip below the threshold starts the count again; None (no episode ended) is a dip
    raised = [curriculum.observe(a) for a in [0.95, 0.5, 0.9, None, 0.91, 0.92]]
    assert raised == [False, False, False, False, False, True]
    assert curriculum.active_bits == 4 and curriculum.streak == 0
    # capped at num_bits, then it stays there
    assert [curriculum.observe(1.0) for _ in range(4)] == [False, True, False, False]
    assert curriculum.active_bits == 5


def test_training_raises_the_env_bits_logs_them_and_saves_them(tmp_path):
    torch.manual_seed(0)
    cfg = curriculum_config()
    result = train(cfg, tmp_path / "run", verbose=False)
    checkpoint = torch.load(result.run_dir / "checkpoint.pt", weights_only=False)
    history = checkpoint["history"]
    # the logged bits follow the rule on the logged accuracies
    rule = BitsCurriculum(4, 1, 2, 0.05, 2)
    for entry in history:
        assert entry["active_bits"] == rule.active_bits
        rule.observe(entry["accuracy"])
    assert [h["active_bits"] for h in history][0] == 1 and rule.active_bits == 4
    assert checkpoint["bits_curriculum"] == rule.state_dict()
    # the envs draw what the curriculum says
    assert (checkpoint["collector"]["carry"]["env.active_bits"] == 4).all()
    rows = (result.run_dir / "progress.csv").read_text().splitlines()
    column = rows[0].split(",").index("train/active_bits")
    assert [int(float(r.split(",")[column])) for r in rows[1:]] == [h["active_bits"] for h in history]
    assert result.metrics["active_bits_last"] == 4


def test_episodes_draw_only_the_active_bits():
    cfg = curriculum_config(bits_curriculum_start=2)
    policy = build_policy(cfg, "cpu")
    params = DelayedMemoryParams(num_bits=4, horizon=2, active_bits=2)
    collector = RolloutCollector(policy, params, 16, 4, 8, 0, torch.device("cpu"), cuda_graph=False)
    assert (collector.collect().obs[..., 2:4] == 0).all()


def test_resume_with_a_curriculum_continues_the_identical_run(tmp_path):
    torch.manual_seed(0)
    full = train(curriculum_config(), tmp_path / "full", verbose=False)
    train(curriculum_config(num_updates=4), tmp_path / "split", verbose=False)
    resumed = train(curriculum_config(), tmp_path / "split", resume=True, verbose=False)
    a = torch.load(full.run_dir / "checkpoint.pt", weights_only=False)
    b = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=False)
    # the bits rise inside the run, so the resume carries a changed curriculum
    assert len({h["active_bits"] for h in a["history"]}) > 1
    assert a["bits_curriculum"] == b["bits_curriculum"]
    assert [h["active_bits"] for h in a["history"]] == [h["active_bits"] for h in b["history"]]
    assert [h["accuracy"] for h in a["history"]] == [h["accuracy"] for h in b["history"]]
    for key in a["policy"]:
        assert torch.equal(a["policy"][key], b["policy"][key]), key
    for key in a["collector"]["carry"]:
        assert torch.equal(a["collector"]["carry"][key], b["collector"]["carry"][key]), key


def test_accuracy_target_counts_only_updates_with_every_bit_active(tmp_path):
    torch.manual_seed(0)
    cfg = curriculum_config(num_updates=30, target_accuracy=0.01, target_window=1)
    result = train(cfg, tmp_path / "run", verbose=False)
    history = torch.load(result.run_dir / "checkpoint.pt", weights_only=False)["history"]
    early = [h for h in history if h["active_bits"] < 4]
    # updates with fewer bits reached the target and did not stop the run
    assert any(h["accuracy"] >= 0.01 for h in early)
    assert result.status == "target_reached"
    assert history[-1]["active_bits"] == 4 and history[-1]["accuracy"] >= 0.01


def test_a_carry_saved_without_active_bits_resumes_with_every_bit():
    cfg = curriculum_config(bits_curriculum_start=None)
    policy = build_policy(cfg, "cpu")
    params = DelayedMemoryParams(num_bits=4, horizon=2)
    collector = RolloutCollector(policy, params, 16, 4, 1, 0, torch.device("cpu"), cuda_graph=False)
    state = collector.state_dict()
    del state["carry"]["env.active_bits"]
    collector.carry["env.active_bits"].fill_(4)
    collector.load_state_dict(state)
    assert (collector.carry["env.active_bits"] == 4).all()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"bits_curriculum_start": 0}, "bits_curriculum_start must be in 1..num_bits=4 or None (no curriculum), got 0"),
        ({"bits_curriculum_start": 5}, "bits_curriculum_start must be in 1..num_bits=4 or None (no curriculum), got 5"),
        ({"bits_curriculum_step": 0}, "bits_curriculum_step must be an int >= 1, got 0"),
        ({"bits_curriculum_patience": 0}, "bits_curriculum_patience must be an int >= 1, got 0"),
        ({"bits_curriculum_threshold": 0.0}, "bits_curriculum_threshold must be in (0, 1], got 0.0"),
        ({"bits_curriculum_threshold": 1.5}, "bits_curriculum_threshold must be in (0, 1], got 1.5"),
        ({"env": "CartPole-v1"}, "bits_curriculum_start applies to the memory task"),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else "",
)
def test_bad_curriculum_config_raises_naming_the_key_and_value(kwargs, message):
    with pytest.raises(ConfigError) as info:
        curriculum_config(**kwargs)
    assert message in str(info.value)


def _rollouts_across_a_raise(device, fast):
    """Two rollouts at 2 active bits of 4, the bits raised to 4 in place, two more."""
    torch.manual_seed(0)
    cfg = curriculum_config(device=device)
    policy = build_policy(cfg, device)
    params = DelayedMemoryParams(num_bits=4, horizon=(1, 5), active_bits=2)
    collector = RolloutCollector(policy, params, 32, 7, 2, 0, torch.device(device), cuda_graph=fast, compile_env=fast)
    fields = ("obs", "action", "reward", "success")

    def collect():
        rollout = collector.collect()
        return {name: getattr(rollout, name).clone() for name in fields}

    rollouts = [collect() for _ in range(2)]
    set_active_bits(collector, 4)
    rollouts += [collect() for _ in range(2)]
    return collector, rollouts


def test_bits_raised_in_place_reach_the_compiled_env_step(monkeypatch):
    from mamba_rl.training import rollout

    monkeypatch.setitem(rollout.COMPILE_OPTIONS, "backend", "eager")
    collector, got = _rollouts_across_a_raise("cpu", fast=True)
    assert collector.env_compiled
    _, expected = _rollouts_across_a_raise("cpu", fast=False)
    for a, b in zip(got, expected):
        for name in a:
            assert torch.equal(a[name], b[name]), name
    # bits 2 and 3 of the cue: 0 before the raise, drawn after it
    assert (got[1]["obs"][..., 2:4] == 0).all() and got[3]["obs"][..., 2:4].any()


@pytest.mark.gpu
def test_bits_raised_in_place_reach_the_cuda_graph_of_the_rollout_step():
    """On CUDA with real inductor: the captured step reads the raised bits from the carry, as the
    eager collector does, without a new capture."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="(torch.compile of the env step|CUDA graph capture)")
        collector, got = _rollouts_across_a_raise("cuda", fast=True)
    graph = collector._graph
    assert collector.env_compiled and graph is not None
    _, expected = _rollouts_across_a_raise("cuda", fast=False)
    for a, b in zip(got, expected):
        for name in a:
            assert torch.equal(a[name], b[name]), name
    assert (got[1]["obs"][..., 2:4] == 0).all() and got[3]["obs"][..., 2:4].any()
    assert collector._graph is graph
