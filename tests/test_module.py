"""MambaModule's contract: the acceptance tests of the stateful module (issue 2)."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import InitTracker, TransformedEnv
from torchrl.modules import MLP, ProbabilisticActor, ValueOperator, set_recurrent_mode
from torchrl.modules.utils import get_primers_from_module
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from mamba_rl import MambaConfig, MambaModule
from mamba_rl.state import MambaState
from tests.conftest import assert_close, step_through
from tests.toy_env import RandomEndEnv

# CPU runs the float64 reference; CUDA runs float32 through backend="auto" (Triton when present)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def make_module(device="cpu", **kwargs):
    torch.manual_seed(0)
    kwargs = {"num_layers": 2, "d_state": 4, **kwargs}
    if device == "cpu":
        return MambaModule(5, 8, in_key="obs", out_key="feat", backend="torch", dtype=torch.float64, **kwargs)
    return MambaModule(5, 8, in_key="obs", out_key="feat", backend="auto", device=device, **kwargs)


def sequence_td(batch_shape, steps, resets, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (*batch_shape, steps)
    is_init = torch.zeros(*shape, 1, dtype=torch.bool)
    for t in resets:
        is_init[..., t, :] = True
    obs = torch.randn(*shape, 5, generator=g, dtype=torch.float64)
    td = TensorDict(obs=obs, is_init=is_init, batch_size=shape)
    return td if device == "cpu" else td.to(device).apply(lambda t: t.float() if t.is_floating_point() else t)


def assert_close_on(device, actual, expected):
    if device == "cpu":
        assert_close(actual, expected)
    else:
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_shape", [(), (4,), (2, 3)], ids=["B[]", "B[4]", "B[2,3]"])
@pytest.mark.parametrize("resets", [[0], [0, 4], [0, 3, 9]], ids=str)
def test_step_calls_equal_one_recurrent_call(batch_shape, resets, device):
    module = make_module(device)
    td = sequence_td(batch_shape, 10, resets, device)
    with set_recurrent_mode(True):
        expected = module(td.clone())["feat"]
    for t, carry in enumerate(step_through(module, td, 10)):
        assert_close_on(device, carry["feat"], expected[..., t, :])


def test_recurrent_mode_reads_stored_state_when_row_does_not_start_with_is_init():
    module = make_module()
    td = sequence_td((3,), 12, [0])
    with set_recurrent_mode(True):
        whole = module(td.clone())["feat"]
    # state after 5 steps, by stepping
    *_, carry = step_through(module, td, 5)
    tail = td[:, 5:].clone()
    tail["recurrent_state_ssm"] = carry["next", "recurrent_state_ssm"].unsqueeze(1).expand(3, 7, 2, 16, 4).clone()
    tail["recurrent_state_conv"] = carry["next", "recurrent_state_conv"].unsqueeze(1).expand(3, 7, 2, 16, 3).clone()
    with set_recurrent_mode(True):
        assert_close(module(tail)["feat"], whole[:, 5:])


def test_recurrent_mode_writes_no_per_step_state():
    module = make_module()
    td = sequence_td((2,), 6, [0])
    with set_recurrent_mode(True):
        out = module(td)
    assert ("next", "recurrent_state_ssm") not in out.keys(True)
    assert out["feat"].shape == (2, 6, 8)


def make_collector_policy(device="cpu"):
    backend = "torch" if device == "cpu" else "auto"
    module = MambaModule(
        5, 16, num_layers=2, d_state=8, in_key="observation", out_key="features", backend=backend, device=device
    )
    head = TensorDictModule(nn.Linear(16, 3, device=device), in_keys=["features"], out_keys=["logits"])
    actor = ProbabilisticActor(
        TensorDictSequential(module, head),
        in_keys=["logits"],
        out_keys=["action"],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )
    return module, actor


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("registration", ["explicit", "auto"])
def test_collector_batch_replays_in_recurrent_mode(registration, device):
    torch.manual_seed(0)
    module, actor = make_collector_policy(device)
    if registration == "explicit":
        env = TransformedEnv(RandomEndEnv(batch=4, p_end=0.15, device=device), InitTracker())
        env.append_transform(get_primers_from_module(actor))
        collector = Collector(env, actor, frames_per_batch=4 * 20, total_frames=3 * 4 * 20)
    else:
        collector = Collector(
            RandomEndEnv(batch=4, p_end=0.15, device=device),
            actor,
            frames_per_batch=4 * 20,
            total_frames=3 * 4 * 20,
            auto_register_policy_transforms=True,
        )
    batches = [data.clone() for data in collector]
    collector.shutdown()
    assert any(not bool(b["is_init"][:, 0].all()) for b in batches[1:]), "some rows must start mid-episode"
    assert any(bool(b["is_init"][:, 1:].any()) for b in batches), "some resets must fall inside rows"
    for data in batches:
        assert data.batch_size == (4, 20)
        replay = data.exclude("features", "logits", "action_log_prob")
        with torch.no_grad(), set_recurrent_mode(True):
            replayed = module(replay)["features"]
        assert (replayed - data["features"]).abs().max() <= 1e-5


def test_primer_follows_the_env_device():
    # the primer is made without a device and registers the state on the env's device
    module, actor = make_collector_policy("cpu")
    primer = module.make_tensordict_primer()
    assert primer.primers.device is None
    env = TransformedEnv(RandomEndEnv(batch=2, device="cpu"), InitTracker())
    env.append_transform(primer)
    td = env.reset()
    assert primer.primers.device == torch.device("cpu")
    assert td["recurrent_state_ssm"].device == torch.device("cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_recurrent_mode_restarts_from_the_state_stored_at_each_is_init_step(device):
    # TorchRL's rule (GRUModule, LSTMModule, and GAE on the "next" TensorDict): an is_init step
    # inside a row restarts from the state stored at that step; nothing from before reaches past it
    module = make_module(device)
    td = sequence_td((2,), 10, [0, 6], device)
    dtype = td["obs"].dtype
    td["recurrent_state_ssm"] = torch.randn(2, 10, 2, 16, 4, dtype=dtype, device=device)
    td["recurrent_state_conv"] = torch.randn(2, 10, 2, 16, 3, dtype=dtype, device=device)
    with set_recurrent_mode(True):
        out = module(td.clone())["feat"]
        changed = td.clone()
        changed["obs"][:, :6] = torch.randn(2, 6, 5, dtype=dtype, device=device)
        changed["recurrent_state_ssm"][:, :6].normal_()
        changed["recurrent_state_conv"][:, 7:].normal_()
        out_changed = module(changed)["feat"]
        # the tail alone, entering from the state stored at step 6
        tail = module(td[:, 6:].clone())["feat"]
    assert_close_on(device, out[:, 6:], out_changed[:, 6:])
    assert_close_on(device, out[:, 6:], tail)
    # the stored state at the reset slot is the restart state: it changes what follows
    with set_recurrent_mode(True):
        moved = td.clone()
        moved["recurrent_state_ssm"][:, 6] += 1.0
        assert (module(moved)["feat"][:, 6:] - out[:, 6:]).abs().max() > 1e-3
    # step mode: the stored state of a starting env is ignored (as GRUModule: zeroed at is_init)
    step = td[:, 6].clone()
    noisy = module(step.clone())["feat"]
    step.exclude("recurrent_state_ssm", "recurrent_state_conv", inplace=True)
    assert_close_on(device, noisy, module(step)["feat"])


def test_recurrent_mode_gradients_reach_the_states_stored_at_resets():
    module = make_module()
    td = sequence_td((2,), 8, [0, 5])
    ssm = torch.randn(2, 8, 2, 16, 4, dtype=torch.float64, requires_grad=True)
    conv = torch.randn(2, 8, 2, 16, 3, dtype=torch.float64, requires_grad=True)
    td["recurrent_state_ssm"], td["recurrent_state_conv"] = ssm, conv
    with set_recurrent_mode(True):
        module(td)["feat"].sum().backward()
    for grad in (ssm.grad, conv.grad):
        touched = grad.flatten(2).abs().sum(-1) > 0
        # only the states entering t = 0 and the reset at t = 5 are read
        assert touched[:, [0, 5]].all() and not touched[:, [1, 2, 3, 4, 6, 7]].any()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_reset_clears_non_finite_inputs_and_states_before_it(bad):
    # regression: a non-finite observation or state before a reset must not survive the reset,
    # on the sequence path nor the step path, and must not reach other environments
    module = make_module()
    td = sequence_td((3,), 9, [0, 5])
    x, reset = td["obs"].clone(), td["is_init"].squeeze(-1)
    x[0, 2] = bad
    state = module.zero_state((3,))
    state.ssm[0] = bad
    state.conv[0] = bad
    out, final = module.sequence(x, state, reset)
    stepped, carry = [], state
    for t in range(9):
        y, carry = module.step(x[:, t], carry, reset[:, t])
        stepped.append(y)
    stepped = torch.stack(stepped, 1)
    assert not torch.isfinite(out[0, :5]).all()
    assert torch.isfinite(out[0, 5:]).all() and torch.isfinite(out[1:]).all()
    assert torch.isfinite(final.ssm).all() and torch.isfinite(final.conv).all()
    assert_close(stepped[:, 5:], out[:, 5:])
    assert_close(stepped[1:], out[1:])
    assert_close(carry.ssm, final.ssm)
    assert_close(carry.conv, final.conv)
    clean = module.sequence(x[:, 5:], None, reset[:, 5:])[0]
    assert_close(out[:, 5:], clean)


def test_ppo_loss_and_gae_run_and_reach_every_parameter():
    torch.manual_seed(0)
    module, actor = make_collector_policy()
    critic_trunk = MambaModule(
        5,
        16,
        d_state=8,
        backend="torch",
        in_keys=["observation", "critic_ssm", "critic_conv", "is_init"],
        out_keys=["critic_features", ("next", "critic_ssm"), ("next", "critic_conv")],
    )
    critic = TensorDictSequential(
        critic_trunk, ValueOperator(MLP(in_features=16, out_features=1, num_cells=[16]), in_keys=["critic_features"])
    )
    env = TransformedEnv(RandomEndEnv(batch=4, p_end=0.15), InitTracker())
    env.append_transform(get_primers_from_module(actor))
    collector = Collector(env, actor, frames_per_batch=4 * 16, total_frames=4 * 16)
    data = next(iter(collector)).clone()
    collector.shutdown()
    gae = GAE(gamma=0.99, lmbda=0.95, value_network=critic, deactivate_vmap=True, shifted=False)
    with set_recurrent_mode(True):
        gae(data)
    assert data["advantage"].shape == (4, 16, 1) and torch.isfinite(data["advantage"]).all()
    loss_fn = ClipPPOLoss(actor, critic, entropy_coeff=0.01)
    losses = loss_fn(data)
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    total.backward()
    for name, param in list(actor.named_parameters()) + list(critic.named_parameters()):
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("layers", [1, 3])
@torch.no_grad()
def test_step_in_place_equals_the_pure_step(layers):
    module = make_module(num_layers=layers)
    g = torch.Generator().manual_seed(3)
    state = MambaState(
        torch.randn(4, layers, 16, 4, generator=g, dtype=torch.float64),
        torch.randn(4, layers, 16, 3, generator=g, dtype=torch.float64),
    )
    buffers = MambaState(state.ssm.clone(), state.conv.clone())
    for t in range(3):
        x = torch.randn(4, 5, generator=g, dtype=torch.float64)
        reset = torch.tensor([t == 1, False, True, False])
        out, state = module.step(x, state, reset)
        out_ip, new = module.step(x, buffers, reset, out_state=buffers)
        assert new.ssm is buffers.ssm and new.conv is buffers.conv
        assert_close(out_ip, out)
        assert_close(buffers.ssm, state.ssm)
        assert_close(buffers.conv, state.conv)


def test_gradients_into_initial_state_match_finite_differences():
    module = make_module(num_layers=2, d_state=2, expand=1)
    td = sequence_td((2,), 5, [3])

    def f(ssm, conv):
        out, final = module.sequence(td["obs"], MambaState(ssm, conv), td["is_init"].squeeze(-1))
        return out, final.ssm, final.conv

    ssm = torch.randn(2, 2, 8, 2, dtype=torch.float64, requires_grad=True)
    conv = torch.randn(2, 2, 8, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (ssm, conv))


def test_bad_inputs_and_constructor_values_name_the_argument():
    module = make_module()
    td = sequence_td((2,), 3, [0])[:, 0]
    bad = td.clone()
    bad["obs"] = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"'obs' must have shape \[B, input_size\] with input_size=5, got \[2, 4\]"):
        module(bad)
    bad = td.clone()
    bad["obs"] = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(TypeError, match="'obs' must be a floating-point tensor, got dtype torch.int64"):
        module(bad)
    bad = td.clone()
    bad["recurrent_state_ssm"] = torch.zeros(2, 2, 16, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"'recurrent_state_ssm' must have shape \[2, 2, 16, 4\], got \[2, 2, 16, 3\]"):
        module(bad)
    with pytest.raises(KeyError, match="InitTracker"):
        module(td.exclude("is_init"))
    with pytest.raises(ValueError, match="num_layers must be a positive int, got 0"):
        MambaModule(5, 8, num_layers=0)
    with pytest.raises(ValueError, match="input_size must be a positive int, got -3"):
        MambaModule(-3, 8)
    with pytest.raises(ValueError, match="out_keys must name the state entries"):
        MambaModule(5, 8, in_key="x", out_keys=["x", ("next", "a"), ("next", "b")])
    with pytest.raises(ValueError, match="norm must be 'rmsnorm' or 'layernorm', got 'batchnorm'"):
        MambaModule(5, 8, in_key="x", out_key="y", norm="batchnorm")


def test_module_from_a_config_equals_the_module_from_its_keywords():
    config = MambaConfig(d_model=8, num_layers=2, d_state=4, preset="mamba_ssm", norm="layernorm")
    keys = {"in_key": "obs", "out_key": "feat"}
    torch.manual_seed(0)
    from_config = MambaModule(5, config=config, **keys)
    torch.manual_seed(0)
    from_keywords = MambaModule(5, 8, 2, d_state=4, preset="mamba_ssm", norm="layernorm", **keys)
    assert from_config.config == from_keywords.config == config
    assert from_config.state_dict().keys() == from_keywords.state_dict().keys()
    for name, value in from_config.state_dict().items():
        assert torch.equal(value, from_keywords.state_dict()[name]), name
    assert all(block.mixer.config == config for block in from_config.layers)
    from_config.backend = "torch"
    assert all(block.mixer.backend == "torch" for block in from_config.layers)
    with pytest.raises(ValueError, match="hidden_size=16 differs from config.d_model=8"):
        MambaModule(5, 16, config=config, **keys)
    with pytest.raises(ValueError, match=r"not both: got config and \['num_layers'\]"):
        MambaModule(5, 8, 3, config=config, **keys)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['dstate'\]"):
        MambaModule(5, 8, dstate=4, **keys)


def test_the_state_is_one_type_with_ssm_first_from_mixer_to_policy():
    from mamba_rl.policies import make_actor_critic

    module = MambaModule(3, 8, num_layers=2, d_state=4, in_key="obs", out_key="feat", backend="torch")
    stacked = module.zero_state((5,))
    layer = module.layers[0].mixer.zero_state((5,))
    assert type(stacked) is type(layer) is MambaState and MambaState._fields == ("ssm", "conv")
    assert stacked.layer(1).ssm.shape == layer.ssm.shape == (5, 16, 4)
    assert stacked.layer(1).conv.shape == layer.conv.shape == (5, 16, 3)
    again = MambaState.stack([stacked.layer(0), stacked.layer(1)])
    assert torch.equal(again.ssm, stacked.ssm) and torch.equal(again.conv, stacked.conv)
    _, after = module.step(torch.randn(5, 3), stacked, torch.zeros(5, dtype=torch.bool))
    assert type(after) is MambaState
    policy = make_actor_critic("mamba", 3, 4, d_model=8, shared_trunk=False, backend="torch")
    assert type(policy.actor_trunk.zero_state(2)) is MambaState
    assert list(policy.zero_state(2)) == ["actor.ssm", "actor.conv", "critic.ssm", "critic.conv"]
