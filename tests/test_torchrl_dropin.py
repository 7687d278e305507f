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
    collector = Collector(env, TensorDictSequential(critic, act), frames_per_batch=3 * steps,
                          total_frames=batches * 3 * steps)
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
        GAMMA, LMBDA, value, next_value, data["next", "reward"], data["next", "done"], data["next", "terminated"],
    )[0]


# GRUModule cannot run under torch.vmap in TorchRL 0.14 (neither backend), so GRU users set
# deactivate_vmap=True; LSTMModule's scan backend and MambaModule run under it
CASES = [(kind, mode) for kind in ("gru", "lstm", "mamba") for mode in ("vmap", "deactivate_vmap", "shifted")
         if (kind, mode) != ("gru", "vmap")]


@pytest.mark.parametrize(("kind", "mode"), CASES)
def test_gae_in_recurrent_mode_equals_the_critic_stepped_on_the_collected_states(kind, mode):
    # regression: MambaModule restarted from zero at a mid-row is_init, where TorchRL restarts from
    # the state stored at that step; GAE evaluates the "next" TensorDict with next.is_init |= is_init
    critic, batches = collect(make_trunk(kind))
    assert any(not bool(b["is_init"][:, 0].all()) for b in batches), "some rows must start mid-episode"
    assert any(bool(b["is_init"][:, 1:].any()) for b in batches), "some resets must fall inside rows"
    for data in batches:
        expected = stepped_advantage(critic, data)
        gae = GAE(gamma=GAMMA, lmbda=LMBDA, value_network=critic, shifted=mode == "shifted",
                  deactivate_vmap=mode == "deactivate_vmap")
        with torch.no_grad(), set_recurrent_mode(True):
            advantage = gae(data.exclude("state_value", "features"))["advantage"]
        torch.testing.assert_close(advantage, expected, rtol=1e-5, atol=1e-5)
