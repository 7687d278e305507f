"""The policy the state lab looks into: a :class:`~mamba_rl.MambaModule` and the head on its features.

Every lab function takes a ``policy`` in any of these forms and turns it into a
:class:`StatePolicy` with :func:`as_state_policy`:

- a :class:`StatePolicy` ``(module, head, action_dist)``;
- a trainer ``ActorCritic`` (:mod:`mamba_rl.policies`) with a Mamba trunk: its actor trunk's
  ``MambaModule``, its ``actor_head`` and its ``action_dist`` (a separate critic trunk is left
  out: it does not act);
- a bare ``MambaModule`` (then there is no head, and functions that need answers say so).

The head's outputs become an answer through the action distribution's own rule
(:func:`policy_answers`): greedy, its ``mode`` (what the evaluation's greedy answers are: a
categorical head's argmax, a bits head's bits whose logit is positive), else its ``sample``.

Files: :func:`save_lab_policy` writes a small self-describing file (the module's shape, a linear
head, the task it was trained on, the parameters; loadable with ``weights_only=True``);
:func:`load_policy` reads that or a trainer checkpoint (``mamba-rl-train``'s
``checkpoint.pt`` or its run directory).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import nn

from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.module import MambaModule
from mamba_rl.policies.heads import ActionHead, CategoricalHead

__all__ = [
    "LAB_POLICY_FORMAT",
    "StatePolicy",
    "as_state_policy",
    "policy_answers",
    "module_config",
    "save_lab_policy",
    "load_policy",
]

LAB_POLICY_FORMAT = "mamba_rl.lab.policy"
LAB_POLICY_VERSION = 1


class StatePolicy(NamedTuple):
    """A Mamba trunk, the head that turns its features into the actor's outputs, and how those
    outputs become an answer.

    Attributes:
        module: the :class:`~mamba_rl.MambaModule`.
        head: ``features [..., d_model] -> outputs [..., num_outputs]``, or None (trace only).
        action_dist: the :class:`~mamba_rl.policies.heads.ActionHead` over the head's outputs
            (e.g. a ``BitsHead``: one logit per bit), or None: the outputs are a categorical's
            logits, one per answer.
    """

    module: MambaModule
    head: Callable[[torch.Tensor], torch.Tensor] | None
    action_dist: ActionHead | None = None


def as_state_policy(policy, head: Callable | None = None) -> StatePolicy:
    """``policy`` (a :class:`StatePolicy`, an ``ActorCritic`` with a Mamba trunk or a
    ``MambaModule``) as a :class:`StatePolicy`; ``head`` replaces the policy's own head."""
    if isinstance(policy, StatePolicy):
        return policy if head is None else policy._replace(head=head)
    if isinstance(policy, MambaModule):
        return StatePolicy(policy, head)
    trunk = getattr(policy, "actor_trunk", None)
    if trunk is not None:
        core = getattr(trunk, "core", None)
        if not isinstance(core, MambaModule):
            kind = getattr(trunk, "kind", type(core).__name__)
            raise TypeError(f"policy must have a Mamba trunk for the state lab, got a {kind!r} trunk")
        return StatePolicy(core, head if head is not None else policy.actor_head, policy.action_dist)
    core = getattr(policy, "core", None)
    if isinstance(core, MambaModule):
        return StatePolicy(core, head)
    raise TypeError(
        "policy must be a StatePolicy(module, head), an ActorCritic with a Mamba trunk or a "
        f"MambaModule, got {type(policy).__name__}"
    )


def policy_answers(
    policy: StatePolicy,
    outputs: torch.Tensor,
    *,
    greedy: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The answers ``[B]`` to the head's ``outputs [B, num_outputs]``, through the policy's action
    distribution (a categorical over ``outputs`` when it has none).

    Greedy: the distribution's ``mode``, the function the evaluation's greedy answers come from
    (a bits head: the bits whose logit is positive; a categorical: the argmax). Sampled: its
    ``sample`` with noise drawn by its ``draw_noise`` from ``generator`` (the evaluation hashes
    its noise from the episode and step instead, so sampled answers follow the same
    distribution, not the same draws).
    """
    action_dist = policy.action_dist if policy.action_dist is not None else CategoricalHead(outputs.shape[-1])
    if greedy:
        return action_dist.mode(outputs)
    noise = torch.empty(outputs.shape[0], *action_dist.noise_shape, device=outputs.device)
    action_dist.draw_noise(noise, generator)
    return action_dist.sample(outputs, noise)[0]


def module_config(module: MambaModule) -> dict:
    """The constructor arguments that rebuild ``module``'s shape (``MambaModule(**config)``).

    Initialisation-only options (``dt_min``, ``dt_max``...) are left out: the parameters that
    are loaded afterwards carry them.
    """
    config = module.config
    return {
        "input_size": module.input_size,
        "d_model": config.d_model,
        "num_layers": config.num_layers,
        "d_state": config.d_state,
        "d_conv": config.d_conv,
        "expand": config.expand,
        "dt_rank": config.resolved_dt_rank,
        "conv_bias": config.conv_bias,
        "bias": config.bias,
        "start_marker": config.start_marker,
        "norm": config.norm,
        "in_keys": [list(k) if isinstance(k, tuple) else k for k in module.in_keys],
        "out_keys": [list(k) if isinstance(k, tuple) else k for k in module.out_keys],
    }


def _keys(keys):
    return [tuple(k) if isinstance(k, list) else k for k in keys]


def save_lab_policy(
    path: str | os.PathLike,
    module: MambaModule,
    head: nn.Linear,
    params: DelayedMemoryParams | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``module`` and its linear ``head`` (and the task they were trained on) to ``path``."""
    if not isinstance(head, nn.Linear):
        raise TypeError(f"head must be an nn.Linear (the lab file stores a linear head), got {type(head).__name__}")
    from mamba_rl.state import atomic_save

    payload = {
        "format": LAB_POLICY_FORMAT,
        "version": LAB_POLICY_VERSION,
        "module": module_config(module),
        "head": {"in_features": head.in_features, "out_features": head.out_features},
        "env": None
        if params is None
        else {
            "num_bits": params.num_bits,
            "horizon": list(params.horizon) if isinstance(params.horizon, tuple) else params.horizon,
            "num_distractors": params.num_distractors,
            "wrong_penalty": params.wrong_penalty,
        },
        "module_state": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "head_state": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        "extra": extra or {},
    }
    return Path(atomic_save(payload, path))


def _params_from(env: dict | None) -> DelayedMemoryParams | None:
    if env is None:
        return None
    horizon = env["horizon"]
    return DelayedMemoryParams(
        num_bits=env["num_bits"],
        horizon=tuple(horizon) if isinstance(horizon, list) else horizon,
        num_distractors=env.get("num_distractors", 0),
        wrong_penalty=env.get("wrong_penalty", 0.0),
    )


def load_policy(path: str | os.PathLike, device="cpu") -> tuple[StatePolicy, DelayedMemoryParams | None, dict]:
    """``(policy, params, info)`` from a lab policy file or a trainer checkpoint (file or run dir).

    ``params`` is the task the policy was trained on (None if the file does not say); ``info``
    holds the file's ``"extra"`` (lab files) or the checkpoint's counters (trainer files).

    Raises:
        ValueError: the path is neither, naming what was found.
    """
    path = Path(path)
    if path.is_file():
        try:
            payload = torch.load(path, map_location=device, weights_only=True)
        except Exception as err:
            raise ValueError(f"{path} is not a readable torch file: {err}") from err
        if isinstance(payload, dict) and payload.get("format") == LAB_POLICY_FORMAT:
            return _load_lab_payload(payload, path, device)
    from mamba_rl.policies import load_policy as load_trainer_policy

    policy, cfg, checkpoint = load_trainer_policy(path, device)
    params = DelayedMemoryParams(
        num_bits=cfg.num_bits,
        horizon=cfg.env_horizon,
        num_distractors=cfg.num_distractors,
        wrong_penalty=cfg.wrong_penalty,
        horizon_sampling=cfg.horizon_sampling,
    )
    info = {"update": checkpoint.get("update"), "controller": cfg.controller, "trained_horizon": cfg.horizon}
    return as_state_policy(policy), params, info


def _load_lab_payload(payload: dict, path: Path, device) -> tuple[StatePolicy, DelayedMemoryParams | None, dict]:
    if payload.get("version") != LAB_POLICY_VERSION:
        raise ValueError(
            f"{path}: lab policy version {payload.get('version')!r}, this mamba-rl reads {LAB_POLICY_VERSION}"
        )
    config = dict(payload["module"])
    config["in_keys"], config["out_keys"] = _keys(config["in_keys"]), _keys(config["out_keys"])
    # files that do not name it hold a module without the start marker
    config.setdefault("start_marker", False)
    module = MambaModule(**config, backend="auto", device=device)
    module.load_state_dict(payload["module_state"])
    head = nn.Linear(payload["head"]["in_features"], payload["head"]["out_features"], device=device)
    head.load_state_dict(payload["head_state"])
    module.eval()
    head.eval()
    return StatePolicy(module, head), _params_from(payload.get("env")), dict(payload.get("extra", {}))
