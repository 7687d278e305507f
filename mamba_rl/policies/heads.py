"""Action distributions over the actor head's outputs, one per action space.

Each head turns the actor's outputs ``params [B, num_outputs]`` (any leading dims) into actions,
log-probabilities and entropies, and draws its sampling noise ahead of time (a rollout's noise is
drawn before it, so that a CUDA graph can replay the step and a resumed run draws the same actions):

- :class:`CategoricalHead` (``Discrete(n)``): ``params`` are logits; inverse-CDF sampling from one
  uniform number per step. Action int64 ``[B]``.
- :class:`BitsHead` (``Discrete(2**num_bits)``, factorised): one Bernoulli per bit of the action's
  binary code, ``params`` the bits' logits (``num_bits`` outputs instead of ``2**num_bits``); the
  log-prob and entropy are sums over the bits. A valid distribution over the same actions, whose
  parameters generalise across answers: a right answer teaches every bit, not one of ``2**num_bits``
  rows (docs/TRAINING.md, "Capacity and distractors"). Action int64 ``[B]``.
- :class:`MultiDiscreteHead` (``MultiDiscrete(nvec)``): one categorical per entry, logits
  concatenated; the log-prob and entropy are sums. Action int64 ``[B, K]``.
- :class:`GaussianHead` (``Box(low, high, (D,))``): ``params`` are the mean, the log standard
  deviation is a learned per-dimension parameter (state-independent, as CleanRL's continuous PPO);
  the action is ``mean + std * normal noise`` with its exact Gaussian log-prob; the env receives it
  clipped to the bounds (the adapters clip). Action float32 ``[B, D]``.

:func:`make_action_head` picks one from a Gymnasium action space (``discrete="bits"``: a
:class:`BitsHead` for a ``Discrete`` space).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from mamba_rl.envs.spaces import check_action_space

__all__ = [
    "ActionHead",
    "BitsHead",
    "CategoricalHead",
    "DISCRETE_HEADS",
    "GaussianHead",
    "MultiDiscreteHead",
    "make_action_head",
    "sample_actions",
]

# how a Discrete(n) space's head is parameterised (make_action_head's ``discrete``)
DISCRETE_HEADS = ("categorical", "bits")


def sample_actions(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Categorical samples by inverse CDF: ``logits [B, A]``, ``uniform [B]`` in [0, 1) -> ``[B]`` int64.

    One uniform number per sample and no host synchronisation, so it can be captured in a CUDA
    graph and replayed from a saved generator state (resumed runs draw the same actions).
    """
    cdf = torch.softmax(logits.float(), dim=-1).cumsum(-1)
    return (cdf < uniform[..., None]).sum(-1).clamp_(max=logits.shape[-1] - 1)


class ActionHead(nn.Module):
    """The interface every head implements (see the module docstring)."""

    num_outputs: int
    """Width of the actor head's output (``params``)."""
    action_shape: tuple[int, ...]
    """One action's shape (``()`` for a category)."""
    action_dtype: torch.dtype
    noise_shape: tuple[int, ...]
    """One step's sampling noise per env."""

    def draw_noise(self, out: torch.Tensor, generator: torch.Generator) -> None:
        """Fill ``out [..., *noise_shape]`` with sampling noise from ``generator``."""
        raise NotImplementedError

    def sample(self, params: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(action, log_prob)`` from ``params`` and one step's ``noise``."""
        raise NotImplementedError

    def mode(self, params: torch.Tensor) -> torch.Tensor:
        """The most likely action (greedy evaluation)."""
        raise NotImplementedError

    def log_prob_entropy(self, params: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_prob, entropy)`` of ``action`` under ``params`` (differentiable)."""
        raise NotImplementedError


class CategoricalHead(ActionHead):
    def __init__(self, num_actions: int) -> None:
        super().__init__()
        self.num_outputs = int(num_actions)
        self.action_shape, self.action_dtype, self.noise_shape = (), torch.int64, ()

    def draw_noise(self, out, generator):
        out.uniform_(generator=generator)

    def sample(self, params, noise):
        action = sample_actions(params, noise)
        log_prob = torch.log_softmax(params.float(), -1).gather(-1, action[..., None]).squeeze(-1)
        return action, log_prob

    def mode(self, params):
        return params.argmax(-1)

    def log_prob_entropy(self, params, action):
        log_probs = torch.log_softmax(params.float(), dim=-1)
        log_prob = log_probs.gather(-1, action[..., None]).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        return log_prob, entropy


class BitsHead(ActionHead):
    """``Discrete(2**num_bits)`` as ``num_bits`` independent Bernoullis: action ``sum_j bit_j << j``
    with ``P(bit_j = 1) = sigmoid(params[..., j])``; the sampling noise is one uniform number per bit."""

    def __init__(self, num_bits: int) -> None:
        super().__init__()
        if not 1 <= int(num_bits) <= 62:
            raise ValueError(f"num_bits must be in 1..62, got {num_bits}")
        self.num_outputs = int(num_bits)
        self.action_shape, self.action_dtype, self.noise_shape = (), torch.int64, (self.num_outputs,)

    def _shifts(self, device) -> torch.Tensor:
        return torch.arange(self.num_outputs, device=device)

    def draw_noise(self, out, generator):
        out.uniform_(generator=generator)

    def sample(self, params, noise):
        bits = (noise < torch.sigmoid(params.float())).long()
        action = (bits << self._shifts(params.device)).sum(-1)
        return action, self.log_prob_entropy(params, action)[0]

    def mode(self, params):
        return ((params > 0).long() << self._shifts(params.device)).sum(-1)

    def log_prob_entropy(self, params, action):
        logits = params.float()
        # [*, num_bits]: bit j of each action
        bits = ((action[..., None] >> self._shifts(action.device)) & 1).to(logits.dtype)
        log_prob = -nn.functional.binary_cross_entropy_with_logits(logits, bits, reduction="none").sum(-1)
        # a Bernoulli's entropy is the cross-entropy of its logit with its own probability
        entropy = nn.functional.binary_cross_entropy_with_logits(logits, torch.sigmoid(logits), reduction="none")
        return log_prob, entropy.sum(-1)


class MultiDiscreteHead(ActionHead):
    def __init__(self, nvec) -> None:
        super().__init__()
        self.nvec = [int(n) for n in nvec]
        self.num_outputs = sum(self.nvec)
        self.action_shape, self.action_dtype, self.noise_shape = (len(self.nvec),), torch.int64, (len(self.nvec),)

    def draw_noise(self, out, generator):
        out.uniform_(generator=generator)

    def _split(self, params):
        return params.float().split(self.nvec, dim=-1)

    def sample(self, params, noise):
        action = torch.stack(
            [sample_actions(logits, noise[..., i]) for i, logits in enumerate(self._split(params))], -1
        )
        return action, self.log_prob_entropy(params, action)[0]

    def mode(self, params):
        return torch.stack([logits.argmax(-1) for logits in self._split(params)], -1)

    def log_prob_entropy(self, params, action):
        log_prob, entropy = 0.0, 0.0
        for i, logits in enumerate(self._split(params)):
            log_probs = torch.log_softmax(logits, -1)
            log_prob = log_prob + log_probs.gather(-1, action[..., i, None]).squeeze(-1)
            entropy = entropy - (log_probs.exp() * log_probs).sum(-1)
        return log_prob, entropy


class GaussianHead(ActionHead):
    def __init__(self, action_dim: int, init_log_std: float = 0.0) -> None:
        super().__init__()
        self.num_outputs = int(action_dim)
        self.action_shape, self.action_dtype, self.noise_shape = (self.num_outputs,), torch.float32, (self.num_outputs,)
        self.log_std = nn.Parameter(torch.full((self.num_outputs,), float(init_log_std)))

    def draw_noise(self, out, generator):
        out.normal_(generator=generator)

    def sample(self, params, noise):
        mean = params.float()
        action = mean + self.log_std.exp() * noise
        # the log-prob of a standard normal draw, shifted by the scale
        log_prob = (-0.5 * noise.square() - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return action, log_prob

    def mode(self, params):
        return params.float()

    def log_prob_entropy(self, params, action):
        mean, log_std = params.float(), self.log_std
        z = (action - mean) / log_std.exp()
        log_prob = (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        entropy = (0.5 + 0.5 * math.log(2 * math.pi) + log_std).sum(-1).expand_as(log_prob)
        return log_prob, entropy


def make_action_head(space: spaces.Space, discrete: str = "categorical") -> ActionHead:
    """The head for a Gymnasium action space (``Discrete``, ``MultiDiscrete``, bounded 1-d ``Box``).

    ``discrete``: a ``Discrete(n)`` space's head, ``"categorical"`` (``n`` logits) or ``"bits"``
    (:class:`BitsHead`, ``n`` a power of 2)."""
    if discrete not in DISCRETE_HEADS:
        raise ValueError(f"discrete must be one of {DISCRETE_HEADS}, got {discrete!r}")
    space = check_action_space(space)
    if isinstance(space, spaces.Discrete):
        n = int(space.n)
        if discrete == "categorical":
            return CategoricalHead(n)
        if int(space.start) != 0 or n < 2 or n & (n - 1):
            raise ValueError(f"discrete='bits' needs a Discrete(2**k) space starting at 0, got {space}")
        return BitsHead(n.bit_length() - 1)
    if isinstance(space, spaces.MultiDiscrete):
        return MultiDiscreteHead(np.asarray(space.nvec).reshape(-1))
    return GaussianHead(int(space.shape[0]))
