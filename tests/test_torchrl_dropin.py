"""MambaModule as a drop-in for TorchRL's GRUModule / LSTMModule: value estimators, API, dtype."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import InitTracker, TransformedEnv
from torchrl.modules import GRUModule, LSTMModule, ValueOperator, set_recurrent_mode
from torchrl.modules.utils import get_primers_from_module
from torchrl.objectives.value import GAE
from torchrl.objectives.value.functional import generalized_advantage_estimate

from mamba_rl import MambaModule
from tests.conftest import step_through
from tests.toy_env import RandomEndEnv

GAMMA, LMBDA = 0.9, 0.8


def make_trunk(kind):
    torch.manual_seed(0)
    # TorchRL's "pad" backend splits rows on the host, which torch.vmap cannot run; "scan" can
    if kind == "gru":
        return GRUModule(5, 8, in_key="observation", out_key="features", recurrent_backend="scan")
    if kind == "lstm":
        return LSTMModule(5, 8, in_key="observation", out_key="features", recurrent_backend="scan")
    return MambaModule(5, 8, num_layers=2, d_state=4, in_key="observation", out_key="features", backend="torch")


def collect(trunk, batches=2, steps=12):
    """Batches ``[3, steps]`` of a policy whose critic trunk is stepped by the Collector, so that
    the critic's states are stored at every step (and under ``"next"``)."""
    critic = TensorDictSequential(trunk, ValueOperator(nn.Linear(8, 1), in_keys=["features"]))
    act = TensorDictModule(lambda v: (v[..., 0] > 0).long(), in_keys=["state_value"], out_keys=["action"])
    env = TransformedEnv(RandomEndEnv(batch=3, p_end=0.2, seed=1), InitTracker())
    env.append_transform(get_primers_from_module(critic))
    collector = Collector(
        env, TensorDictSequential(critic, act), frames_per_batch=3 * steps, total_frames=batches * 3 * steps
    )
    data = [d.clone() for d in collector]
    collector.shutdown()
    return critic, data


@torch.no_grad()
def stepped_advantage(critic, data):
    """GAE from values of the critic stepped one step at a time on the collected states: V(s_t)
    from the state stored at t, V(s_{t+1}) from the state stored under ``("next", ...)`` at t."""
    keys = [k for k in critic.in_keys if k != "is_init"] + ["is_init"]
    values, next_values = [], []
    for t in range(data.shape[-1]):
        values.append(critic(data[:, t].select(*keys).clone())["state_value"])
        following = data["next"][:, t].select(*keys, strict=False).clone()
        following.setdefault("is_init", torch.zeros_like(data["is_init"][:, t]))
        next_values.append(critic(following)["state_value"])
    value, next_value = torch.stack(values, 1), torch.stack(next_values, 1)
    return generalized_advantage_estimate(
        GAMMA,
        LMBDA,
        value,
        next_value,
        data["next", "reward"],
        data["next", "done"],
        data["next", "terminated"],
    )[0]


# GRUModule cannot run under torch.vmap in TorchRL 0.14 (neither backend), so GRU users set
# deactivate_vmap=True; LSTMModule's scan backend and MambaModule run under it
CASES = [
    (kind, mode)
    for kind in ("gru", "lstm", "mamba")
    for mode in ("vmap", "deactivate_vmap", "shifted")
    if (kind, mode) != ("gru", "vmap")
]


@pytest.mark.parametrize(("kind", "mode"), CASES)
def test_gae_in_recurrent_mode_equals_the_critic_stepped_on_the_collected_states(kind, mode):
    # regression: MambaModule restarted from zero at a mid-row is_init, where TorchRL restarts from
    # the state stored at that step; GAE evaluates the "next" TensorDict with next.is_init |= is_init
    critic, batches = collect(make_trunk(kind))
    assert any(not bool(b["is_init"][:, 0].all()) for b in batches), "some rows must start mid-episode"
    assert any(bool(b["is_init"][:, 1:].any()) for b in batches), "some resets must fall inside rows"
    for data in batches:
        expected = stepped_advantage(critic, data)
        gae = GAE(
            gamma=GAMMA,
            lmbda=LMBDA,
            value_network=critic,
            shifted=mode == "shifted",
            deactivate_vmap=mode == "deactivate_vmap",
        )
        with torch.no_grad(), set_recurrent_mode(True):
            advantage = gae(data.exclude("state_value", "features"))["advantage"]
        torch.testing.assert_close(advantage, expected, rtol=1e-5, atol=1e-5)


def small(**kwargs):
    torch.manual_seed(0)
    kwargs = {"in_key": "observation", "out_key": "features", "d_state": 4, "backend": "torch", **kwargs}
    return MambaModule(5, 8, **kwargs)


def steps_td(batch=3, steps=6, resets=(0, 4), dtype=torch.float32):
    is_init = torch.zeros(batch, steps, 1, dtype=torch.bool)
    is_init[:, list(resets)] = True
    obs = torch.randn(batch, steps, 5, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return TensorDict(observation=obs, is_init=is_init, batch_size=[batch, steps])


def test_keys_follow_gru_module_rules():
    gru = GRUModule(5, 8, in_key="observation", out_key="features")
    mamba = MambaModule(5, 8, in_key="observation", out_key="features")
    assert mamba.in_keys[0] == gru.in_keys[0] and mamba.in_keys[-1] == gru.in_keys[-1] == "is_init"
    assert mamba.out_keys == ["features", ("next", "recurrent_state_ssm"), ("next", "recurrent_state_conv")]
    listed = MambaModule(
        5, 8, in_keys=["obs", "s", ("nested", "c")], out_keys=["f", ("next", "s"), ("next", "nested", "c")]
    )
    assert listed.in_keys == ["obs", "s", ("nested", "c"), "is_init"]
    for kwargs in (
        {},
        {"in_key": "obs"},
        {"out_key": "f"},
        {"in_key": "obs", "in_keys": ["obs", "s", "c"], "out_key": "f"},
    ):
        with pytest.raises(ValueError, match="pass exactly one of"):
            MambaModule(5, 8, **kwargs)
    with pytest.raises(ValueError, match=r"in_keys must be \[in_key, ssm_key, conv_key\]"):
        MambaModule(5, 8, in_keys=["obs", "s"], out_key="f")


def test_hidden_size_names_the_output_width():
    module = MambaModule(5, hidden_size=12, in_key="observation", out_key="features")
    assert module.hidden_size == module.d_model == 12
    assert MambaModule(5, d_model=12, in_key="observation", out_key="features").hidden_size == 12
    with pytest.raises(ValueError, match="pass hidden_size or d_model"):
        MambaModule(5, 12, d_model=12, in_key="observation", out_key="features")


@pytest.mark.parametrize(
    "option",
    [
        {"dropout": 0.1},
        {"bidirectional": True},
        {"python_based": True},
        {"recurrent_backend": "scan"},
        {"batch_first": False},
    ],
    ids=str,
)
def test_gru_only_options_say_what_to_use_instead(option):
    ((name, value),) = option.items()
    with pytest.raises(ValueError, match=f"{name}={value!r} is a GRUModule option MambaModule does not have: "):
        MambaModule(5, 8, in_key="observation", out_key="features", **option)


def test_default_recurrent_mode_and_the_mode_errors_match_gru_module():
    module = small(default_recurrent_mode=True)
    assert module.recurrent_mode
    td = steps_td()
    assert module(td.clone())["features"].shape == (3, 6, 8)
    with set_recurrent_mode(False):
        assert not module.recurrent_mode
    assert not small().recurrent_mode
    with pytest.raises(RuntimeError, match="set_recurrent_mode context manager"):
        module.recurrent_mode = False
    with pytest.raises(RuntimeError, match="set_recurrent_mode context manager"):
        module.set_recurrent_mode(True)


def test_canonical_keys_feed_torchrl_canonicalize_rnn_subset():
    from torchrl.modules import canonicalize_rnn_subset

    module = small()
    gru = GRUModule(5, 8, in_key="observation", out_key="gru_features")
    assert module.canonical_keys == module.in_keys + module.out_keys
    td = steps_td()
    td["observation"] = td["observation"].transpose(0, 1).contiguous().transpose(0, 1)
    assert not td["observation"].is_contiguous()
    assert canonicalize_rnn_subset(td, [module, gru])["observation"].is_contiguous()
    assert module.canonicalize(td)["observation"].is_contiguous()


def test_write_next_state_gives_the_state_after_every_step():
    module = small(num_layers=2, write_next_state=True)
    td = steps_td()
    with set_recurrent_mode(True):
        out = module(td.clone())
    plain = small(num_layers=2)
    with set_recurrent_mode(True):
        replayed = plain(td.clone())
    torch.testing.assert_close(out["features"], replayed["features"], rtol=1e-5, atol=1e-5)
    assert ("next", "recurrent_state_ssm") not in replayed.keys(True)
    for t, carry in enumerate(step_through(module, td, 6)):
        for key in ("recurrent_state_ssm", "recurrent_state_conv"):
            torch.testing.assert_close(out["next", key][:, t], carry["next", key], rtol=1e-5, atol=1e-5)


def test_to_float64_keeps_the_primer_and_the_written_state_in_one_dtype():
    module = small().to(torch.float64)
    specs = module.make_tensordict_primer().primers
    td = steps_td(dtype=torch.float64)[:, 0]
    out = module(td)
    for key in ("recurrent_state_ssm", "recurrent_state_conv"):
        assert specs[key].dtype == torch.float64 == out["next", key].dtype
    half = small().to(torch.bfloat16)
    dtypes = {k: v.dtype for k, v in half.make_tensordict_primer().primers.items()}
    assert dtypes == {"recurrent_state_ssm": torch.float32, "recurrent_state_conv": torch.bfloat16}
    assert half.zero_state((2,)).ssm.dtype == torch.float32


def test_mamba_ssm_preset_is_mamba_ssm_layout_and_init():
    plain = small(preset="mamba_ssm")
    rl = small()
    mixer, rl_mixer = plain.layers[0].mixer, rl.layers[0].mixer
    assert "layers.0.mixer.in_proj.bias" not in plain.state_dict()
    assert "layers.0.mixer.in_proj.bias" in rl.state_dict()
    # mamba-ssm: x_proj rows at nn.Linear's init; softplus(dt bias) in [dt_min, dt_max] = [1e-3, 0.1]
    bound = mixer.d_inner**-0.5
    assert mixer.x_proj.weight.abs().max() <= bound
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert rl_mixer.x_proj.weight[rl_mixer.dt_rank :].abs().max() > 10 * bound
    # an explicit option wins over the preset
    assert small(start_marker=False).state_dict().keys() == plain.state_dict().keys()
