"""The actor-critic a :class:`~mamba_rl.config.TrainConfig` describes, sized from its env's spaces."""

from __future__ import annotations

from mamba_rl.config import TrainConfig, config_from_dict
from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.envs.adapters import BatchedEnv, make_env
from mamba_rl.io import CheckpointError, load_checkpoint
from mamba_rl.policies.actor_critic import ActorCritic, make_actor_critic

__all__ = ["build_policy", "load_policy", "make_train_env", "memory_params"]


def memory_params(cfg: TrainConfig, horizon=None, active_bits: int | None = None) -> DelayedMemoryParams:
    """The memory task's parameters from ``cfg`` (at ``horizon`` instead of the trained one when
    given; with ``active_bits`` random bits per episode, default all ``num_bits``)."""
    return DelayedMemoryParams(
        num_bits=cfg.num_bits,
        horizon=cfg.env_horizon if horizon is None else horizon,
        num_distractors=cfg.num_distractors,
        wrong_penalty=cfg.wrong_penalty,
        horizon_sampling=cfg.horizon_sampling,
        active_bits=active_bits,
    )


def make_train_env(cfg: TrainConfig, num_envs: int, device, active_bits: int | None = None) -> BatchedEnv:
    """``num_envs`` copies of ``cfg.env`` (with ``env_kwargs`` and ``vectorization``) on ``device``;
    the memory task with ``active_bits`` random bits per episode (default all ``num_bits``)."""
    return make_env(
        cfg.env,
        num_envs,
        device,
        env_kwargs=cfg.env_kwargs,
        vectorization=cfg.vectorization,
        memory_params=memory_params(cfg, active_bits=active_bits) if cfg.is_memory_task else None,
    )


def build_policy(cfg: TrainConfig, device, env: BatchedEnv | None = None) -> ActorCritic:
    """The actor-critic described by ``cfg``, its input and action head from ``env``'s spaces
    (a one-copy env of ``cfg.env`` is made, and closed, when ``env`` is None)."""
    own = env is None
    if own:
        env = make_train_env(cfg, 1, "cpu")
    try:
        obs_dim, action_space = env.obs_dim, env.action_space
    finally:
        if own:
            env.close()
    return make_actor_critic(
        cfg.controller,
        obs_dim,
        action_space=action_space,
        shared_trunk=cfg.shared_trunk,
        mamba=cfg.mamba_config(),
        gru_hidden_size=cfg.gru_hidden_size,
        gru_backend=cfg.gru_backend,
        head_hidden=cfg.head_hidden,
        discrete_head=cfg.discrete_head,
        device=device,
    )


def load_policy(path, device="cpu") -> tuple[ActorCritic, TrainConfig, dict]:
    """``(policy, config, checkpoint)`` from a checkpoint file or run directory."""
    checkpoint = load_checkpoint(path, map_location=device)
    try:
        cfg = config_from_dict(checkpoint["config"], where=f"{path} (config)")
        policy = build_policy(cfg, device)
        policy.load_state_dict(checkpoint["policy"])
    except (ValueError, RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: the checkpoint's config or parameters do not build a policy: {err}") from err
    policy.eval()
    return policy, cfg, checkpoint
