"""PPO pieces on plain tensors: GAE, chunk replay, the clipped loss with a policy mask, one update.

The policy mask. In the memory task only the query step's action is scored; the ``horizon + 1``
earlier actions change nothing. Plain PPO averages the policy loss over every step, so the one
step that matters weighs ``1 / (horizon + 2)`` of the policy gradient, the rest being noise of
zero expected value (and the entropy bonus pushes the irrelevant actions toward uniform). With
``policy_mask_key="decision"`` the policy loss, the entropy bonus, the advantage normalisation
statistics, approx-KL and the clip fraction are averages over the steps the env marks as
decisions (a weight per step, 0 or 1), while the value loss still covers every step. The replay
then runs the actor head only at those steps (:func:`replay`'s ``policy_mask``): a head over
``2**16`` answers at every step of a 20,000-step rollout would not fit in memory. With
``policy_mask_key=None`` every weight is 1: exactly CleanRL's / TorchRL's ``ClipPPOLoss``.
Any env that marks its consequential steps can use the same switch; nothing here knows the task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint
from torchrl.objectives.value.functional import generalized_advantage_estimate

from mamba_rl.policies.heads import ActionHead, CategoricalHead
from mamba_rl.training.distributed import Ranks
from mamba_rl.training.rollout import Rollout

__all__ = ["compute_gae", "replay", "ppo_loss", "PPOLossOutput", "weighted_mean", "explained_variance"]


def compute_gae(
    reward, value, done, bootstrap_value, gamma: float, gae_lambda: float, terminated=None, final_value=None
):
    """GAE over ``[N, S]`` tensors (TorchRL's ``generalized_advantage_estimate``).

    ``value[:, t]`` is V(obs_t); the value of the observation after step ``t`` is
    ``value[:, t + 1]``, or ``bootstrap_value`` after the last step. ``done`` (the episode ended)
    cuts the lambda-trace. Truncation is not termination: where the episode was truncated
    (``done`` and not ``terminated``) the next value is ``final_value``, the value of the
    episode's final observation; where it terminated the next value counts zero.
    ``terminated=None`` means every end is a termination.

    Returns ``(advantages, returns)``, both ``[N, S]``.
    """
    next_value = torch.cat([value[:, 1:], bootstrap_value[:, None]], dim=1)
    if terminated is None:
        terminated = done
    elif final_value is not None:
        next_value = torch.where(done & ~terminated, final_value, next_value)
    advantage, value_target = generalized_advantage_estimate(
        gamma,
        gae_lambda,
        value[..., None],
        next_value[..., None],
        reward[..., None],
        done[..., None],
        terminated[..., None],
        time_dim=-2,
    )
    return advantage.squeeze(-1), value_target.squeeze(-1)


def weighted_mean(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return x.mean()
    return (x * weight).sum() / weight.sum().clamp(min=1.0)


def explained_variance(value: torch.Tensor, returns: torch.Tensor, ranks: Ranks | None = None) -> torch.Tensor:
    """``1 - Var(returns - value) / Var(returns)`` (NaN when the returns do not vary); with several
    ``ranks``, the variances over every rank's steps (the same on every rank)."""
    if ranks is None or ranks.world_size == 1:
        var = returns.var()
        return torch.where(var > 0, 1 - (returns - value).var() / var, torch.full_like(var, float("nan")))
    residual = returns - value
    count, returns_sum, residual_sum = ranks.sum(
        [torch.tensor(float(returns.numel()), device=returns.device), returns.sum(), residual.sum()]
    )
    returns_sq, residual_sq = ranks.sum(
        [((returns - returns_sum / count) ** 2).sum(), ((residual - residual_sum / count) ** 2).sum()]
    )
    var = returns_sq / (count - 1).clamp(min=1)
    return torch.where(var > 0, 1 - residual_sq / (count - 1).clamp(min=1) / var, torch.full_like(var, float("nan")))


def _sequence(policy, obs, reset, policy_mask, *state_values, names):
    logits, value, state = policy.sequence(obs, dict(zip(names, state_values)), reset, policy_mask)
    return (logits, value, *(state[name] for name in names))


def replay(policy, rollout: Rollout, env_idx: torch.Tensor, backprop: str = "chunk", policy_mask=None):
    """Recompute logits and values for the environments ``env_idx`` from their stored chunk states.

    ``backprop="chunk"``: each chunk starts from its stored (detached) state: truncated BPTT;
    the chunks of all selected environments run as one batch of ``n * K`` rows.
    ``backprop="episode"``: chunk ``k + 1`` starts from the state chunk ``k`` computed, so the
    gradient flows across chunks through the carried state; each chunk runs under activation
    checkpointing (recomputed in the backward pass), so memory holds one chunk's activations
    plus the ``K`` boundary states.

    ``policy_mask`` (``[N, S]`` bool over the whole rollout, e.g. ``rollout.decision``, or None):
    the actor head runs only at the selected steps of the selected environments, and the logits
    come back as ``[M, A]``, the rows of ``x[env_idx][policy_mask[env_idx]]`` in that order (so
    ``rollout.action[env_idx][policy_mask[env_idx]]`` are their actions). The value head runs at
    every step. The logits of every step of a minibatch (``n * S * A`` floats) would be 671 GB at
    ``n = 128``, ``S = 20002`` and ``A = 2**16``; those of its scored steps are a few hundred MB.

    Returns ``(logits [n, S, A] or [M, A], value [n, S])``.
    """
    obs = rollout.obs[env_idx]
    reset = rollout.is_init[env_idx]
    mask = None if policy_mask is None else policy_mask[env_idx]
    n, steps = reset.shape
    T, K = rollout.chunk_len, rollout.num_chunks
    # [K, n, ...]
    states = {name: value[:, env_idx] for name, value in rollout.chunk_states.items()}
    if backprop == "chunk" or K == 1:
        rows = {name: value.transpose(0, 1).reshape(n * K, *value.shape[2:]) for name, value in states.items()}
        # row i * K + k is chunk k of env i: row-major over [n * K, T] is row-major over [n, S]
        row_mask = None if mask is None else mask.reshape(n * K, T)
        logits, value, _ = policy.sequence(obs.reshape(n * K, T, -1), rows, reset.reshape(n * K, T), row_mask)
        return (logits if mask is not None else logits.reshape(n, steps, -1)), value.reshape(n, steps)
    if backprop != "episode":
        raise ValueError(f"backprop must be 'chunk' or 'episode', got {backprop!r}")
    names = list(states)
    carried = [states[name][0] for name in names]
    all_logits, all_values = [], []
    for k in range(K):
        window = slice(k * T, (k + 1) * T)
        chunk_mask = None if mask is None else mask[:, window]
        logits, value, *carried = checkpoint(
            _sequence, policy, obs[:, window], reset[:, window], chunk_mask, *carried, names=names, use_reentrant=False
        )
        all_logits.append(logits)
        all_values.append(value)
    value = torch.cat(all_values, 1)
    if mask is None:
        return torch.cat(all_logits, 1), value
    # the chunks' rows come chunk by chunk; put them in row-major order over [n, S]
    position = torch.arange(n * steps, device=mask.device).reshape(n, steps)
    chunk_major = torch.cat([position[:, k * T : (k + 1) * T][mask[:, k * T : (k + 1) * T]] for k in range(K)])
    return torch.cat(all_logits, 0)[chunk_major.argsort()], value


_CATEGORICAL = CategoricalHead(1)


@dataclass
class PPOLossOutput:
    loss: torch.Tensor
    policy: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clip_fraction: torch.Tensor


def ppo_loss(
    logits: torch.Tensor,
    value: torch.Tensor,
    action: torch.Tensor,
    old_log_prob: torch.Tensor,
    old_value: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    clip_coef: float = 0.2,
    ent_coef: float = 0.01,
    vf_coef: float = 0.5,
    norm_adv: bool = True,
    clip_vloss: bool = False,
    action_dist: ActionHead | None = None,
    ranks: Ranks | None = None,
) -> PPOLossOutput:
    """Clipped PPO loss (CleanRL's ``ppo_atari_lstm`` terms), each policy term a ``weight``-ed mean.

    Shapes: the policy terms ``logits [*P, A]`` (the parameters of ``action_dist``, a categorical
    head when None), ``action [*P, *action_shape]``, ``old_log_prob``, ``advantages`` and
    ``weight`` ``[*P]``; the value terms ``value``, ``old_value``, ``returns`` ``[*V]``. ``[*P]``
    may be ``[*V]`` (every step) or the steps a policy mask selects, gathered (``[M]``, ``weight``
    all ones: the same loss without the logits of the other steps). ``weight`` (0/1 floats, or
    None for all ones) weights the policy loss, the entropy, the advantage normalisation
    statistics, approx-KL and the clip fraction; the value loss is a plain mean over every step.

    With several ``ranks`` (each holding its part of a minibatch, as many steps on each) the
    weights' sum and the advantage statistics are sums over every rank, and each weighted mean is
    this rank's share of the global one times ``world_size``: DDP's average of the ranks'
    gradients is then the gradient of the loss over the whole minibatch, and the mean over the
    ranks of each returned statistic is its value over the whole minibatch.

    ``loss = policy - ent_coef * entropy + vf_coef * value`` with
    ``policy = mean_w(max(-A r, -A clip(r, 1 - c, 1 + c)))``, ``value = 0.5 mean((V - R)^2)``.
    """
    new_log_prob, entropy = (action_dist or _CATEGORICAL).log_prob_entropy(logits, action)
    log_ratio = new_log_prob - old_log_prob
    ratio = log_ratio.exp()
    ranks = ranks or Ranks()
    if weight is None:
        # every rank holds as many steps: DDP's average over the ranks of each one's mean is the global mean
        mean_w = torch.mean
    else:
        (weight_sum,) = ranks.sum([weight.sum()])
        weight_sum = weight_sum.clamp(min=1.0)

        def mean_w(x: torch.Tensor) -> torch.Tensor:
            # this rank's share of the mean over every rank's steps; DDP averages the shares' gradients
            return (x * weight).sum() / weight_sum * ranks.world_size

    if norm_adv:
        # the statistics of the whole minibatch, over every rank
        if weight is None:
            (mean,) = ranks.mean([advantages.mean()])
            count = torch.tensor(float(advantages.numel() * ranks.world_size), device=advantages.device)
            (sq,) = ranks.sum([((advantages - mean) ** 2).sum()])
        else:
            (weighted_sum,) = ranks.sum([(advantages * weight).sum()])
            mean, count = weighted_sum / weight_sum, weight_sum
            (sq,) = ranks.sum([(weight * (advantages - mean) ** 2).sum()])
        # unbiased, as torch.std in CleanRL
        std = (sq / (count - 1).clamp(min=1.0)).sqrt()
        advantages = (advantages - mean) / (std + 1e-8)
    pg_loss = mean_w(torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)))
    entropy_mean = mean_w(entropy)
    value = value.float()
    if clip_vloss:
        clipped = old_value + (value - old_value).clamp(-clip_coef, clip_coef)
        v_loss = 0.5 * torch.max((value - returns) ** 2, (clipped - returns) ** 2).mean()
    else:
        v_loss = 0.5 * ((value - returns) ** 2).mean()
    loss = pg_loss - ent_coef * entropy_mean + vf_coef * v_loss
    with torch.no_grad():
        approx_kl = mean_w((ratio - 1) - log_ratio)
        clip_fraction = mean_w(((ratio - 1).abs() > clip_coef).float())
    return PPOLossOutput(loss, pg_loss, v_loss, entropy_mean, approx_kl, clip_fraction)
