"""The sequence collector on the GPU's code paths (interpreted on the CPU without a GPU): the
Mamba trunk's Triton scan with an entering state, the conv state and resets inside rows, and
the GRU's Triton replay, give the step collector's rollouts (its fused step kernels)."""

import functools

import pytest
import torch

from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.policies import make_actor_critic, trunks
from mamba_rl.policies.gru_replay import gru_replay
from mamba_rl.training import RolloutCollector, SequenceRolloutCollector
from tests.conftest import assert_close


@pytest.mark.parametrize("controller", ["mamba", "gru"])
def test_sequence_collector_on_the_triton_paths_gives_the_step_collectors_rollouts(controller, monkeypatch):
    if controller == "gru":
        monkeypatch.setattr(trunks, "gru_replay", functools.partial(gru_replay, method="triton"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    params = DelayedMemoryParams(num_bits=2, horizon=(1, 6), num_distractors=2)
    torch.manual_seed(0)
    policy = make_actor_critic(
        controller, params.obs_dim, 4, d_model=16, gru_hidden_size=16, backend="triton", device=device
    )
    args = (policy, params, 4, 11, 2, 0, device)
    step, sequence = RolloutCollector(*args, cuda_graph=False), SequenceRolloutCollector(*args, block_steps=4)
    step.collect()
    sequence.collect()
    expected, got = step.collect(), sequence.collect()
    assert bool(got.is_init[:, 1:].any()) and not bool(got.is_init[:, 0].all())
    for name in ("obs", "action", "reward", "done", "is_init", "decision", "success", "episode_return"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name
    for name in ("log_prob", "value", "bootstrap_value"):
        assert_close(getattr(got, name), getattr(expected, name), msg=name)
