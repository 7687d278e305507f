"""``ppo_loss`` with no policy mask computes TorchRL's ``ClipPPOLoss`` terms: on one batch of
logits, values, actions, old log-probs, advantages and returns, the policy, entropy and value terms,
the clip fraction and their gradients agree within float32 rounding."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import ProbabilisticActor, ValueOperator
from torchrl.objectives import ClipPPOLoss

from mamba_rl.training import ppo_loss

CLIP, ENT, VF = 0.2, 0.01, 0.5


def torchrl_loss(clip_vloss):
    # the actor and critic pass through the logits and values stored in the batch, so both losses
    # see the same numbers and the gradients land on the same leaf tensors
    actor = ProbabilisticActor(
        TensorDictModule(nn.Identity(), in_keys=["new_logits"], out_keys=["logits"]),
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
    )
    critic = ValueOperator(nn.Identity(), in_keys=["new_value"])
    # ppo_loss's value term is 0.5 * mean((V - R)^2) times vf_coef; TorchRL's "l2" is mean((V - R)^2)
    return ClipPPOLoss(
        actor,
        critic,
        clip_epsilon=CLIP,
        entropy_coeff=ENT,
        critic_coeff=VF / 2,
        loss_critic_type="l2",
        normalize_advantage=True,
        clip_value=CLIP if clip_vloss else None,
    )


@pytest.mark.parametrize("clip_vloss", [False, True], ids=["plain_value", "clipped_value"])
def test_ppo_loss_without_mask_equals_torchrl_clip_ppo_loss(clip_vloss):
    gen = torch.Generator().manual_seed(0)
    n, num_actions = 37, 5
    logits = torch.randn(n, num_actions, generator=gen)
    action = torch.randint(num_actions, (n,), generator=gen)
    # old log-probs a little off the new ones, so some ratios leave [1 - CLIP, 1 + CLIP]
    old_log_prob = torch.log_softmax(logits, -1).gather(-1, action[:, None]).squeeze(-1) + 0.3 * torch.randn(
        n, generator=gen
    )
    value = torch.randn(n, generator=gen)
    old_value = value + 0.4 * torch.randn(n, generator=gen)
    advantages = 2.0 * torch.randn(n, generator=gen) + 0.5
    returns = torch.randn(n, generator=gen)

    ours_logits = logits.clone().requires_grad_()
    ours_value = value.clone().requires_grad_()
    ours = ppo_loss(
        ours_logits,
        ours_value,
        action,
        old_log_prob,
        old_value,
        advantages,
        returns,
        None,
        clip_coef=CLIP,
        ent_coef=ENT,
        vf_coef=VF,
        norm_adv=True,
        clip_vloss=clip_vloss,
    )
    ours.loss.backward()

    ref_logits = logits.clone().requires_grad_()
    ref_value = value.clone().requires_grad_()
    batch = TensorDict(
        {
            "new_logits": ref_logits,
            "new_value": ref_value[:, None],
            "action": action,
            "action_log_prob": old_log_prob,
            "state_value": old_value[:, None],
            "advantage": advantages[:, None],
            "value_target": returns[:, None],
        },
        batch_size=[n],
    )
    ref = torchrl_loss(clip_vloss)(batch)
    (ref["loss_objective"] + ref["loss_entropy"] + ref["loss_critic"]).backward()

    assert 0 < float(ours.clip_fraction) < 1, "the batch must exercise both sides of the clip"
    torch.testing.assert_close(ours.policy, ref["loss_objective"])
    torch.testing.assert_close(-ENT * ours.entropy, ref["loss_entropy"])
    torch.testing.assert_close(VF * ours.value, ref["loss_critic"])
    torch.testing.assert_close(ours.clip_fraction, ref["clip_fraction"])
    torch.testing.assert_close(ours_logits.grad, ref_logits.grad)
    torch.testing.assert_close(ours_value.grad, ref_value.grad)
