"""Fast-forward a Mamba policy across a blank delay of any length, exactly, in float64.

During the delay of the memory task without distractors every observation is the same (all
zeros). Once the causal conv's window holds only blank inputs (``d_conv`` steps after the cue),
everything a layer's selective scan reads is constant from step to step: the conv output ``x``,
the step size ``dt``, ``B``, ``C`` and the gate ``z``. Each SSM state element then follows a
linear time-invariant recurrence ``h <- a h + b`` with ``a = exp(dt A)`` and ``b = dt B x``, whose
state after ``n`` more steps is, in closed form,

    ``h_n = a^n h_0 + b (1 - a^n) / (1 - a) = exp(n dt A) h_0 + b expm1(n dt A) / expm1(dt A)``

(``n h_0``-free and ``h_0 + n b`` where ``dt A`` is exactly 0), and as ``n -> inf`` the cue-free
fixed point ``-b / expm1(dt A)``. :func:`fast_forward_memory` plays the cue and the first blank
steps through the model's own step path in float64, checks that the scan's inputs have become
stationary (and that the step it took is ``a h + b``), jumps to the last blank step in closed form
and plays the query step through the model again: the answer a float64 rollout of ``horizon``
blank steps would give, in ``O(d_inner d_state)`` work whatever the horizon.

Exact for one Mamba layer. In a stack, a later layer reads the earlier layer's output, which
moves with the earlier layer's decaying state, so its inputs are not stationary: the check
raises rather than give an approximation. A GRU is nonlinear (its state is not ``a h + b``) and
has no closed form; it is not handled.

    >>> import torch
    >>> from torch import nn
    >>> from mamba_rl import MambaModule
    >>> from mamba_rl.envs import DelayedMemoryParams
    >>> from mamba_rl.lab import StatePolicy
    >>> from mamba_rl.lab.fastforward import fast_forward_memory
    >>> params = DelayedMemoryParams(num_bits=2, horizon=10)
    >>> module = MambaModule(input_size=params.obs_dim, hidden_size=8, in_key="obs", out_key="f")
    >>> policy = StatePolicy(module, nn.Linear(8, params.num_actions))
    >>> ff = fast_forward_memory(policy, params, torch.arange(4), horizon=10**9)
    >>> ff.logits.shape, ff.logits.dtype
    (torch.Size([4, 4]), torch.float64)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from mamba_rl.closed_form import advance_ssm, blank_scan_inputs
from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.envs.delayed_memory import DelayedMemoryState, delayed_memory_observe
from mamba_rl.lab.policy import StatePolicy, as_state_policy, policy_answers
from mamba_rl.state import MambaState

__all__ = ["FastForward", "fast_forward_memory", "blank_scan_inputs", "advance_ssm", "query_logits", "float64_policy"]

# relative change allowed between two blank steps' scan inputs: float64 gives identical bits
# for identical inputs, so anything above rounding means the inputs do move
STATIONARY_RTOL = 1e-12


@dataclass
class FastForward:
    """What :func:`fast_forward_memory` computed for ``P`` patterns (all float64).

    Attributes:
        logits: ``[P, A]`` the head's output at the query step.
        actions: ``[P]`` the greedy answers (the policy's ``action_dist.mode``, else the argmax).
        ssm: ``[P, L, d_inner, d_state]`` the SSM state after the last blank step.
        conv: ``[P, L, d_inner, d_conv - 1]`` the conv state then (blank inputs only).
        warm_ssm: ``[P, L, d_inner, d_state]`` the state after the ``warmup`` played blank steps.
        dt: ``[P, L, d_inner]`` the step size at a blank step (after softplus).
        dt_a: ``[P, L, d_inner, d_state]`` ``dt * A``: ``a = exp(dt_a)``, the per-step decay.
        drive: ``[P, L, d_inner, d_state]`` ``b = dt B x``, the constant input of a blank step.
        warmup: blank steps played through the model before the closed form took over.
        horizon: blank steps in all (``inf`` for the limit).
    """

    logits: torch.Tensor
    actions: torch.Tensor
    ssm: torch.Tensor
    conv: torch.Tensor
    warm_ssm: torch.Tensor
    dt: torch.Tensor
    dt_a: torch.Tensor
    drive: torch.Tensor
    warmup: int
    horizon: float


def float64_policy(policy) -> tuple[StatePolicy, object]:
    """A float64 copy of ``policy`` (any form :func:`~mamba_rl.lab.as_state_policy` takes) on the
    plain-PyTorch backend, and its action head (``action_dist``, None for a lab policy)."""
    state_policy = as_state_policy(policy)
    if state_policy.head is None:
        raise ValueError("policy must have a head: the fast-forward reads the answer at the query step")
    module = copy.deepcopy(state_policy.module).to(device="cpu", dtype=torch.float64)
    module.backend = "torch"
    head = copy.deepcopy(state_policy.head).to(device="cpu", dtype=torch.float64)
    module.eval()
    return StatePolicy(module, head, state_policy.action_dist), state_policy.action_dist


def _observations(params: DelayedMemoryParams, targets: torch.Tensor, t: int, horizon: int) -> torch.Tensor:
    """float64 ``[P, obs_dim]``: the env's observation at step ``t`` of episodes with these targets."""
    zeros = torch.zeros_like(targets)
    state = DelayedMemoryState(
        stream=zeros,
        episode=zeros,
        episode_key=zeros,
        t=torch.full_like(targets, t),
        horizon=torch.full_like(targets, horizon),
        target=targets,
        active_bits=torch.full_like(targets, params.active_bits),
    )
    obs, _ = delayed_memory_observe(state, params)
    return obs.to(torch.float64)


def query_logits(policy: StatePolicy, params: DelayedMemoryParams, targets: torch.Tensor, state: MambaState):
    """float64 ``[P, A]``: the head's output at the query step entered with ``state`` (a
    :func:`float64_policy`; the query observation does not depend on the delay)."""
    query = _observations(params, targets, 1, 0)
    features, _ = policy.module.step(query, state)
    return policy.head(features)


@torch.no_grad()
def fast_forward_memory(
    policy,
    params: DelayedMemoryParams,
    targets: torch.Tensor,
    horizon: float,
    *,
    warmup: int | None = None,
) -> FastForward:
    """The answers of ``policy`` to episodes of ``params``' task with these ``targets`` ``[P]``
    after exactly ``horizon`` blank steps (``math.inf``: the limit), in float64.

    ``policy``: an ``ActorCritic`` with a Mamba trunk, a :class:`~mamba_rl.lab.StatePolicy` or
    anything :func:`~mamba_rl.lab.as_state_policy` takes; it is copied to float64 on the CPU.
    ``warmup`` blank steps (default ``d_conv + 2``) are played through the model's step; a
    horizon within them is played whole.

    Raises:
        ValueError: ``params`` has distractors (the delay's observations are not constant), or a
            layer's scan inputs still change after the warm-up (several layers), or the model's
            step is not ``exp(dt A) h + dt B x`` (naming the layer and the relative difference).
    """
    if params.num_distractors:
        raise ValueError(
            f"params.num_distractors must be 0 for a fast-forward: distractors make every blank step's "
            f"observation different, so the scan is not time-invariant; got {params.num_distractors}"
        )
    if not (horizon == math.inf or (float(horizon).is_integer() and horizon >= 0)):
        raise ValueError(f"horizon must be a non-negative int or math.inf, got {horizon!r}")
    policy64, _ = float64_policy(policy)
    module = policy64.module
    d_conv = module.config.d_conv
    warmup = d_conv + 2 if warmup is None else int(warmup)
    if warmup < d_conv + 1:
        raise ValueError(
            f"warmup must be >= d_conv + 1 = {d_conv + 1} (the conv window holds only blank inputs after "
            f"d_conv blank steps, and one more step shows the scan's inputs stay put), got {warmup}"
        )
    targets = torch.as_tensor(targets, dtype=torch.int64)
    played = int(min(horizon, warmup))
    # the episode's own horizon only sets the query flag; any value beyond the played steps
    episode_horizon = played + 1
    state = module.zero_state((len(targets),))
    _, state = module.step(_observations(params, targets, 0, episode_horizon), state)
    blank = _observations(params, targets, 1, episode_horizon)
    previous = None
    for t in range(1, played + 1):
        inputs = blank_scan_inputs(module, blank, state)
        _, after = module.step(blank, state)
        if t == played and played == warmup:
            _check_stationary(previous, inputs, state, after)
        previous, state = inputs, after
    warm_ssm = state.ssm.clone()
    remaining = horizon - played
    if remaining > 0:
        dt_a = torch.stack([layer["dt_a"] for layer in previous], 1)
        drive = torch.stack([layer["drive"] for layer in previous], 1)
        state = MambaState(advance_ssm(state.ssm, dt_a, drive, remaining), state.conv)
    if previous is None:
        # no blank step at all: report the scan inputs a blank step would have
        previous = blank_scan_inputs(module, blank, state)
    logits = query_logits(policy64, params, targets, state)
    actions = policy_answers(policy64, logits)
    return FastForward(
        logits=logits,
        actions=actions,
        ssm=state.ssm,
        conv=state.conv,
        warm_ssm=warm_ssm,
        dt=torch.stack([layer["dt"] for layer in previous], 1),
        dt_a=torch.stack([layer["dt_a"] for layer in previous], 1),
        drive=torch.stack([layer["drive"] for layer in previous], 1),
        warmup=played,
        horizon=float(horizon),
    )


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _check_stationary(previous, inputs, state: MambaState, after: MambaState) -> None:
    """The scan inputs of the last two warm-up steps are equal, and the last step was ``a h + b``."""
    for i, (before, now) in enumerate(zip(previous, inputs)):
        for name in ("x", "dt", "B", "C", "z"):
            change = _relative(now[name], before[name])
            if change > STATIONARY_RTOL:
                raise ValueError(
                    f"layer {i}'s scan input {name!r} changes between blank steps (relative {change:.3g} > "
                    f"{STATIONARY_RTOL:g}): the delay is not time-invariant for this model, so no closed form "
                    "applies (a later layer of a stack reads the earlier layer's moving output)"
                )
        predicted = torch.exp(now["dt_a"]) * state.ssm[:, i] + now["drive"]
        error = _relative(after.ssm[:, i], predicted)
        if error > 1e-10:
            raise ValueError(
                f"layer {i}'s step differs from exp(dt A) h + dt B x by relative {error:.3g}: the model's "
                "scan is not the recurrence this fast-forward solves"
            )
