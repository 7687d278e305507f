"""Steer a policy through its SSM state: find an additive change of the state that makes it answer a chosen code.

In the middle of the delay of the delayed-memory task, the code the policy will answer is held in
its recurrent state. :func:`steer_ssm_state` finds, by gradient descent, a change ``delta`` of
the SSM state entering step ``at_step`` such that the policy, run on from there, answers ``code``
at the query step. The change is optimised through the code path that acts: ``path="step"`` runs
:meth:`MambaModule.step` step by step, as a rollout does (:func:`rollout_with_ssm_delta`, and
``mamba-rl-eval``), so adding ``delta`` in a real rollout gives exactly the logits the optimiser
reached; ``path="sequence"`` runs the scan with ``state + delta`` as its initial state
(:meth:`MambaModule.sequence`), which agrees with stepping to float rounding (see
:func:`~mamba_rl.lab.check_equivalence`).

This works because the state is a value: nothing is cached or updated in place, so gradients reach
an injected state, and the same state can be replayed with and without the change.

    >>> import torch
    >>> from mamba_rl.envs import DelayedMemoryParams
    >>> from mamba_rl.lab import rollout_with_ssm_delta, steer_ssm_state
    >>> from mamba_rl.lab.toy import train_toy_policy
    >>> params = DelayedMemoryParams(num_bits=1, horizon=4)
    >>> policy, _ = train_toy_policy(params, d_model=8, d_state=4, iterations=60, batch_size=64)
    >>> before = rollout_with_ssm_delta(policy, params, num_envs=8, seed=0, at_step=3)
    >>> code = 1 - before.target                                   # the other answer
    >>> steered = steer_ssm_state(policy, before.state_at_step, before.observations[:, 3:], code)
    >>> after = rollout_with_ssm_delta(policy, params, num_envs=8, seed=0, at_step=3, delta_ssm=steered.delta_ssm)
    >>> bool((after.answer == steered.answer).all())                # the rollout keeps the promise
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.envs.adapters import DelayedMemoryTask
from mamba_rl.lab.policy import as_state_policy, policy_answers
from mamba_rl.policies.heads import CategoricalHead
from mamba_rl.state import MambaState

__all__ = ["RolloutResult", "SteeringResult", "rollout_with_ssm_delta", "steer_ssm_state", "steered_logits"]

PATHS = ("step", "sequence")


@dataclass
class SteeringResult:
    """What :func:`steer_ssm_state` found.

    Attributes:
        delta_ssm: ``[B, num_layers, d_inner, d_state]``, to add to the SSM state entering ``at_step``.
        logits: ``[B, num_actions]`` at the query step with the change: the promise.
        answer: ``[B]`` argmax of ``logits``.
        code: ``[B]`` the codes asked for.
        success: ``[B]`` bool, ``answer == code``.
        margin: ``[B]`` ``logits[code]`` minus the largest other logit.
        relative_size: ``[B]`` ``|delta| / |state|`` (Frobenius, over all layers).
        iterations: optimiser steps taken.
        losses: the loss at each step.
        path: ``"step"`` or ``"sequence"``.
    """

    delta_ssm: torch.Tensor
    logits: torch.Tensor
    answer: torch.Tensor
    code: torch.Tensor
    success: torch.Tensor
    margin: torch.Tensor
    relative_size: torch.Tensor
    iterations: int
    losses: list
    path: str


@dataclass
class RolloutResult:
    """A rollout of the policy on the task, optionally with its SSM state changed at one step.

    Attributes:
        answer: ``[N]`` the action at each episode's query step.
        target: ``[N]`` the episode's code.
        success: ``[N]`` bool, the env's verdict (answer == target).
        logits: ``[N, num_outputs]`` the head's outputs at the query step.
        observations: ``[N, T, obs_dim]`` the whole episodes (``T = params.max_episode_steps``).
        query_step: ``[N]``.
        state_at_step: the state after ``at_step`` steps, before any change (``[N, L, ...]``).
        at_step: the step the change was applied at.
    """

    answer: torch.Tensor
    target: torch.Tensor
    success: torch.Tensor
    logits: torch.Tensor
    observations: torch.Tensor
    query_step: torch.Tensor
    state_at_step: MambaState
    at_step: int


def _policy_parts(policy):
    state_policy = as_state_policy(policy)
    if state_policy.head is None:
        raise ValueError("steering needs a policy with a head (StatePolicy(module, head)) to answer")
    return state_policy.module, state_policy.head


@torch.no_grad()
def rollout_with_ssm_delta(
    policy,
    params: DelayedMemoryParams,
    num_envs: int,
    seed: int,
    at_step: int,
    delta_ssm: torch.Tensor | None = None,
) -> RolloutResult:
    """Play ``num_envs`` episodes greedily, one step at a time, and add ``delta_ssm`` to the SSM
    state entering step ``at_step``.

    The loop is the one of the evaluation's step-by-step ground truth
    (:class:`mamba_rl.training.evaluate._EpisodeBatch`, whose answers ``mamba-rl-eval`` gives):
    ``module.step`` on each observation (reset at step 0), the greedy answer of the policy's
    action distribution as the action (:func:`~mamba_rl.lab.policy.policy_answers`: a categorical's
    argmax, a bits head's positive bits), the memory task's adapter stepped without autoreset (one
    episode per copy).
    """
    module, head = _policy_parts(policy)
    state_policy = as_state_policy(policy)
    device = module.input_proj.weight.device
    low, _ = params.horizon_range
    if isinstance(at_step, bool) or not isinstance(at_step, int) or not 1 <= at_step <= low + 1:
        # at step 0 the episode's reset zeroes the state, change included
        raise ValueError(
            f"at_step must be an int in 1..{low + 1} (after the cue, up to the query step of the "
            f"shortest episode), got {at_step!r}"
        )
    task = DelayedMemoryTask(params, num_envs, device, autoreset=False)
    env, obs, _ = task.reset(seed)
    target, query_step = env["target"].clone(), env["horizon"] + 1
    if delta_ssm is not None and tuple(delta_ssm.shape) != (num_envs, *module.state_shapes[module.ssm_key]):
        raise ValueError(
            f"delta_ssm must have shape {[num_envs, *module.state_shapes[module.ssm_key]]}, got {list(delta_ssm.shape)}"
        )
    state = module.zero_state((num_envs,), device)
    no_reset = torch.zeros(num_envs, dtype=torch.bool, device=device)
    answer = torch.full_like(target, -1)
    logits_at_query = None
    success = torch.zeros(num_envs, dtype=torch.bool, device=device)
    observations = []
    state_at_step = None
    for t in range(params.max_episode_steps):
        observations.append(obs)
        if t == at_step:
            state_at_step = MambaState(state.ssm.clone(), state.conv.clone())
            if delta_ssm is not None:
                state = MambaState(state.ssm + delta_ssm.to(state.ssm), state.conv)
        reset = torch.ones_like(no_reset) if t == 0 else no_reset
        features, state = module.step(obs, state, reset)
        logits = head(features)
        action = policy_answers(state_policy, logits)
        scored = env["t"] == env["horizon"] + 1
        answer = torch.where(scored, action, answer)
        logits_at_query = logits if logits_at_query is None else torch.where(scored[:, None], logits, logits_at_query)
        env, step = task.step(env, action)
        obs = step.obs
        success |= step.success
    return RolloutResult(
        answer, target, success, logits_at_query, torch.stack(observations, 1), query_step, state_at_step, at_step
    )


def steered_logits(
    policy,
    state: MambaState,
    delta_ssm: torch.Tensor,
    observations: torch.Tensor,
    query_index: torch.Tensor,
    path: str = "step",
) -> torch.Tensor:
    """The query-step logits ``[B, num_actions]`` when the SSM state entering ``observations[:, 0]``
    is ``state.ssm + delta_ssm``; differentiable in ``delta_ssm``.

    Args:
        state: the state entering the first observation (``[B, L, ...]``).
        observations: ``[B, S, obs_dim]`` from that step on, through the query step.
        query_index: ``[B]`` the query step's index in ``observations``.
        path: ``"step"`` (:meth:`MambaModule.step` per step, as a rollout) or ``"sequence"`` (the scan
            with an initial state).
    """
    module, head = _policy_parts(policy)
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    batch, steps = observations.shape[:2]
    start = MambaState(state.ssm + delta_ssm, state.conv)
    no_reset = torch.zeros(batch, dtype=torch.bool, device=observations.device)
    last = int(query_index.max()) + 1
    if path == "step":
        features = []
        current = start
        for k in range(last):
            out, current = module.step(observations[:, k], current, no_reset)
            features.append(out)
        # [B, S', d_model]
        features = torch.stack(features, 1)
    else:
        features, _ = module.sequence(observations[:, :last], start, no_reset[:, None].expand(batch, last))
    at_query = features[torch.arange(batch, device=features.device), query_index]
    return head(at_query)


def _margin(logits: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    chosen = logits.gather(1, code[:, None]).squeeze(1)
    others = logits.scatter(1, code[:, None], float("-inf"))
    return chosen - others.amax(1)


def steer_ssm_state(
    policy,
    state: MambaState,
    observations: torch.Tensor,
    code: torch.Tensor,
    *,
    query_index: torch.Tensor | int | None = None,
    path: str = "step",
    layers=None,
    margin: float = 2.0,
    max_iterations: int = 500,
    lr: float = 0.02,
    l2: float = 1e-2,
) -> SteeringResult:
    """Find ``delta_ssm`` such that the policy, from ``state.ssm + delta_ssm``, answers ``code``.

    Minimises the cross-entropy of the query-step logits to ``code`` (for the environments whose
    margin is still below ``margin``) plus ``l2 * |delta|^2`` with Adam, from ``delta = 0``,
    through :func:`steered_logits` on ``path``; stops when every environment's margin reaches
    ``margin`` or after ``max_iterations``. The parameters get no gradient.

    Args:
        policy: anything :func:`~mamba_rl.lab.as_state_policy` accepts, with a head.
        state: the state entering ``observations[:, 0]`` (e.g. ``RolloutResult.state_at_step``).
        observations: ``[B, S, obs_dim]``, from that step through the query step.
        code: ``[B]`` int64, the answers wanted.
        query_index: the query step's index in ``observations``, ``[B]`` or an int (default: the
            last step).
        path: ``"step"`` or ``"sequence"``, see :func:`steered_logits`.
        layers: the layers whose state may change (default all).
        margin: the logit margin asked for, so that float differences between paths cannot
            flip the answer.
    """
    module, head = _policy_parts(policy)
    action_dist = as_state_policy(policy).action_dist
    if action_dist is not None and not isinstance(action_dist, CategoricalHead):
        raise TypeError(
            "steer_ssm_state optimises the cross-entropy of a categorical head's logits; the policy's "
            f"action distribution is a {type(action_dist).__name__}"
        )
    batch = observations.shape[0]
    device = observations.device
    if code.shape != (batch,):
        raise ValueError(f"code must have shape [{batch}], got {list(code.shape)}")
    if query_index is None:
        query_index = observations.shape[1] - 1
    if isinstance(query_index, int):
        query_index = torch.full((batch,), query_index, dtype=torch.int64, device=device)
    mask = torch.zeros(module.num_layers, dtype=torch.bool, device=device)
    mask[list(range(module.num_layers)) if layers is None else list(layers)] = True
    # [1, L, 1, 1]
    mask = mask[None, :, None, None].to(state.ssm.dtype)
    state = MambaState(state.ssm.detach(), state.conv.detach())
    delta = torch.zeros_like(state.ssm, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=lr)
    frozen = [
        p
        for p in [*module.parameters(), *(head.parameters() if isinstance(head, nn.Module) else [])]
        if p.requires_grad
    ]
    for p in frozen:
        p.requires_grad_(False)
    losses = []
    iterations = 0
    try:
        with torch.enable_grad():
            for iterations in range(max_iterations + 1):
                logits = steered_logits(policy, state, delta * mask, observations, query_index, path)
                active = _margin(logits.detach(), code) < margin
                if not bool(active.any()) or iterations == max_iterations:
                    break
                ce = nn.functional.cross_entropy(logits, code, reduction="none")
                loss = (ce * active).sum() + l2 * (delta * mask).pow(2).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
    finally:
        for p in frozen:
            p.requires_grad_(True)
    delta_ssm = (delta * mask).detach()
    with torch.no_grad():
        logits = steered_logits(policy, state, delta_ssm, observations, query_index, path)
    answer = logits.argmax(-1)
    size = delta_ssm.flatten(1).norm(dim=1) / state.ssm.flatten(1).norm(dim=1).clamp_min(1e-12)
    return SteeringResult(
        delta_ssm, logits, answer, code, answer == code, _margin(logits, code), size, iterations, losses, path
    )
