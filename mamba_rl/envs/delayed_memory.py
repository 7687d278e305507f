"""Functional core of the delayed multi-bit memory task, on plain tensors.

The task. Each episode of each environment runs through ``horizon + 2`` steps, indexed by
``t`` (the step counter in :class:`DelayedMemoryState`):

==================  =========================================  ==========================
``t``               observation                                the action taken there
==================  =========================================  ==========================
0 (cue)             ``num_bits`` bits of the episode, cue = 1  ignored (reward 0)
1 .. horizon        bits all 0, cue = 0, query = 0             ignored (reward 0)
horizon + 1 (query) bits all 0, query = 1                      scored, then the episode ends
==================  =========================================  ==========================

An episode therefore takes ``horizon + 2`` actions and only the last is scored: reward 1 when
it equals the integer code of the bits (in the active bits, see below), ``-wrong_penalty``
otherwise. The code is ``target = sum(bits[j] << j)``: bit ``j`` of the observation is bit ``j`` of the target
(least significant first), so ``target`` is in ``0 .. 2**num_bits - 1`` and so is the action.

Observation layout, float32 ``[N, obs_dim]`` with ``obs_dim = num_bits + 2 + num_distractors``::

    [ bits (num_bits) | cue flag | query flag | distractors (num_distractors) ]

Each distractor channel shows a fresh fair coin (0.0 or 1.0) at every step, the cue and
query steps included, so the bits cannot be told from the distractors by their values.

Active bits. With ``active_bits = k < num_bits`` only the first ``k`` bits are drawn at random;
the others are always 0, so ``target < 2**k``, while the observation and the actions keep their
``num_bits`` layout. Only the answer's ``k`` low bits are scored (its bits ``k .. num_bits - 1``
may be anything), so a random answer is right with probability ``2**-k``, not ``2**-num_bits``:
with every bit scored a policy would first have to find, from right answers as rare as at
``num_bits``, that the inactive bits are 0. Bit ``j`` of an episode is the same for every
``k > j`` (the target is the full-width hash masked to its ``k`` low bits), so the map a policy
learns at ``k`` (answer bit ``j`` = cue bit ``j``) holds at ``k + 1``: a curriculum over the
number of bits (:mod:`mamba_rl.training.trainer`) raises ``k`` while the shapes stay fixed. ``k`` lives in the
state (``active_bits``, one per environment) and is read by :func:`delayed_memory_reset`, so it
can change between steps without tracing or capturing the step again.

After the query step the environment is terminal (``t = horizon + 2``): its observation shows
no bits and no flags (distractors still change), and stepping it again is a no-op that
reports ``done`` again with reward 0. A state fresh from :func:`delayed_memory_init` is in
that terminal state too, before any episode: call :func:`delayed_memory_reset` first.

Randomness. There is no shared generator to consume. Every random quantity is a hash
(``lowbias32`` by C. Wellons, computed exactly in int64 arithmetic) of the seed, the
environment index ``i``, the environment's own episode counter ``k`` and, for distractors, the
step ``t``. Episode ``k`` of environment ``i`` is thus a pure function of ``(seed, i, k)``:

- the same seed (and active bits) gives the same episodes, on any device (CPU and CUDA agree bit for bit),
  whatever the actions, the number of steps between resets, or torch's global RNG state;
- a partial reset advances the episode counter of the reset environments alone; the others'
  future episodes do not change;
- the functions have no side effects and no host-device synchronisation, so they can be
  traced by ``torch.compile`` or captured into a CUDA graph.

The horizon of an episode is ``horizon`` when that is an int, or uniform over
``low .. high`` (both included) when it is a pair ``(low, high)``; with a range, environments
finish out of step.

Example (a fast rollout loop with same-step autoreset)::

    >>> import torch
    >>> from mamba_rl.envs import (DelayedMemoryParams, delayed_memory_init,
    ...     delayed_memory_reset, delayed_memory_observe, delayed_memory_step)
    >>> params = DelayedMemoryParams(num_bits=4, horizon=(5, 10))
    >>> state = delayed_memory_reset(delayed_memory_init(8, params, seed=0), None, params)
    >>> obs, decision = delayed_memory_observe(state, params)  # [8, 6] float32, [8] bool
    >>> for _ in range(50):
    ...     action = torch.randint(0, params.num_actions, (8,))
    ...     state, obs, reward, done, decision, success = delayed_memory_step(
    ...         state, action, params, autoreset=True)
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import torch

__all__ = [
    "MAX_HORIZON",
    "DelayedMemoryParams",
    "DelayedMemoryState",
    "DelayedMemoryStep",
    "check_action",
    "delayed_memory_init",
    "delayed_memory_observe",
    "delayed_memory_reset",
    "delayed_memory_score",
    "delayed_memory_states_ahead",
    "delayed_memory_step",
    "mix32",
]

# Keeps every step counter and hash input far from int64 overflow.
MAX_HORIZON = 2**31 - 3

_M32 = 0xFFFFFFFF
_SALT_TARGET = 0x68E31DA4
_SALT_HORIZON = 0xB5297A4D
HORIZON_SAMPLINGS = ("uniform", "log_uniform")
_SALT_EPISODE = 0x9E3779B9
_SALT_DISTRACTOR = 0x1B56C4E9


def _mul32(x, c: int):
    """``(x * c) mod 2**32`` for ``x`` in ``0 .. 2**32 - 1`` without int64 overflow.

    For ``c >= 2**31``, ``x * c = x * (c - 2**31) + (x << 31)`` and ``(x << 31) mod 2**32`` is
    ``(x & 1) << 31``; each product stays below ``2**63``.
    """
    if c < 2**31:
        return (x * c) & _M32
    return (x * (c - 2**31) + ((x & 1) << 31)) & _M32


def mix32(x):
    """The ``lowbias32`` integer hash, a bijection of ``0 .. 2**32 - 1``.

    Args:
        x: a Python int or an int64 tensor of any shape, every value in ``0 .. 2**32 - 1``.

    Returns:
        The hash, same type and shape, values in ``0 .. 2**32 - 1``. Equal to the uint32
        reference (``x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b;
        x ^= x >> 16``) on every device.
    """
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class DelayedMemoryParams:
    """Static configuration of the task; validated on construction.

    Attributes:
        num_bits: bits to remember, in ``1 .. 16``; there are ``2**num_bits`` actions.
        horizon: delay steps between the cue step and the query step: an int in
            ``1 .. MAX_HORIZON``, or a pair ``(low, high)`` with ``1 <= low <= high`` to draw
            it per episode from ``low .. high`` inclusive, as ``horizon_sampling`` says.
        num_distractors: noise channels appended to the observation, ``>= 0``.
        wrong_penalty: the reward of a wrong answer is ``-wrong_penalty``; finite, ``>= 0``.
        active_bits: the bits drawn at random in each episode, ``1 .. num_bits`` (the others are
            0); None means ``num_bits``. It sets the ``active_bits`` field of the state that
            :func:`delayed_memory_init` makes; the state's value is the one episodes draw with.
        horizon_sampling: how a range of delays is drawn: ``"uniform"`` (each delay in
            ``low .. high`` equally likely) or ``"log_uniform"`` (``log(delay)`` uniform, so each
            decade of delays gets the same share of episodes: with ``(1, 1000)`` a tenth of the
            episodes have a delay of 1 or 2 and a third of them at least 100). Ignored for a
            fixed horizon.

    Raises:
        ValueError / TypeError: naming the argument, what was expected and what came.
    """

    num_bits: int = 4
    horizon: int | tuple[int, int] = 1000
    num_distractors: int = 0
    wrong_penalty: float = 0.0
    horizon_sampling: str = "uniform"
    active_bits: int | None = None

    def __post_init__(self):
        if not _is_int(self.num_bits) or not 1 <= self.num_bits <= 16:
            raise ValueError(f"num_bits must be an int in 1..16, got {self.num_bits!r}")
        object.__setattr__(self, "num_bits", int(self.num_bits))
        if self.active_bits is None:
            object.__setattr__(self, "active_bits", self.num_bits)
        if not _is_int(self.active_bits) or not 1 <= self.active_bits <= self.num_bits:
            raise ValueError(
                f"active_bits must be an int in 1..num_bits={self.num_bits} (or None for all), got {self.active_bits!r}"
            )
        object.__setattr__(self, "active_bits", int(self.active_bits))
        object.__setattr__(self, "horizon", _check_horizon(self.horizon))
        if not _is_int(self.num_distractors) or self.num_distractors < 0:
            raise ValueError(f"num_distractors must be an int >= 0, got {self.num_distractors!r}")
        object.__setattr__(self, "num_distractors", int(self.num_distractors))
        penalty = self.wrong_penalty
        if (
            isinstance(penalty, bool)
            or not isinstance(penalty, numbers.Real)
            or not math.isfinite(penalty)
            or penalty < 0
        ):
            raise ValueError(
                f"wrong_penalty must be a finite number >= 0 (a wrong answer earns -wrong_penalty), got {penalty!r}"
            )
        object.__setattr__(self, "wrong_penalty", float(penalty))
        if self.horizon_sampling not in HORIZON_SAMPLINGS:
            raise ValueError(
                f"horizon_sampling must be one of {', '.join(map(repr, HORIZON_SAMPLINGS))}, "
                f"got {self.horizon_sampling!r}"
            )

    @property
    def horizon_range(self) -> tuple[int, int]:
        """``(low, high)``, inclusive; ``low == high`` for a fixed horizon."""
        if isinstance(self.horizon, tuple):
            return self.horizon
        return (self.horizon, self.horizon)

    @property
    def obs_dim(self) -> int:
        """``num_bits + 2 + num_distractors``."""
        return self.num_bits + 2 + self.num_distractors

    @property
    def num_actions(self) -> int:
        """``2**num_bits``."""
        return 2**self.num_bits

    @property
    def max_episode_steps(self) -> int:
        """Actions in the longest episode: ``high + 2``."""
        return self.horizon_range[1] + 2


def _check_horizon(horizon) -> int | tuple[int, int]:
    if _is_int(horizon):
        if not 1 <= horizon <= MAX_HORIZON:
            raise ValueError(f"horizon must be in 1..{MAX_HORIZON}, got {horizon!r}")
        return int(horizon)
    if isinstance(horizon, (tuple, list)) and len(horizon) == 2 and all(map(_is_int, horizon)):
        low, high = int(horizon[0]), int(horizon[1])
        if low > high:
            raise ValueError(f"horizon range (low, high) must have low <= high, got low={low} > high={high}")
        if not 1 <= low or not high <= MAX_HORIZON:
            raise ValueError(f"horizon range (low, high) must lie in 1..{MAX_HORIZON}, got {horizon!r}")
        return (low, high)
    raise ValueError(f"horizon must be an int >= 1 or a pair of ints (low, high), got {horizon!r}")


class DelayedMemoryState(NamedTuple):
    """Per-environment state; every field is int64 ``[N]`` on the environment's device."""

    # per-environment hash key, from the seed and the environment index
    stream: torch.Tensor
    # episodes begun by each environment; -1 before the first reset
    episode: torch.Tensor
    # hash key of the current episode, from stream and episode
    episode_key: torch.Tensor
    # 0 cue, 1..horizon delay, horizon + 1 query, horizon + 2 terminal
    t: torch.Tensor
    # delay length of the current episode
    horizon: torch.Tensor
    # integer code of the current episode's bits, 0 .. 2**active_bits - 1
    target: torch.Tensor
    # bits drawn at random by the next reset, 1 .. num_bits (the others are 0)
    active_bits: torch.Tensor


class DelayedMemoryStep(NamedTuple):
    """What :func:`delayed_memory_step` returns; unpacks as a 6-tuple."""

    # state after the step
    state: DelayedMemoryState
    # float32 [N, obs_dim], the observation of the step to come
    observation: torch.Tensor
    # float32 [N]: 1 or -wrong_penalty at the query step, 0 elsewhere
    reward: torch.Tensor
    # bool [N]: the step just taken ended the episode (or the env was already terminal)
    done: torch.Tensor
    # bool [N]: the action of the step to come will be scored
    decision: torch.Tensor
    # bool [N]: the step just taken was scored and its answer was right
    success: torch.Tensor


def _seed_key(seed: int) -> int:
    """A 32-bit key from an int seed (taken modulo ``2**64``)."""
    if not _is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}")
    seed = int(seed) % 2**64
    return mix32(mix32((seed & _M32) ^ _SALT_EPISODE) ^ (seed >> 32))


def delayed_memory_init(
    num_envs: int,
    params: DelayedMemoryParams,
    seed: int,
    device: torch.device | str | None = None,
) -> DelayedMemoryState:
    """The state of ``num_envs`` environments before their first episode (all terminal).

    Args:
        num_envs: ``N >= 1``.
        params: the task configuration.
        seed: any int (taken modulo ``2**64``); environment ``i`` draws from the stream of
            ``(seed, i)``, so the first ``n`` environments of a batch seeded ``s`` see the same
            episodes whatever the batch size.
        device: where the state lives (default CPU).

    Returns:
        A :class:`DelayedMemoryState`; pass it through :func:`delayed_memory_reset` before
        stepping.
    """
    if not _is_int(num_envs) or num_envs < 1:
        raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
    key = _seed_key(seed)
    index = torch.arange(num_envs, dtype=torch.int64, device=device)
    stream = mix32(index ^ key)
    low = params.horizon_range[0]
    return DelayedMemoryState(
        stream=stream,
        episode=torch.full_like(stream, -1),
        episode_key=torch.zeros_like(stream),
        t=torch.full_like(stream, low + 2),
        horizon=torch.full_like(stream, low),
        target=torch.zeros_like(stream),
        active_bits=torch.full_like(stream, params.active_bits),
    )


def _log_uniform_delay(bits: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """An int in ``low .. high`` whose log is uniform on ``[log low, log(high + 1))``, from 32 hash bits.

    Computed in float64, so the CPU and the GPU draw the same delay for the same episode unless
    the ``exp`` lands within a float64 rounding error (~1e-16 relative) of an integer.
    """
    u = (bits.to(torch.float64) + 0.5) * 2.0**-32
    log_low, log_high = math.log(low), math.log(high + 1)
    delay = torch.exp(log_low + u * (log_high - log_low)).floor().to(torch.int64)
    return delay.clamp(low, high)


def delayed_memory_reset(
    state: DelayedMemoryState,
    mask: torch.Tensor | None,
    params: DelayedMemoryParams,
) -> DelayedMemoryState:
    """Starts a new episode in the environments selected by ``mask``.

    Args:
        state: the current state.
        mask: bool ``[N]`` (True = reset), or ``None`` to reset all.
        params: the task configuration.

    Returns:
        The new state: reset environments are at their cue step (``t = 0``) with their next
        episode counter, bits and horizon; the others are returned unchanged.
    """
    episode = state.episode + 1 if mask is None else state.episode + mask.to(torch.int64)
    episode_key = mix32(state.stream ^ mix32((episode + _SALT_EPISODE) & _M32))
    # the full-width code masked to its active_bits low bits: [N]
    target = mix32(episode_key ^ _SALT_TARGET) & ((torch.ones_like(episode_key) << state.active_bits) - 1)
    low, high = params.horizon_range
    if low == high:
        horizon = torch.full_like(state.horizon, low)
    elif params.horizon_sampling == "log_uniform":
        horizon = _log_uniform_delay(mix32(episode_key ^ _SALT_HORIZON), low, high)
    else:
        horizon = low + mix32(episode_key ^ _SALT_HORIZON) % (high - low + 1)
    if mask is None:
        return DelayedMemoryState(
            state.stream, episode, episode_key, torch.zeros_like(state.t), horizon, target, state.active_bits
        )
    return DelayedMemoryState(
        stream=state.stream,
        episode=episode,
        episode_key=torch.where(mask, episode_key, state.episode_key),
        t=torch.where(mask, 0, state.t),
        horizon=torch.where(mask, horizon, state.horizon),
        target=torch.where(mask, target, state.target),
        active_bits=state.active_bits,
    )


def delayed_memory_observe(state: DelayedMemoryState, params: DelayedMemoryParams) -> tuple[torch.Tensor, torch.Tensor]:
    """The observation of the current step and whether its action will be scored.

    Returns:
        ``(observation, decision)``: float32 ``[N, obs_dim]`` laid out as in the module
        docstring, and bool ``[N]``, True at the query step.
    """
    t = state.t
    device = t.device
    cue = t == 0
    decision = t == state.horizon + 1
    shifts = torch.arange(params.num_bits, dtype=torch.int64, device=device)
    # [N, num_bits]
    bits = ((state.target.unsqueeze(-1) >> shifts) & 1) * cue.unsqueeze(-1)
    parts = [bits, cue.unsqueeze(-1), decision.unsqueeze(-1)]
    if params.num_distractors:
        channel = torch.arange(params.num_distractors, dtype=torch.int64, device=device)
        num_words = (params.num_distractors + 31) // 32
        word = torch.arange(num_words, dtype=torch.int64, device=device)
        # [N, num_words]: 32 coins per hash
        counter = (t.unsqueeze(-1) * num_words + word + _SALT_DISTRACTOR) & _M32
        coins = mix32(state.episode_key.unsqueeze(-1) ^ mix32(counter))
        # [N, num_distractors]
        parts.append((coins[:, channel // 32] >> (channel % 32)) & 1)
    observation = torch.cat([p.to(torch.float32) for p in parts], dim=-1)
    return observation, decision


def delayed_memory_step(
    state: DelayedMemoryState,
    action: torch.Tensor,
    params: DelayedMemoryParams,
    autoreset: bool = False,
) -> DelayedMemoryStep:
    """Takes one step in every environment; no checks, no host-device synchronisation.

    Args:
        state: the current state.
        action: integer ``[N]``, each in ``0 .. 2**num_bits - 1``. Not checked here (an
            out-of-range action simply scores as wrong); :func:`check_action` checks it.
        params: the task configuration.
        autoreset: if True, environments whose episode ends at this step start their next
            episode in the same call (same-step autoreset, as in gymnax/PureJaxRL): the
            returned ``observation`` and ``decision`` are then those of the new cue step,
            while ``reward``, ``done`` and ``success`` still describe the step just taken.

    Returns:
        A :class:`DelayedMemoryStep` ``(state, observation, reward, done, decision, success)``
        with shapes ``[N, obs_dim]`` float32, ``[N]`` float32, ``[N]`` bool, ``[N]`` bool,
        ``[N]`` bool.
    """
    reward, success = delayed_memory_score(state, action, params)
    done = state.t >= state.horizon + 1
    t = torch.where(done, state.horizon + 2, state.t + 1)
    new_state = state._replace(t=t)
    if autoreset:
        new_state = delayed_memory_reset(new_state, done, params)
    observation, decision = delayed_memory_observe(new_state, params)
    return DelayedMemoryStep(new_state, observation, reward, done, decision, success)


def delayed_memory_score(
    state: DelayedMemoryState, action: torch.Tensor, params: DelayedMemoryParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reward and success of ``action`` taken in ``state``: the task's one rule, which
    :func:`delayed_memory_step` applies. Elementwise: every field of ``state`` and ``action``
    have one shape (``[N]`` for a step, ``[N, T]`` for the states of
    :func:`delayed_memory_states_ahead`).

    Returns:
        ``(reward, success)``: float32, 1 or ``-wrong_penalty`` at the query step and 0 elsewhere;
        bool, the step is the query and the answer's active bits are right.
    """
    scored = state.t == state.horizon + 1
    # the answer's inactive bits, active_bits .. num_bits - 1, are not scored
    inactive = (params.num_actions - 1) & ~((torch.ones_like(state.active_bits) << state.active_bits) - 1)
    correct = ((action ^ state.target) & ~inactive) == 0
    success = scored & correct
    # 0.0 - penalty, not -penalty: a wrong answer without penalty earns +0.0, not -0.0
    reward = torch.where(
        scored,
        torch.where(correct, 1.0, 0.0 - params.wrong_penalty),
        0.0,
    ).to(torch.float32)
    return reward, success


def delayed_memory_states_ahead(
    state: DelayedMemoryState, steps: int, params: DelayedMemoryParams, autoreset: bool = True
) -> DelayedMemoryState:
    """The states in which the next ``steps`` steps from ``state`` are taken, whatever the actions.

    Nothing but the reward and success depends on the actions (the episodes are hashes of
    ``(seed, i, k)``, an episode ends at its query step), so the states that ``steps`` calls of
    :func:`delayed_memory_step` (with ``autoreset``) go through are known before any action:
    the current episode runs to its query step, then (autoreset) episode after episode, each from
    :func:`delayed_memory_reset`, or (no autoreset) the env stays terminal. They come at once,
    as tensors, bit for bit those of the step loop.

    Args:
        state: the current state, fields ``[N]``.
        steps: ``T >= 1``.
        params: the task.
        autoreset: as :func:`delayed_memory_step`'s.

    Returns:
        A :class:`DelayedMemoryState` with fields ``[N, T + 1]``: column ``s`` the state step ``s``
        is taken in, column ``T`` the state after the last step. Its observations and decisions
        are :func:`delayed_memory_observe`'s of the flattened fields, its rewards
        :func:`delayed_memory_score`'s, and step ``s`` ends its episode where
        ``t >= horizon + 1``.
    """
    n = state.t.shape[0]
    # [T + 1]: steps from now
    ahead = torch.arange(steps + 1, dtype=torch.int64, device=state.t.device)
    if not autoreset:
        # a finished episode stays terminal (t = horizon + 2)
        t = torch.minimum(state.t[:, None] + ahead, state.horizon[:, None] + 2)
        return DelayedMemoryState(*(value[:, None].expand(n, steps + 1) for value in state))._replace(t=t)
    # [N]: steps of the current episode still to take, its query step included (1 if terminal)
    left = (state.horizon + 2 - state.t).clamp(min=1)
    # the episodes that start within the next steps, at most one every low + 2 steps: [N, M]
    count = steps // (params.horizon_range[0] + 2) + 1
    offset = torch.arange(count, dtype=torch.int64, device=state.t.device)
    before = DelayedMemoryState(*(value[:, None].expand(n, count) for value in state))
    before = before._replace(episode=state.episode[:, None] + offset)
    # episode k + 1 of each env, drawn by the env's own reset from its counter at k
    started = delayed_memory_reset(DelayedMemoryState(*(value.reshape(-1) for value in before)), None, params)
    started = DelayedMemoryState(*(value.view(n, count) for value in started))
    length = started.horizon + 2
    # [N, M]: the step from now at which each starts
    start = left[:, None] + length.cumsum(1) - length
    # [N, T + 1]: 0 in the current episode, j in the j-th to start
    which = torch.searchsorted(start, ahead.expand(n, steps + 1).contiguous(), right=True)
    since = ahead - start.gather(1, (which - 1).clamp(min=0))
    fields = {}
    for name, now, later in zip(DelayedMemoryState._fields, state, started):
        fields[name] = torch.cat([now[:, None], later], 1).gather(1, which)
    fields["t"] = torch.where(which == 0, state.t[:, None] + ahead, since)
    return DelayedMemoryState(**fields)


def check_action(action, params: DelayedMemoryParams, num_envs: int, check_range: bool = True) -> torch.Tensor:
    """Checks a batch of actions; the range check synchronises with the device.

    Args:
        action: a tensor of any integer dtype except bool, shape ``[num_envs]``, values in
            ``0 .. 2**num_bits - 1``.
        params: the task configuration.
        num_envs: the batch size ``N``.
        check_range: also check the values (one bool read back from the device).

    Returns:
        The action as int64.

    Raises:
        TypeError: not a tensor, or not of an integer dtype.
        ValueError: wrong shape, or a value out of range (the first few are named, with
            their environment indices).
    """
    if not isinstance(action, torch.Tensor):
        raise TypeError(f"action must be a torch.Tensor, got {type(action).__name__}")
    if action.dtype == torch.bool or action.is_floating_point() or action.is_complex():
        raise TypeError(f"action must have an integer dtype (int64, a category index), got {action.dtype}")
    if action.shape != (num_envs,):
        raise ValueError(
            f"action must have shape [{num_envs}] (one category index per environment), got {list(action.shape)}"
        )
    if not check_range:
        return action.to(torch.int64)
    bad = (action < 0) | (action >= params.num_actions)
    if bool(bad.any()):
        index = bad.nonzero().squeeze(-1)[:5]
        raise ValueError(
            f"action must be in 0..{params.num_actions - 1} (num_bits={params.num_bits}), "
            f"got {action[index].tolist()} at env indices {index.tolist()}"
        )
    return action.to(torch.int64)
