"""The PPO trainer: GAE by hand, replay from stored chunk states, the two backprop modes, resume,
preset smoke runs and the CLI errors."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mamba_rl import MambaConfig, cli
from mamba_rl.config import ConfigError, TrainConfig, config_to_dict, load_config
from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.evaluate import build_policy
from mamba_rl.evaluate import main as eval_main
from mamba_rl.training import RolloutCollector, compute_gae, replay
from mamba_rl.training.trainer import _on_target, rollout_statistics, train

PRESETS = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))


def test_gae_matches_hand_computation():
    # one env, 3 steps, the episode ends at step 1; gamma 0.5, lambda 0.5
    reward = torch.tensor([[1.0, 2.0, 0.0]])
    value = torch.tensor([[0.5, 1.0, 2.0]])
    done = torch.tensor([[False, True, False]])
    bootstrap = torch.tensor([4.0])
    adv, ret = compute_gae(reward, value, done, bootstrap, gamma=0.5, gae_lambda=0.5)
    d2 = 0.0 + 0.5 * 4.0 - 2.0
    d1 = 2.0 - 1.0
    d0 = 1.0 + 0.5 * 1.0 - 0.5
    expected = torch.tensor([[d0 + 0.25 * d1, d1, d2]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + value)


def small_config(**kwargs):
    base = dict(
        num_bits=2,
        horizon=6,
        num_envs=8,
        d_model=16,
        device="cpu",
        num_updates=2,
        eval_episodes=0,
        progress_bar=False,
        tensorboard=False,
        checkpoint_interval=1,
    )
    return TrainConfig(**{**base, **kwargs})


@pytest.mark.parametrize("controller", ["mamba", "gru"])
def test_replay_from_stored_chunk_states_reproduces_collection_log_probs(controller):
    torch.manual_seed(0)
    cfg = small_config(controller=controller)
    params = DelayedMemoryParams(num_bits=2, horizon=(3, 9))
    policy = build_policy(cfg, "cpu")
    collector = RolloutCollector(policy, params, 8, 7, 3, 0, torch.device("cpu"), cuda_graph=False)
    collector.collect()
    rollout = collector.collect()
    assert not bool(rollout.is_init[:, 0].all()), "rows must start mid-episode"
    with torch.no_grad():
        logits, value = replay(policy, rollout, torch.arange(8))
    log_prob = torch.log_softmax(logits, -1).gather(-1, rollout.action[..., None]).squeeze(-1)
    torch.testing.assert_close(log_prob, rollout.log_prob, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(value, rollout.value, atol=1e-5, rtol=1e-5)


ROLLOUT_FIELDS = (
    "obs",
    "action",
    "log_prob",
    "value",
    "reward",
    "done",
    "is_init",
    "decision",
    "success",
    "episode_return",
)


def _two_rollouts(**collector_kwargs):
    torch.manual_seed(0)
    policy = build_policy(small_config(), "cpu")
    params = DelayedMemoryParams(num_bits=2, horizon=(3, 9))
    collector = RolloutCollector(policy, params, 8, 7, 3, 0, torch.device("cpu"), cuda_graph=False, **collector_kwargs)
    return collector, (collector.collect(), collector.collect())


def test_compiled_env_step_and_storage_collect_the_same_rollouts(monkeypatch):
    from mamba_rl.training import rollout

    # dynamo traces the whole step (fullgraph) and runs the traced graph; no C++ build in CI
    monkeypatch.setitem(rollout.COMPILE_OPTIONS, "backend", "eager")
    _, expected = _two_rollouts()
    collector, got = _two_rollouts(compile_env=True)
    assert collector.env_compiled
    for a, b in zip(got, expected):
        for field in ROLLOUT_FIELDS:
            assert torch.equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.parametrize("failure", ["raises", "differs"])
def test_env_step_falls_back_to_eager_when_its_compiled_version_fails(failure, monkeypatch):
    from mamba_rl.training import rollout

    def backend(graph_module, example_inputs):
        if failure == "raises":
            raise RuntimeError("no compiler here")

        def run(*args):  # the step runs, then every float tensor it was given is off by one
            out = graph_module(*args)
            for t in args:
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    t.add_(1)
            return out

        return run

    monkeypatch.setitem(rollout.COMPILE_OPTIONS, "backend", backend)
    _, expected = _two_rollouts()
    reason = "no compiler here" if failure == "raises" else "its results differ from the eager step's"
    with pytest.warns(UserWarning, match=f"torch.compile of the env step failed .*{reason}"):
        collector, got = _two_rollouts(compile_env=True)
    assert not collector.env_compiled
    for field in ROLLOUT_FIELDS:
        assert torch.equal(getattr(got[1], field), getattr(expected[1], field)), field


@pytest.mark.gpu
def test_compiled_storage_in_a_cuda_graph_collects_what_eager_collection_does():
    """On CUDA with real inductor: the compiled env step and storage, captured with the policy step
    in one CUDA graph, give the eager collector's rollouts (the same kernels run the policy)."""
    import warnings

    params = DelayedMemoryParams(num_bits=2, horizon=(3, 9))
    rollouts, collectors = [], []
    for fast in (True, False):
        torch.manual_seed(0)
        policy = build_policy(small_config(device="cuda"), "cuda")
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="(torch.compile of the env step|CUDA graph capture)")
            collector = RolloutCollector(
                policy, params, 64, 7, 3, 0, torch.device("cuda"), cuda_graph=fast, compile_env=fast
            )
            rollouts.append([collector.collect(), collector.collect()])
        collectors.append(collector)
    assert collectors[0].env_compiled and collectors[0]._graph is not None
    for got, expected in zip(*rollouts):
        for field in ROLLOUT_FIELDS:
            a, b = getattr(got, field), getattr(expected, field)
            if field in ("log_prob", "value"):
                torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
            else:
                assert torch.equal(a, b), field


def _plain_episodes(policy, params, n, seed, greedy, first_episode=0):
    """What an evaluation batch computes, written as a plain loop: per-episode successes and
    returns and the final recurrent state, for episodes ``first_episode ..`` (greedy, or sampled
    from noise hashed from (seed, episode, step))."""
    from mamba_rl.envs import delayed_memory_init, delayed_memory_observe, delayed_memory_reset, delayed_memory_step
    from mamba_rl.envs.delayed_memory import _seed_key, mix32
    from mamba_rl.evaluate import hashed_noise

    env = delayed_memory_init(first_episode + n, params, seed, "cpu")
    # episode i is env i of one batch holding every episode
    env = env._replace(**{f: getattr(env, f)[first_episode:] for f in env._fields})
    assert torch.equal(env.stream, mix32((first_episode + torch.arange(n)) ^ _seed_key(seed)))
    env = delayed_memory_reset(env, None, params)
    obs, _ = delayed_memory_observe(env, params)
    state, reset = policy.zero_state(n, "cpu"), torch.ones(n, dtype=torch.bool)
    successes, returns = torch.zeros(n, dtype=torch.int64), torch.zeros(n)
    episode = first_episode + torch.arange(n)
    head = policy.action_dist
    for step in range(params.max_episode_steps):
        logits, _, state = policy.step(obs, state, reset)
        if greedy:
            action = head.mode(logits)
        else:
            noise = hashed_noise(mix32(seed), episode, torch.full((n,), step), head.noise_shape, normal=False)
            action, _ = head.sample(logits, noise)
        env, obs, reward, _, _, success = delayed_memory_step(env, action, params)
        successes += success
        returns += reward
        reset = torch.zeros_like(reset)
    return successes, returns, state


# the bits head guards the evaluation that took the argmax of the actor's outputs as the action:
# with one output per bit it answered a bit's index, and a trained 8-bit policy scored 0
@pytest.mark.parametrize("discrete_head", ["categorical", "bits"])
@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_evaluation_batch_steps_as_a_plain_loop_does(mode, discrete_head):
    from mamba_rl import evaluate

    torch.manual_seed(0)
    policy = build_policy(small_config(discrete_head=discrete_head), "cpu").eval()
    params = DelayedMemoryParams(num_bits=2, horizon=(3, 9))
    greedy = mode == "greedy"
    batch = evaluate._EpisodeBatch(policy, params, 6, 5, greedy, torch.device("cpu"), first_episode=2)
    with torch.no_grad():
        batch.run(cuda_graph=False)
        successes, returns, state = _plain_episodes(policy, params, 6, 5, greedy, first_episode=2)
    assert torch.equal(batch.successes, successes) and torch.equal(batch.returns, returns)
    for name in state:
        assert torch.equal(batch.state[name], state[name]), name


@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_memory_evaluation_does_not_depend_on_num_envs(mode):
    from mamba_rl.evaluate import evaluate_policy

    torch.manual_seed(0)
    policy = build_policy(small_config(), "cpu").eval()
    params = DelayedMemoryParams(num_bits=2, horizon=(3, 9))
    results = [evaluate_policy(policy, params, 10, greedy=mode == "greedy", seed=5, num_envs=n) for n in (10, 4, 1)]
    with torch.no_grad():
        successes, returns, _ = _plain_episodes(policy, params, 10, 5, mode == "greedy")
    for result in results:
        assert result["successes"] == int(successes.sum())
        assert result["mean_return"] == pytest.approx(float(returns.sum()) / 10, abs=1e-6)


def test_truncated_and_whole_episode_backprop_agree_when_episodes_fit_in_chunks():
    torch.manual_seed(0)
    policy = build_policy(small_config(), "cpu")
    params = DelayedMemoryParams(num_bits=2, horizon=6)
    # chunks of horizon + 2 steps: every episode is exactly one chunk
    collector = RolloutCollector(policy, params, 4, 8, 3, 0, torch.device("cpu"), cuda_graph=False)
    rollout = collector.collect()
    assert bool(rollout.is_init[:, ::8].all())
    grads = {}
    for mode in ("chunk", "episode"):
        policy.zero_grad()
        logits, value = replay(policy, rollout, torch.arange(4), backprop=mode)
        (logits.square().mean() + value.square().mean()).backward()
        grads[mode] = [p.grad.clone() for p in policy.parameters()]
    for a, b in zip(grads["chunk"], grads["episode"]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_resume_continues_the_identical_run(tmp_path, device):
    # on CUDA the checkpoint is loaded with map_location="cuda": the RNG states must come back to the CPU
    torch.manual_seed(0)
    full = train(small_config(num_updates=3, device=device), tmp_path / "full", verbose=False)
    train(small_config(num_updates=2, device=device), tmp_path / "split", verbose=False)
    resumed = train(small_config(num_updates=3, device=device), tmp_path / "split", resume=True, verbose=False)
    a = torch.load(full.run_dir / "checkpoint.pt", weights_only=False)["policy"]
    b = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=False)["policy"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_metrics_name_the_training_devices_apart_from_the_evaluations(tmp_path):
    """A run trained on one machine and evaluated on another (a sweep's evaluate step): metrics.json
    names the devices that trained it, from the checkpoint's history, and the evaluation's device
    apart, so a table of training times never attributes them to the evaluating machine."""
    from mamba_rl.io import load_checkpoint, save_checkpoint

    run = tmp_path / "run"
    first = train(small_config(num_updates=2), run, verbose=False)
    assert first.metrics["train_device_names"] == ["cpu"] and first.metrics["eval_device_name"] is None
    payload = load_checkpoint(run / "checkpoint.pt")
    for entry in payload["history"]:
        entry["device_name"] = "FakeGPU"
    save_checkpoint(payload, run / "checkpoint.pt")
    evaluated = train(small_config(num_updates=2, eval_episodes=4), run, resume=True, verbose=False)
    metrics = evaluated.metrics
    assert metrics["updates"] == 2 and metrics["evaluation"]
    assert metrics["train_device_names"] == ["FakeGPU"]
    assert (metrics["eval_device_name"], metrics["device_name"]) == ("cpu", "cpu")


def shrunk_overrides(preset):
    """``key=value`` overrides that keep a preset's shape (env, model, loss) and make its run tiny:
    the memory task at a short delay; other envs for a few short chunks and episodes."""
    shrink = (
        ["horizon=5", "eval_horizons=[3]", "eval_episodes=8"]
        if load_config(preset).is_memory_task
        else ["chunk_len=8", "num_minibatches=2", "eval_episodes=2"]
    )
    return [
        "device=cpu",
        "num_envs=4",
        "num_updates=1",
        "eval_num_envs=8",
        "progress_bar=false",
        "max_wall_time_s=null",
        "target_accuracy=null",
        *shrink,
    ]


def distinct_shapes(presets):
    """One preset per distinct shrunk config: presets that differ only in values the shrinking
    overrides (a delay range, its evaluation delays) or in their name train the same shape."""
    shapes = {}
    for preset in presets:
        values = config_to_dict(load_config(preset, shrunk_overrides(preset)))
        values.pop("exp_name")
        shapes.setdefault(json.dumps(values, sort_keys=True, default=str), preset)
    return list(shapes.values())


def test_presets_that_train_the_same_shape_are_run_once():
    shapes = distinct_shapes(PRESETS)
    names = {preset.stem for preset in shapes}
    # h5000/h10000/h20000 differ only in their delay range and evaluation delays
    assert len(names & {"h5000_gpu", "h10000_gpu", "h20000_gpu"}) == 1
    assert {"h1000_gpu", "quick_cpu", "cartpole", "pendulum", "popgym_repeat_first_easy"} <= names


@pytest.mark.parametrize("preset", distinct_shapes(PRESETS), ids=lambda p: p.stem)
def test_each_preset_shape_runs_on_cpu(preset, tmp_path):
    env = load_config(preset).env
    if env.startswith("popgym"):
        pytest.importorskip("popgym")
    overrides = [arg for value in shrunk_overrides(preset) for arg in ("--set", value)]
    code = cli.main(["--config", str(preset), "--run-dir", str(tmp_path / "run"), *overrides])
    assert code == 0
    assert (tmp_path / "run" / "metrics.json").stat().st_size > 0
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_sweep_writes_table_and_plot(tmp_path):
    code = cli.main(
        [
            "--set",
            "device=cpu",
            "--set",
            "num_envs=4",
            "--set",
            "num_updates=1",
            "--set",
            "eval_episodes=8",
            "--set",
            "eval_num_envs=8",
            "--set",
            "progress_bar=false",
            "--set",
            "d_model=16",
            "--set",
            "num_bits=2",
            "--controllers",
            "mamba",
            "gru",
            "--horizons",
            "3",
            "5",
            "--seeds",
            "0",
            "--sweep-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    table = (tmp_path / "results.md").read_text()
    assert table.count("| mamba |") == 4 and table.count("| gru |") == 4
    assert (tmp_path / "results.csv").read_text().count("\n") == 5
    assert (tmp_path / "accuracy_vs_horizon.png").stat().st_size > 0


def test_sweep_over_a_range_preset_keeps_the_low_end(tmp_path):
    from mamba_rl.training.sweep import cell_horizon

    assert cell_horizon(50, 1000) == 1000
    assert cell_horizon([1, 50], 1000) == [1, 1000]
    assert cell_horizon([100, 200], 50) == [50, 50]
    assert cell_horizon(50, [2, 9]) == [2, 9]
    code = cli.main(
        [
            "--set",
            "device=cpu",
            "--set",
            "num_envs=4",
            "--set",
            "num_updates=1",
            "--set",
            "eval_episodes=8",
            "--set",
            "eval_num_envs=8",
            "--set",
            "progress_bar=false",
            "--set",
            "d_model=16",
            "--set",
            "num_bits=2",
            "--set",
            "horizon=[1,4]",
            "--controllers",
            "mamba",
            "--horizons",
            "6",
            "--sweep-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[1].startswith("mamba,6,1-6,0,")
    metrics = json.loads((tmp_path / "mamba__h1-6__s0" / "metrics.json").read_text())
    assert metrics["horizon"] == [1, 6] and "6" in metrics["evaluation"]
    # delays from a range: the progress also holds the long episodes' own accuracy
    header = (tmp_path / "mamba__h1-6__s0" / "progress.csv").read_text().splitlines()[0].split(",")
    assert "train/accuracy_long" in header and "train/episodes_long" in header


def test_rollout_statistics_count_the_long_episodes_apart():
    # two envs, 4 steps: four episodes end, lengths 2, 8, 3 and 9; the long two (>= 5) one right
    done = torch.tensor([[False, True, False, True], [True, False, False, True]])
    success = torch.tensor([[False, True, False, False], [True, False, False, True]])
    length = torch.tensor([[0, 2, 0, 8], [3, 0, 0, 9]])
    rollout = SimpleNamespace(
        done=done,
        success=success,
        episode_return=success.float(),
        episode_length=torch.where(done, length, 0),
        value=torch.zeros(2, 4),
    )
    returns = torch.arange(8.0).reshape(2, 4)
    stats = rollout_statistics(rollout, returns, {}, long_episode_length=5)
    assert stats["train/accuracy"].item() == 0.75
    assert stats["train/episodes_long"].item() == 2 and stats["train/accuracy_long"].item() == 0.5
    assert "train/accuracy_long" not in rollout_statistics(rollout, returns, {})


def test_accuracy_target_waits_for_the_long_episodes_of_a_range():
    cfg = TrainConfig(target_accuracy=0.95, target_window=2)

    def entry(accuracy, accuracy_long, episodes_long):
        return {"accuracy": accuracy, "accuracy_long": accuracy_long, "episodes_long": episodes_long}

    short_only = [entry(0.99, 0.5, 10.0), entry(0.99, 0.6, 10.0)]
    assert _on_target(short_only, cfg, tracks_long=False)
    # the short delays reach the target, the long ones do not
    assert not _on_target(short_only, cfg, tracks_long=True)
    # pooled over the window: 19 of 20 right although one update had 0.5 on two episodes
    pooled = [entry(0.99, 1.0, 18.0), entry(0.99, 0.5, 2.0)]
    assert _on_target(pooled, cfg, tracks_long=True)
    # no long episode ended in the window: not on target
    assert not _on_target([entry(0.99, None, 0.0), entry(0.99, None, 0.0)], cfg, tracks_long=True)
    assert not _on_target(pooled[:1], cfg, tracks_long=True)
    assert not _on_target([entry(0.9, 1.0, 18.0), entry(0.99, 1.0, 18.0)], cfg, tracks_long=True)


def test_unknown_config_key_lists_the_valid_ones(capsys):
    assert cli.main(["--set", "horizn=5"]) == 2
    err = capsys.readouterr().err
    assert "horizn" in err and "valid keys" in err and "horizon" in err
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("configs/nope.yaml")


def test_the_trainers_mamba_keys_build_the_mamba_config_with_its_defaults_and_checks():
    assert TrainConfig().mamba_config() == MambaConfig(preset="mamba_ssm")
    cfg = load_config(None, ["mamba_preset=rl", "d_model=16", "mamba_backend=torch", "dt_min=1e-6"])
    assert cfg.mamba_config() == MambaConfig(d_model=16, backend="torch", dt_min=1e-6)
    with pytest.raises(ConfigError, match="dt_init_floor must be in"):
        load_config(None, ["dt_min=1e-3", "dt_init_floor=1e-2"])


def test_eval_cli_errors_on_missing_and_corrupt_checkpoints(tmp_path, capsys):
    assert eval_main(["--checkpoint", str(tmp_path / "missing.pt")]) != 0
    assert "missing.pt" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert eval_main(["--checkpoint", str(bad)]) != 0
    assert "bad.pt" in capsys.readouterr().err


def test_trainer_logs_a_state_picture_to_tensorboard_now_and_then(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(small_config(num_updates=2, tensorboard=True, state_figure_interval=2), tmp_path / "run", verbose=False)
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("states/summary")
    assert len(images) == 1 and len(images[0].encoded_image_string) > 1000


@pytest.mark.parametrize("end", ["terminate", "truncate"])
def test_time_limit_truncation_bootstraps_from_the_final_observation_and_termination_does_not(end):
    from mamba_rl.policies import make_train_env
    from tests.envs.test_adapters import ID  # registers the hand-made Countdown env

    torch.manual_seed(0)
    cfg = small_config(env=ID, env_kwargs={"length": 3, "end": end}, policy_mask_key=None)
    env = make_train_env(cfg, 2, "cpu")
    policy = build_policy(cfg, "cpu", env)
    # 4 steps: the episode's 3 steps, the 3rd ending it, then the first step of the next one
    collector = RolloutCollector(policy, env, 2, 4, 1, 0, torch.device("cpu"), cuda_graph=False)
    rollout = collector.collect()
    env.close()
    assert rollout.done[:, 2].all() and rollout.terminated[:, 2].all() == (end == "terminate")
    gamma = 0.5
    adv, _ = compute_gae(
        rollout.reward,
        rollout.value,
        rollout.done,
        rollout.bootstrap_value,
        gamma,
        0.0,
        rollout.terminated,
        rollout.final_value,
    )
    # V(final observation [1, 1] | the episode's history), from the sequence path
    obs = torch.tensor([[0.0, 1.0], [1 / 3, 1.0], [2 / 3, 1.0], [1.0, 1.0]]).expand(2, 4, 2)
    reset = torch.tensor([[True, False, False, False]] * 2)
    with torch.no_grad():
        _, values, _ = policy.sequence(obs, policy.zero_state(2), reset)
    final_value = values[:, 3]
    next_value = final_value if end == "truncate" else torch.zeros(2)
    torch.testing.assert_close(adv[:, 2], 1.0 + gamma * next_value - rollout.value[:, 2])
    # TD(0) inside the episode: the next step's value
    torch.testing.assert_close(adv[:, :2], 1.0 + gamma * rollout.value[:, 1:3] - rollout.value[:, :2])
    if end == "truncate":
        assert final_value.abs().min() > 1e-4
        torch.testing.assert_close(rollout.final_value[:, 2], final_value)


def test_gaussian_head_log_prob_matches_torch_normal_and_actions_reach_a_box_env():
    from mamba_rl.policies import GaussianHead

    head = GaussianHead(2)
    with torch.no_grad():
        head.log_std.copy_(torch.tensor([-0.5, 0.3]))
    mean, noise = torch.randn(5, 2), torch.randn(5, 2)
    action, log_prob = head.sample(mean, noise)
    normal = torch.distributions.Normal(mean, head.log_std.exp())
    torch.testing.assert_close(log_prob, normal.log_prob(action).sum(-1))
    got, entropy = head.log_prob_entropy(mean, action)
    torch.testing.assert_close(got, log_prob)
    torch.testing.assert_close(entropy, normal.entropy().sum(-1))


@pytest.mark.parametrize("controller", ["mamba", "gru"])
def test_train_on_popgym_runs_checkpoints_and_reports_returns(controller, tmp_path):
    pytest.importorskip("popgym")
    result = train(
        small_config(
            env="popgym-RepeatFirstEasy-v0",
            controller=controller,
            num_envs=4,
            chunk_len=32,
            num_updates=2,
            eval_episodes=4,
            eval_num_envs=2,
        ),
        tmp_path / "run",
        verbose=False,
    )
    metrics = result.metrics
    assert metrics["env"] == "popgym-RepeatFirstEasy-v0" and metrics["train_return_max"] is not None
    assert -1.0 - 1e-5 <= metrics["eval_return_greedy"] <= 1.0 + 1e-5 and metrics["eval_return_greedy_ci95"] >= 0
    assert eval_main(["--checkpoint", str(result.run_dir), "--episodes", "3", "--device", "cpu"]) == 0


def test_box_actions_collect_and_replay_to_the_same_log_probs():
    torch.manual_seed(0)
    from mamba_rl.policies import GaussianHead, make_train_env

    cfg = small_config(env="Pendulum-v1", controller="gru", gru_hidden_size=16)
    env = make_train_env(cfg, 2, "cpu")
    policy = build_policy(cfg, "cpu", env)
    assert isinstance(policy.action_dist, GaussianHead)
    rollout = RolloutCollector(policy, env, 2, 8, 1, 0, torch.device("cpu"), cuda_graph=False).collect()
    env.close()
    assert rollout.action.shape == (2, 8, 1) and rollout.action.dtype == torch.float32
    logits, _ = replay(policy, rollout, torch.arange(2))
    log_prob, _ = policy.action_dist.log_prob_entropy(logits, rollout.action)
    torch.testing.assert_close(log_prob, rollout.log_prob, atol=1e-5, rtol=1e-5)


def test_evaluation_episodes_do_not_depend_on_num_envs():
    from mamba_rl.evaluate import evaluate_env

    torch.manual_seed(0)
    cfg = small_config(env="CartPole-v1", controller="gru", gru_hidden_size=16)
    policy = build_policy(cfg, "cpu")
    results = [evaluate_env(policy, cfg, 7, num_envs=n, seed=3) for n in (1, 3)]
    for mode in ("greedy", "sampled"):
        a, b = results[0][mode], results[1][mode]
        assert a["mean_return"] == pytest.approx(b["mean_return"])
        assert a["return_ci95"] == pytest.approx(b["return_ci95"])


def test_env_kwargs_are_set_one_key_at_a_time():
    cfg = load_config(None, ["env=CartPole-v1", "env_kwargs.sutton_barto_reward=true", "env_kwargs.render_mode=null"])
    assert cfg.env_kwargs == {"sutton_barto_reward": True, "render_mode": None} and not cfg.is_memory_task
    assert cfg.resolved_chunk_len == 128


def test_cli_unknown_env_id_names_the_closest_ids(tmp_path, capsys):
    assert cli.main(["--env", "CartPole-v9", "--run-dir", str(tmp_path / "run"), "--set", "device=cpu"]) == 2
    assert "closest registered ids: CartPole-v1" in capsys.readouterr().err


def test_resume_on_a_host_env_goes_on_from_the_checkpoint(tmp_path):
    cfg = dict(env="CartPole-v1", controller="gru", gru_hidden_size=16, num_envs=2, chunk_len=8, num_minibatches=1)
    train(small_config(num_updates=1, **cfg), tmp_path / "run", verbose=False)
    resumed = train(small_config(num_updates=2, **cfg), tmp_path / "run", resume=True, verbose=False)
    assert resumed.metrics["updates"] == 2 and resumed.metrics["global_step"] == 2 * 2 * 8
