"""``BitsHead``: one Bernoulli per bit is a distribution over ``Discrete(2**k)`` whose log-probs,
entropy, samples and mode are those of the categorical over the ``2**k`` products of the bits'
probabilities; a rollout collected with it replays to the same log-probs; ``make_action_head``
builds it only for ``Discrete(2**k)``."""

import pytest
import torch
from gymnasium import spaces

from mamba_rl.config import TrainConfig
from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.evaluate import build_policy
from mamba_rl.policies import BitsHead, CategoricalHead, make_action_head
from mamba_rl.training import RolloutCollector, replay
from tests.conftest import assert_close

NUM_BITS = 3


def _categorical(params: torch.Tensor) -> torch.distributions.Categorical:
    """The distribution over every action ``a`` that the bits' Bernoullis give: ``prod_j p_j(bit_j(a))``."""
    actions = torch.arange(2**NUM_BITS)
    bits = (actions[:, None] >> torch.arange(NUM_BITS)) & 1
    log_p1, log_p0 = torch.nn.functional.logsigmoid(params), torch.nn.functional.logsigmoid(-params)
    # [B, 2**k]
    logits = torch.where(bits.bool(), log_p1[:, None, :], log_p0[:, None, :]).sum(-1)
    return torch.distributions.Categorical(logits=logits)


def test_log_prob_and_entropy_are_those_of_the_categorical_over_the_products():
    gen = torch.Generator().manual_seed(0)
    # a logit of 0 and large ones, where a naive log(sigmoid) would lose precision
    params = torch.cat([torch.randn(5, NUM_BITS, generator=gen), torch.tensor([[0.0, 30.0, -30.0]])]).double()
    head = BitsHead(NUM_BITS)
    reference = _categorical(params)
    assert_close(reference.probs.sum(-1), torch.ones(6, dtype=torch.float64))
    for action in range(2**NUM_BITS):
        actions = torch.full((6,), action)
        log_prob, entropy = head.log_prob_entropy(params, actions)
        assert_close(log_prob.double(), reference.log_prob(actions), torch.float32)
        assert_close(entropy.double(), reference.entropy(), torch.float32)
    assert torch.equal(head.mode(params), reference.probs.argmax(-1))


def test_samples_follow_the_bit_probabilities_and_carry_their_log_probs():
    gen = torch.Generator().manual_seed(1)
    params = torch.tensor([[1.5, -0.5, 0.0]])
    head = BitsHead(NUM_BITS)
    noise = torch.empty(20000, NUM_BITS)
    head.draw_noise(noise, gen)
    action, log_prob = head.sample(params.expand(20000, NUM_BITS), noise)
    assert_close(log_prob, head.log_prob_entropy(params.expand(20000, NUM_BITS), action)[0])
    frequency = torch.bincount(action, minlength=2**NUM_BITS).double() / 20000
    # 20,000 draws: each frequency within ~4 standard deviations (<= 0.014) of its probability
    torch.testing.assert_close(frequency, _categorical(params.double()).probs[0], atol=0.014, rtol=0)


def test_make_action_head_builds_bits_heads_for_discrete_powers_of_two_only():
    assert isinstance(make_action_head(spaces.Discrete(256)), CategoricalHead)
    head = make_action_head(spaces.Discrete(256), "bits")
    assert isinstance(head, BitsHead) and head.num_outputs == 8
    with pytest.raises(ValueError, match="Discrete\\(2\\*\\*k\\)"):
        make_action_head(spaces.Discrete(6), "bits")
    with pytest.raises(ValueError, match="discrete must be one of"):
        make_action_head(spaces.Discrete(4), "binary")


@pytest.mark.parametrize("controller", ["mamba", "gru"])
def test_a_bits_head_rollout_replays_to_its_collection_log_probs(controller):
    torch.manual_seed(0)
    cfg = TrainConfig(
        num_bits=NUM_BITS,
        horizon=[3, 9],
        num_envs=6,
        d_model=16,
        gru_hidden_size=16,
        controller=controller,
        discrete_head="bits",
        device="cpu",
    )
    policy = build_policy(cfg, "cpu")
    assert isinstance(policy.action_dist, BitsHead) and policy.actor_head[-1].out_features == NUM_BITS
    params = DelayedMemoryParams(num_bits=NUM_BITS, horizon=(3, 9))
    collector = RolloutCollector(policy, params, 6, 7, 3, 0, torch.device("cpu"), cuda_graph=False)
    collector.collect()
    rollout = collector.collect()
    assert int(rollout.action.max()) > 2 ** (NUM_BITS - 1), "the actions must use the high bit"
    with torch.no_grad():
        logits, _ = replay(policy, rollout, torch.arange(6), policy_mask=rollout.decision)
    log_prob, _ = policy.action_dist.log_prob_entropy(logits, rollout.action[rollout.decision])
    assert_close(log_prob, rollout.log_prob[rollout.decision])
