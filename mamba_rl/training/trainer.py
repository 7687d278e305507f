"""PPO with GAE for recurrent (Mamba or GRU) policies on any env (the delayed memory task by default).

Reads top to bottom like CleanRL's ``ppo_atari_lstm.py``: set up, then per update: collect a
rollout (chunks of ``T`` steps across ``N`` envs, the recurrent state carried across chunks and
updates, only each chunk's start state stored), compute GAE, run the PPO epochs (minibatches of
whole environments, each chunk replayed from its stored state), log, checkpoint.

The rollout of an env whose observations do not depend on the actions (the memory task declares
``action_independent_observations``) is played by blocks of steps through the policy's sequence
path (:class:`~mamba_rl.training.rollout.SequenceRolloutCollector`); any other env is stepped one
step at a time (:class:`~mamba_rl.training.rollout.RolloutCollector`). Both give the same
:class:`~mamba_rl.training.rollout.Rollout` and carry, so the rest of the loop does not know which ran.

With ``delay_closed_form`` the memory task's episodes are played with their blank delay in closed
form (:mod:`mamba_rl.training.closed_form`): each update's rollout is one episode's query step per
environment, replayed through the same jump.

On several processes (torchrun; :mod:`mamba_rl.training.distributed`) every rank runs this loop
on its own environments; the replay goes through ``DistributedDataParallel``, the statistics and
the stopping decisions are reduced over the ranks, and rank 0 alone writes the run directory.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Literal

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel

from mamba_rl.config import ConfigError, TrainConfig, check_machine, config_to_dict
from mamba_rl.io import CHECKPOINT_NAME, find_checkpoint, load_checkpoint, save_checkpoint
from mamba_rl.logging_utils import RunLogger
from mamba_rl.policies import build_policy, count_parameters, make_train_env, memory_params
from mamba_rl.training.closed_form import ClosedFormCollector, ClosedFormRollout, closed_form_replay
from mamba_rl.training.distributed import Ranks, rank_device, rank_seed
from mamba_rl.training.evaluate import (
    evaluate_env,
    evaluate_horizons,
    format_return_table,
    format_table,
    resolve_device,
)
from mamba_rl.training.ppo import compute_gae, explained_variance, ppo_loss, replay
from mamba_rl.training.rollout import RolloutCollector, SequenceRolloutCollector
from mamba_rl.training.runs import RESUME_MUTABLE_KEYS, GracefulStop, RunLock, SignalsRaise, check_resume_config

__all__ = [
    "train",
    "ppo_update",
    "ReplayModule",
    "rollout_statistics",
    "TrainResult",
    "TrainingDiverged",
    "resolve_device",
    "new_run_dir",
    "run_name",
    "rollout_advantages",
    "RESUME_MUTABLE_KEYS",
    "BitsCurriculum",
    "set_active_bits",
]


class TrainingDiverged(RuntimeError):
    """A loss or gradient became NaN or inf; the run stopped and its last good checkpoint was kept."""


@dataclass
class TrainResult:
    run_dir: Path
    status: str
    """``"completed"``, ``"target_reached"``, ``"time_limit"`` (stopped by ``max_wall_time_s`` before
    ``num_updates``: not finished) or ``"interrupted"`` (SIGINT or SIGTERM)."""
    metrics: dict


def run_name(cfg: TrainConfig) -> str:
    if not cfg.is_memory_task:
        env = "".join(c if c.isalnum() or c in "-_." else "_" for c in cfg.env)
        return f"{cfg.controller}__{env}__s{cfg.seed}"
    horizon = cfg.horizon if isinstance(cfg.horizon, int) else f"{cfg.horizon[0]}-{cfg.horizon[1]}"
    return f"{cfg.controller}__h{horizon}__s{cfg.seed}"


def new_run_dir(cfg: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(cfg.run_root) / f"{cfg.exp_name}__{run_name(cfg)}__{stamp}"


def _learning_rate(cfg: TrainConfig, update: int) -> float:
    progress = update / cfg.num_updates
    if cfg.lr_schedule == "linear":
        return cfg.learning_rate * (1.0 - progress)
    if cfg.lr_schedule == "cosine":
        return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.learning_rate


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def rollout_advantages(rollout, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(advantages, returns)`` ``[N, S]`` of ``rollout``: GAE on the rewards times ``cfg.reward_scale``
    (the values the policy predicts are of the scaled returns)."""
    return compute_gae(
        rollout.reward * cfg.reward_scale,
        rollout.value,
        rollout.done,
        rollout.bootstrap_value,
        cfg.gamma,
        cfg.gae_lambda,
        rollout.terminated,
        rollout.final_value,
    )


class ReplayModule(torch.nn.Module):
    """:func:`~mamba_rl.training.ppo.replay` of the policy as a ``forward``: DDP prepares the
    all-reduce of the gradients in ``forward``, and the trainer's loss starts at the replay."""

    def __init__(self, policy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, rollout, env_idx: torch.Tensor, backprop: str, policy_mask: torch.Tensor | None = None):
        return _replay_for(rollout)(self.policy, rollout, env_idx, backprop, policy_mask)


def _replay_for(rollout):
    """The replay that recomputes ``rollout``'s steps: the closed-form one for the query steps of
    episodes played in closed form, else the chunk replay."""
    return closed_form_replay if isinstance(rollout, ClosedFormRollout) else replay


def ppo_update(
    policy,
    optimizer,
    rollout,
    advantages,
    returns,
    cfg: TrainConfig,
    generator: torch.Generator,
    *,
    ranks: Ranks | None = None,
    ddp: DistributedDataParallel | None = None,
) -> dict:
    """``update_epochs`` passes over the rollout in ``num_minibatches`` minibatches of whole environments.

    With several ``ranks``, ``ddp`` (a :class:`ReplayModule` of ``policy`` in DDP) replays, so that
    the gradients are averaged over the ranks, and the loss's normalisers are global
    (:func:`~mamba_rl.training.ppo.ppo_loss`); every rank then takes the same optimizer step.

    Returns the mean of each loss statistic over the minibatches run (0-d tensors, not synced;
    this rank's: their mean over the ranks is the global one).
    """
    ranks = ranks or Ranks()
    replay_rows = ddp if ddp is not None else functools.partial(_replay_for(rollout), policy)
    num_envs = rollout.obs.shape[0]
    device = rollout.obs.device
    # [N, S] bool: the steps whose action is scored; the actor head and the policy terms only see those
    policy_mask = rollout.decision if cfg.policy_mask_key == "decision" else None
    totals: dict[str, torch.Tensor] = {}
    count = 0
    for _ in range(cfg.update_epochs):
        epoch_kl = []
        for env_idx in torch.randperm(num_envs, generator=generator).tensor_split(cfg.num_minibatches):
            env_idx = env_idx.to(device)
            logits, value = replay_rows(rollout, env_idx, cfg.backprop, policy_mask)
            policy_terms = (rollout.action[env_idx], rollout.log_prob[env_idx], advantages[env_idx])
            weight = None
            if policy_mask is not None:
                # [M]: the masked steps gathered in the order of the replay's logits, each of weight 1
                mask = policy_mask[env_idx]
                policy_terms = tuple(x[mask] for x in policy_terms)
                weight = torch.ones(logits.shape[0], device=device)
            action, old_log_prob, policy_advantages = policy_terms
            out = ppo_loss(
                logits,
                value,
                action,
                old_log_prob,
                rollout.value[env_idx],
                policy_advantages,
                returns[env_idx],
                weight,
                clip_coef=cfg.clip_coef,
                ent_coef=cfg.ent_coef,
                vf_coef=cfg.vf_coef,
                norm_adv=cfg.norm_adv,
                clip_vloss=cfg.clip_vloss,
                action_dist=policy.action_dist,
                ranks=ranks,
            )
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
            stats = {
                "losses/loss": out.loss,
                "losses/policy": out.policy,
                "losses/value": out.value,
                "losses/entropy": out.entropy,
                "losses/approx_kl": out.approx_kl,
                "losses/clip_fraction": out.clip_fraction,
                "losses/grad_norm": grad_norm,
            }
            for name, value_ in stats.items():
                totals[name] = totals.get(name, 0.0) + value_.detach().float()
            count += 1
            epoch_kl.append(out.approx_kl)
        # every rank reads the same mean, so that all of them stop after the same epoch
        if cfg.target_kl is not None and float(ranks.mean([torch.stack(epoch_kl).mean()])[0]) > cfg.target_kl:
            break
    return {name: total / count for name, total in totals.items()}


def _rank_state(collector, generator, ranks: Ranks) -> dict:
    """What one rank alone holds: its collector (env state, recurrent state, sampling generator) and
    its minibatch generator; on CPU tensors when it travels to rank 0."""
    state = {"collector": collector.state_dict(), "minibatch_generator": generator.get_state()}
    if ranks.world_size > 1:
        state["collector"]["carry"] = {k: v.cpu() for k, v in state["collector"]["carry"].items()}
    return state


def _checkpoint_payload(
    cfg, update, global_step, train_time_s, policy, optimizer, rank_states, history, counts, curriculum
) -> dict:
    """Rank 0's state under ``"collector"`` and ``"minibatch_generator"`` (what a run on one process
    saves), the other ranks' in ``"rank_states"`` (rank ``r`` at ``r - 1``)."""
    payload = {
        "config": config_to_dict(cfg),
        "update": update,
        "global_step": global_step,
        "train_time_s": train_time_s,
        "policy": policy.state_dict(),
        "optimizer": optimizer.state_dict(),
        **rank_states[0],
        "world_size": len(rank_states),
        "history": history,
        "param_counts": counts,
        "torch_version": str(torch.__version__),
    }
    if curriculum is not None:
        payload["bits_curriculum"] = curriculum.state_dict()
    if len(rank_states) > 1:
        payload["rank_states"] = rank_states[1:]
    return payload


def _load_for_resume(checkpoint_path: Path, cfg: TrainConfig, ranks: Ranks, map_location) -> dict:
    """The checkpoint to resume (read on rank 0), checked against ``cfg`` and the world size."""
    checkpoint = load_checkpoint(checkpoint_path, map_location=map_location)
    check_resume_config(checkpoint["config"], cfg, str(checkpoint_path))
    saved = checkpoint.get("world_size", 1)
    if saved != ranks.world_size:
        raise ConfigError(
            f"cannot resume {checkpoint_path} on {ranks.world_size} process(es): it was saved by a run on {saved} "
            f"(each holds its own environments and random streams); resume it with torchrun --nproc_per_node "
            f"{saved} (or, for 1, plain python train.py)"
        )
    return checkpoint


def _distribute_checkpoint(checkpoint: dict | None, ranks: Ranks) -> tuple[dict, dict]:
    """``(shared, own)``: what every rank loads (parameters, optimizer, counters) and this rank's
    own state, from the checkpoint rank 0 read."""
    rank_keys = ("collector", "minibatch_generator", "rank_states")
    if ranks.world_size == 1:
        return checkpoint, {key: checkpoint[key] for key in rank_keys[:2]}
    rank_states = None
    if ranks.main:
        rank_states = [{k: checkpoint[k] for k in rank_keys[:2]}, *checkpoint["rank_states"]]
        checkpoint = {k: v for k, v in checkpoint.items() if k not in rank_keys}
    return ranks.broadcast(checkpoint), ranks.scatter(rank_states)


class _NoLogger:
    """What the ranks other than 0 log: nothing."""

    writer = None

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


@torch.no_grad()
def rollout_statistics(
    rollout,
    returns: torch.Tensor,
    state_norms: dict,
    ranks: Ranks | None = None,
    long_episode_length: int | None = None,
) -> dict:
    """The logged statistics of a rollout (0-d tensors, not synced): episodes that ended, their mean
    accuracy, return and length with 95% intervals, the value's explained variance and the state
    norms; with several ``ranks``, over every rank's environments (the same on every rank).

    With ``long_episode_length`` also ``train/episodes_long`` and ``train/accuracy_long``: the
    episodes that ended with at least that many steps. A rollout of fixed length ends many short
    episodes for each long one, so with delays drawn from a wide range ``train/accuracy`` is mostly
    the short delays' accuracy; the long episodes' own accuracy shows a policy that drops them."""
    ranks = ranks or Ranks()
    long_ended = rollout.done & (rollout.episode_length >= (long_episode_length or 0))
    episodes, successes, return_sum, length_sum, episodes_long, successes_long = ranks.sum(
        [
            rollout.done.sum(),
            rollout.success.sum(),
            rollout.episode_return.sum(),
            rollout.episode_length.sum(),
            long_ended.sum(),
            (rollout.success & long_ended).sum(),
        ]
    )
    stats = {
        "train/episodes": episodes.float(),
        "train/accuracy": successes / episodes.clamp(min=1),
        "train/episode_return": return_sum / episodes.clamp(min=1),
        "train/episode_length": length_sum / episodes.clamp(min=1),
    }
    # 95% interval of the mean over the episodes that ended in this rollout
    ended = rollout.done.float()
    per_step = {"return": rollout.episode_return, "length": rollout.episode_length}
    squares = ranks.sum(
        [(ended * (per_step[name].float() - stats[f"train/episode_{name}"]) ** 2).sum() for name in per_step]
    )
    for name, square in zip(per_step, squares):
        var = square / (episodes - 1).clamp(min=1)
        stats[f"train/episode_{name}_ci95"] = 1.96 * (var / episodes.clamp(min=1)).sqrt()
    if long_episode_length is not None:
        stats["train/episodes_long"] = episodes_long.float()
        stats["train/accuracy_long"] = successes_long / episodes_long.clamp(min=1)
    stats["train/explained_variance"] = explained_variance(rollout.value, returns, ranks)
    names = list(state_norms)
    for name, value in zip(names, ranks.mean([state_norms[name].float() for name in names])):
        stats[f"state/{name}"] = value
    return stats


def set_active_bits(collector: RolloutCollector, active_bits: int) -> None:
    """The memory task's episodes that ``collector`` starts from now on draw ``active_bits`` bits.

    Written in place into the env state the collector carries (``env.active_bits``), which the
    env's reset reads: the next block's plan, or the CUDA graph of a step loop and its compiled env
    step, see the new value without being captured or compiled again, and checkpoints save it with
    the carry."""
    collector.carry["env.active_bits"].fill_(active_bits)


class BitsCurriculum:
    """The curriculum over the memory task's number of bits (``cfg.bits_curriculum_*``).

    Starts at ``start`` active bits; :meth:`observe` takes each update's training accuracy and
    adds ``step`` bits (up to ``num_bits``) once ``patience`` updates in a row reached
    ``threshold``. Its state (active bits, the current run of updates at the threshold) goes into
    checkpoints, so that a resumed run raises the bits at the same update.
    """

    def __init__(self, num_bits: int, start: int, step: int, threshold: float, patience: int) -> None:
        self.num_bits, self.step, self.threshold, self.patience = num_bits, step, threshold, patience
        self.active_bits = start
        # updates in a row at the threshold, at the current active bits
        self.streak = 0

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> BitsCurriculum | None:
        """The curriculum ``cfg`` asks for, or None (every bit from the start)."""
        if cfg.bits_curriculum_start is None:
            return None
        return cls(
            cfg.num_bits,
            cfg.bits_curriculum_start,
            cfg.bits_curriculum_step,
            cfg.bits_curriculum_threshold,
            cfg.bits_curriculum_patience,
        )

    def observe(self, accuracy: float | None) -> bool:
        """One update's training accuracy (None: no episode ended); True when the bits go up."""
        if self.active_bits == self.num_bits:
            return False
        self.streak = self.streak + 1 if accuracy is not None and accuracy >= self.threshold else 0
        if self.streak < self.patience:
            return False
        self.active_bits = min(self.active_bits + self.step, self.num_bits)
        self.streak = 0
        return True

    def state_dict(self) -> dict:
        return {"active_bits": self.active_bits, "streak": self.streak}

    def load_state_dict(self, state: dict) -> None:
        self.active_bits, self.streak = int(state["active_bits"]), int(state["streak"])


def _all_bits_active(entry: dict, num_bits: int) -> bool:
    """Whether the update of this history ``entry`` trained on the whole task: False while a bits
    curriculum left some of the ``num_bits`` inactive (its accuracy is then an easier task's)."""
    return entry.get("active_bits", num_bits) == num_bits


def _on_target(history: list[dict], cfg: TrainConfig, tracks_long: bool) -> bool:
    """Whether the last ``cfg.target_window`` updates reached ``cfg.target_accuracy``: every one of
    them trained on every bit and ended episodes, their mean training accuracy reaches the target
    and, with delays from a range (``tracks_long``), so does the accuracy of the long episodes they
    ended, pooled over the window. The pooled long accuracy is part of the rule because the training
    accuracy is mostly the short delays' (``rollout_statistics``): a policy that drops the long
    delays reaches the target on it alone."""
    recent = history[-cfg.target_window :]
    if len(recent) < cfg.target_window:
        return False
    if any(h["accuracy"] is None or not _all_bits_active(h, cfg.num_bits) for h in recent):
        return False
    if sum(h["accuracy"] for h in recent) / len(recent) < cfg.target_accuracy:
        return False
    if not tracks_long:
        return True
    episodes = sum(h.get("episodes_long") or 0.0 for h in recent)
    successes = sum((h.get("accuracy_long") or 0.0) * (h.get("episodes_long") or 0.0) for h in recent)
    return episodes > 0 and successes / episodes >= cfg.target_accuracy


def _summary(history: list[dict], num_bits: int, threshold: float = 0.9) -> dict:
    episode_returns = [h["episode_return"] for h in history if h.get("episode_return") is not None]
    full = [h for h in history if _all_bits_active(h, num_bits)]
    accuracies = [h["accuracy"] for h in full if h["accuracy"] is not None]
    first = next((h["update"] for h in full if h["accuracy"] is not None and h["accuracy"] >= threshold), None)
    # the first two updates include CUDA graph capture and kernel compilation
    steady = [h["sps"] for h in history[2:]] or [h["sps"] for h in history]
    steady = sorted(steady)
    curriculum = {}
    if any("active_bits" in h for h in history):
        curriculum = {
            "active_bits_last": history[-1]["active_bits"],
            "first_update_all_bits": next((h["update"] for h in full), None),
        }
    return {
        **curriculum,
        "train_accuracy_last": accuracies[-1] if accuracies else None,
        "train_accuracy_best": max(accuracies) if accuracies else None,
        "first_update_train_accuracy_ge_0.9": first,
        "sps_median": steady[len(steady) // 2] if steady else None,
        # POPGym's MMER: the max over training of the mean episode return (per update)
        "train_return_last": episode_returns[-1] if episode_returns else None,
        "train_return_max": max(episode_returns) if episode_returns else None,
    }


def train(
    cfg: TrainConfig,
    run_dir: str | Path | None = None,
    *,
    resume: bool | Literal["auto"] = False,
    callback: Callable[[int, dict], None] | None = None,
    verbose: bool = True,
    ranks: Ranks | None = None,
) -> TrainResult:
    """Train a policy as ``cfg`` says; writes everything into ``run_dir``.

    Args:
        cfg: the configuration.
        run_dir: the run directory (default: a new one under ``cfg.run_root``).
        resume: continue the run saved in ``run_dir/checkpoint.pt``: the same parameters,
            optimizer, environments, recurrent state and random streams, so the run goes on as
            if it had never stopped. ``"auto"``: resume when ``run_dir`` holds a checkpoint, else
            start a new run there (what a job restarted by its scheduler or by torchrun's
            ``--max-restarts`` wants).
        callback: called after each update as ``callback(update, info)`` where ``info`` holds
            ``policy``, ``optimizer`` and the logged ``scalars`` (for tests and notebooks; on
            every rank).
        verbose: print the parameter counts, the progress bar and the final table (rank 0).
        ranks: this process's place in a run on several processes
            (:func:`~mamba_rl.training.distributed.init_from_torchrun`); None: one process.

    Returns:
        A :class:`TrainResult`. ``metrics.json`` in the run directory holds the same metrics.

    Raises:
        TrainingDiverged: a loss or the gradient norm became NaN or inf (the last good
            checkpoint stays in the run directory).
        RunDirLocked: another live process owns ``run_dir`` (:class:`~mamba_rl.training.runs.RunLock`).
        ConfigError: ``cfg`` does not fit this machine, or (on resume) differs from the run's
            saved config outside :data:`RESUME_MUTABLE_KEYS`, or the run was saved on another
            number of processes. Nothing in ``run_dir`` changes until the checkpoint has loaded
            into the policy built from a compatible config.
        CheckpointError: the checkpoint is missing, damaged or holds non-finite parameters.
    """
    ranks = ranks or Ranks()
    if resume not in (True, False, "auto"):
        raise ValueError(f"resume must be True, False or 'auto', got {resume!r}")
    check_machine(cfg)
    # rank 0's directory: the others never write there (on another host it may not exist)
    run_dir = Path(ranks.broadcast(str(run_dir if run_dir is not None else new_run_dir(cfg))))
    lock = RunLock(run_dir) if ranks.main else nullcontext()

    def take_run_dir() -> bool:
        resuming = (run_dir / CHECKPOINT_NAME).is_file() if resume == "auto" else resume
        if resuming:
            find_checkpoint(run_dir)
        lock.__enter__()
        return resuming

    resume = ranks.on_main(take_run_dir)
    try:
        return _train(cfg, run_dir, resume, callback, verbose and ranks.main, ranks)
    finally:
        lock.__exit__(None, None, None)


def _train(cfg: TrainConfig, run_dir: Path, resume: bool, callback, verbose: bool, ranks: Ranks) -> TrainResult:
    # --- setup -------------------------------------------------------------------------------
    device = rank_device(resolve_device(cfg.device), ranks)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    checkpoint_path = run_dir / CHECKPOINT_NAME

    def read_checkpoint() -> dict | None:
        if resume:
            # several ranks: the tensors travel to each rank's device through the CPU
            return _load_for_resume(checkpoint_path, cfg, ranks, device if ranks.world_size == 1 else "cpu")
        if checkpoint_path.exists():
            raise FileExistsError(
                f"{run_dir} already holds a run (checkpoint.pt); pass --resume {run_dir} to continue "
                "it, or choose another run directory"
            )
        return None

    checkpoint = ranks.on_main(read_checkpoint)

    torch.manual_seed(cfg.seed)
    params = memory_params(cfg) if cfg.is_memory_task else None
    curriculum = BitsCurriculum.from_config(cfg)
    env_bits = curriculum.active_bits if curriculum else None
    env = make_train_env(cfg, cfg.num_envs, device, env_bits)
    policy = build_policy(cfg, device, env)
    if cfg.init_policy is not None and not resume:
        _load_init_policy(policy, cfg.init_policy, device)
    counts = count_parameters(policy)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
    # each rank its own environments and random streams; rank 0's are those of a run on one process
    seed = rank_seed(cfg.seed, ranks.rank)
    if cfg.delay_closed_form:
        if ranks.world_size > 1:
            raise ConfigError(
                f"delay_closed_form runs on one process, got a world size of {ranks.world_size} (torchrun); "
                "run plain python train.py"
            )
        env.close()
        collector = ClosedFormCollector(policy, memory_params(cfg, active_bits=env_bits), cfg.num_envs, seed, device)
    elif getattr(env, "action_independent_observations", False):
        # the memory task: every block of steps in one pass of the policy's sequence path
        collector = SequenceRolloutCollector(
            policy, env, cfg.num_envs, cfg.resolved_chunk_len, cfg.chunks_per_rollout, seed, device
        )
    else:
        collector = RolloutCollector(
            policy,
            env,
            cfg.num_envs,
            cfg.resolved_chunk_len,
            cfg.chunks_per_rollout,
            seed,
            device,
            cuda_graph=cfg.cuda_graph,
            compile_env=cfg.compile_env and device.type == "cuda",
        )
    generator = torch.Generator().manual_seed(seed)
    # delays from a range: also the accuracy of the episodes in the upper half of it (rollout_statistics)
    low, high = cfg.horizon_range
    long_episode_length = high // 2 if cfg.is_memory_task and low < high else None
    start_update, global_step, train_time_s, history = 0, 0, 0.0, []
    if resume:
        checkpoint, own = _distribute_checkpoint(checkpoint, ranks)
        policy.load_state_dict(checkpoint["policy"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        collector.load_state_dict(own["collector"])
        generator.set_state(own["minibatch_generator"].cpu())
        start_update, global_step = checkpoint["update"], checkpoint["global_step"]
        train_time_s, history = checkpoint["train_time_s"], list(checkpoint["history"])
        if curriculum is not None:
            curriculum.load_state_dict(checkpoint["bits_curriculum"])
    # the parameters start equal on every rank (DDP broadcasts rank 0's) and stay equal: every
    # rank takes the same step with the same averaged gradient
    # one process under torchrun replays without DDP: with nothing to all-reduce, its buckets and
    # hooks cost 3.5% of the end-to-end speed on an H100 (docs/DISTRIBUTED.md)
    ddp = None
    if ranks.world_size > 1:
        ddp = DistributedDataParallel(ReplayModule(policy), device_ids=None)
    # the checkpoint has loaded: only now may the run directory change
    if ranks.main:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    # env steps per update, over every rank
    steps_per_update = cfg.steps_per_update * ranks.world_size
    if verbose:
        trunk = "shared trunk" if cfg.shared_trunk else "separate trunks"
        envs = f"{cfg.num_envs} envs" if ranks.world_size == 1 else f"{ranks.world_size} x {cfg.num_envs} envs"
        print(
            f"{cfg.env}, {envs}; {cfg.controller} policy ({trunk}) on {device}: "
            f"{counts['total']:,} parameters (trunks {counts['actor_trunk'] + counts['critic_trunk']:,}, "
            f"actor head {counts['actor_head']:,}, value head {counts['value_head']:,}); run dir {run_dir}"
        )
        if resume:
            print(f"resuming at update {start_update} (global step {global_step:,})")

    if ranks.main:
        logger = RunLogger(run_dir, cfg.tensorboard, resume_step=global_step if resume else None)
    else:
        logger = _NoLogger()
    if not resume:
        logger.hparams(config_to_dict(cfg))
        logger.text("parameters", json.dumps(counts))

    def save(update: int) -> None:
        rank_states = ranks.gather(_rank_state(collector, generator, ranks))
        ranks.on_main(
            lambda: save_checkpoint(
                _checkpoint_payload(
                    cfg, update, global_step, train_time_s, policy, optimizer, rank_states, history, counts, curriculum
                ),
                checkpoint_path,
            )
        )

    progress = None
    if cfg.progress_bar and verbose:
        from tqdm.auto import tqdm

        progress = tqdm(total=cfg.num_updates, initial=start_update, unit="update", dynamic_ncols=True)

    # --- the loop ----------------------------------------------------------------------------
    status = "completed"
    update = start_update
    session_start = time.perf_counter()
    last_saved = start_update
    try:
        with GracefulStop() as interrupt:
            while update < cfg.num_updates:
                lr = _learning_rate(cfg, update)
                for group in optimizer.param_groups:
                    group["lr"] = lr

                # collect: K chunks of T steps in each of N envs
                start = time.perf_counter()
                rollout = collector.collect()
                _sync(device)
                rollout_s = time.perf_counter() - start

                # advantages, then the PPO epochs
                start = time.perf_counter()
                advantages, returns = rollout_advantages(rollout, cfg)
                stats = ppo_update(
                    policy, optimizer, rollout, advantages, returns, cfg, generator, ranks=ranks, ddp=ddp
                )
                # the loss statistics and the rollout's over every rank: the same numbers on each
                stats = dict(zip(stats, ranks.mean(list(stats.values()))))
                stats.update(
                    rollout_statistics(
                        rollout, returns, policy.state_norms(collector.policy_state), ranks, long_episode_length
                    )
                )
                # one host sync per update: read every statistic at once
                names = list(stats)
                values = dict(zip(names, torch.stack([stats[n].float() for n in names]).tolist()))
                update_s = time.perf_counter() - start

                # env steps of the update; in closed form those of the episodes played, delays included
                update_steps = int(rollout.episode_length.sum()) if cfg.delay_closed_form else steps_per_update
                update += 1
                global_step += update_steps
                train_time_s += rollout_s + update_s
                losses = {k: v for k, v in values.items() if k.startswith("losses/")}
                if not all(math.isfinite(v) for v in losses.values()):
                    raise TrainingDiverged(_diverged_message(losses, update, checkpoint_path, last_saved))
                if values["train/episodes"] == 0:
                    for name in (
                        "accuracy",
                        "episode_return",
                        "episode_length",
                        "episode_return_ci95",
                        "episode_length_ci95",
                    ):
                        values[f"train/{name}"] = None
                if values.get("train/episodes_long") == 0:
                    values["train/accuracy_long"] = None
                if not cfg.is_memory_task:
                    values["train/accuracy"] = None
                sps = update_steps / (rollout_s + update_s)
                history.append(
                    {
                        "update": update,
                        "global_step": global_step,
                        "accuracy": values["train/accuracy"],
                        "accuracy_long": values.get("train/accuracy_long"),
                        "episodes_long": values.get("train/episodes_long"),
                        "episode_return": values["train/episode_return"],
                        "sps": sps,
                        "time_s": train_time_s,
                        "device_name": _device_name(device),
                    }
                )
                if curriculum is not None:
                    # the bits this update's episodes drew (most of them: episodes under way when
                    # the bits change keep their targets)
                    values["train/active_bits"] = history[-1]["active_bits"] = curriculum.active_bits
                    if curriculum.observe(values["train/accuracy"]):
                        set_active_bits(collector, curriculum.active_bits)
                scalars = {
                    **values,
                    "train/learning_rate": lr,
                    "time/sps": sps,
                    "time/rollout_s": rollout_s,
                    "time/update_s": update_s,
                    "time/rollout_sps": update_steps / rollout_s,
                }
                if device.type == "cuda":
                    scalars["gpu/memory_allocated_gb"] = torch.cuda.memory_allocated(device) / 2**30
                    scalars["gpu/max_memory_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                if update % cfg.log_interval == 0 or update == cfg.num_updates:
                    logger.scalars(scalars, global_step, update)
                if progress is not None:
                    acc, ret = values["train/accuracy"], values["train/episode_return"]
                    shown = (
                        f"acc={acc if acc is None else round(acc, 3)}"
                        if cfg.is_memory_task
                        else f"return={ret if ret is None else round(ret, 3)}"
                    )
                    progress.set_postfix_str(f"{shown} sps={sps:,.0f}")
                    progress.update(1)
                if (
                    cfg.state_figure_interval
                    and update % cfg.state_figure_interval == 0
                    and cfg.controller == "mamba"
                    and cfg.is_memory_task
                    and logger.writer is not None
                ):
                    from mamba_rl.lab import state_figure

                    stride = max(1, cfg.horizon_range[1] // 250)
                    figure = state_figure(policy, params, episodes=16, device=device, stride=stride)
                    logger.writer.add_figure("states/summary", figure, global_step)
                if update % cfg.checkpoint_interval == 0:
                    save(update)
                    last_saved = update
                if callback is not None:
                    callback(update, {"policy": policy, "optimizer": optimizer, "scalars": scalars})

                # stopping rules, decided together: a rank that left the loop alone would leave the
                # others waiting in a collective (a signal or the clock may reach one rank first)
                interrupted, out_of_time, on_target = ranks.any(
                    [
                        interrupt.requested,
                        cfg.max_wall_time_s is not None
                        and update < cfg.num_updates
                        and time.perf_counter() - session_start >= cfg.max_wall_time_s,
                        cfg.target_accuracy is not None
                        and _on_target(history, cfg, tracks_long=long_episode_length is not None),
                    ]
                )
                if interrupted:
                    status = "interrupted"
                    break
                if out_of_time:
                    status = "time_limit"
                    break
                if on_target:
                    status = "target_reached"
                    break
    except TrainingDiverged as err:
        collector.close()
        _write_metrics(
            run_dir,
            cfg,
            "diverged",
            update,
            global_step,
            train_time_s,
            history,
            counts,
            {},
            device,
            ranks,
            error=str(err),
        )
        raise
    finally:
        if progress is not None:
            progress.close()
        logger.flush()

    # --- final checkpoint and evaluation (a signal here still leaves metrics.json) -----------
    evaluation = {}
    try:
        with SignalsRaise():
            save(update)
            collector.close()
            if status != "interrupted" and cfg.eval_episodes > 0:
                policy.eval()
                evaluation = _final_evaluation(cfg, policy, logger, global_step, device, verbose, ranks)
    except KeyboardInterrupt:
        status, evaluation = "interrupted", {}
        print(
            "\ninterrupted during the final checkpoint or evaluation: metrics.json has no evaluation",
            file=sys.stderr,
            flush=True,
        )
    logger.close()
    metrics = _write_metrics(
        run_dir, cfg, status, update, global_step, train_time_s, history, counts, evaluation, device, ranks
    )
    if verbose:
        print(
            _final_message(cfg, status, update, global_step, train_time_s, run_dir, ranks),
            file=sys.stderr if status in ("time_limit", "interrupted") else sys.stdout,
        )
    return TrainResult(run_dir, status, metrics)


def _load_init_policy(policy, path: str, device) -> None:
    """``policy``'s parameters from the checkpoint at ``path`` (``init_policy``)."""
    parameters = load_checkpoint(path, map_location=device)["policy"]
    try:
        policy.load_state_dict(parameters)
    except RuntimeError as err:
        raise ConfigError(
            f"init_policy={path!r} does not fit the policy this config builds (the model keys must match "
            f"the checkpoint's config): {err}"
        ) from err


def _diverged_message(losses: dict, update: int, checkpoint_path: Path, last_saved: int) -> str:
    bad = ", ".join(f"{k}={v}" for k, v in losses.items() if not math.isfinite(v))
    if checkpoint_path.exists():
        where = (
            f"the last good checkpoint is {checkpoint_path} (update {last_saved}); resuming it would repeat "
            "the same updates, so"
        )
    else:
        where = "no checkpoint had been saved yet, so"
    return (
        f"non-finite loss at update {update} ({bad}); training stopped and {where} start a new run with a "
        "lower learning_rate or max_grad_norm (--set learning_rate=...)"
    )


def _final_message(
    cfg: TrainConfig, status: str, update: int, global_step: int, train_time_s: float, run_dir: Path, ranks: Ranks
) -> str:
    done = f"after {update} of {cfg.num_updates} updates ({global_step:,} steps, {train_time_s:.0f} s of training)"
    metrics = f"metrics in {run_dir / 'metrics.json'}"
    # a resume needs as many processes
    command = "python train.py"
    if ranks.launched:
        per_host = int(os.environ.get("LOCAL_WORLD_SIZE", ranks.world_size))
        hosts = "" if per_host == ranks.world_size else f" (on each of {ranks.world_size // per_host} hosts)"
        command = f"torchrun --nproc_per_node {per_host}{hosts} train.py"
    if status == "time_limit":
        return (
            f"NOT FINISHED: stopped by max_wall_time_s={cfg.max_wall_time_s:g} {done}; {metrics}. Continue "
            f"with: {command} --resume {run_dir} --set max_wall_time_s=null"
        )
    if status == "interrupted":
        return f"interrupted {done}; continue with: {command} --resume {run_dir}; {metrics}"
    return f"{status} {done}; {metrics}"


def _eval_returns(cfg, evaluation: dict) -> dict:
    """Mean episode return and its 95% interval of the final evaluation, greedy and sampled (on the
    memory task at the trained horizon)."""
    entry = evaluation.get(str(cfg.horizon_range[1]), {}) if cfg.is_memory_task else evaluation
    out = {}
    for mode in ("greedy", "sampled"):
        result = entry.get(mode, {})
        out[f"eval_return_{mode}"] = result.get("mean_return")
        out[f"eval_return_{mode}_ci95"] = result.get("return_ci95")
    return out


def _final_evaluation(
    cfg: TrainConfig, policy, logger: RunLogger, global_step: int, device: torch.device, verbose: bool, ranks: Ranks
) -> dict:
    """Mean episode return on any env; accuracy per horizon on the memory task. Logged and printed.
    With several ranks the episodes are split over them and the results gathered: the numbers of
    one process."""
    if not cfg.is_memory_task:
        evaluation = evaluate_env(
            policy,
            cfg,
            cfg.eval_episodes,
            num_envs=min(cfg.eval_num_envs, cfg.num_envs),
            device=device,
            ranks=ranks,
        )
        for mode in ("greedy", "sampled"):
            logger.tensorboard_scalars(
                {
                    f"eval/episode_return_{mode}": evaluation[mode]["mean_return"],
                    f"eval/episode_length_{mode}": evaluation[mode]["mean_length"],
                },
                global_step,
            )
        if verbose:
            print(format_return_table(evaluation, cfg.env))
        return evaluation
    horizons = cfg.final_eval_horizons
    evaluation = evaluate_horizons(
        policy,
        cfg,
        horizons,
        cfg.eval_episodes,
        num_envs=cfg.eval_num_envs,
        device=device,
        ranks=ranks,
    )
    for horizon, entry in evaluation.items():
        for mode in ("greedy", "sampled"):
            logger.tensorboard_scalars({f"eval/accuracy_{mode}_h{horizon}": entry[mode]["accuracy"]}, global_step)
    if verbose:
        print(format_table(evaluation, cfg.horizon_range[1]))
    return evaluation


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _write_metrics(
    run_dir, cfg, status, update, global_step, train_time_s, history, counts, evaluation, device, ranks, error=None
) -> dict:
    """The run's metrics; rank 0 writes them to ``metrics.json``."""
    trained = str(cfg.horizon_range[1])
    metrics = {
        "status": status,
        "controller": cfg.controller,
        "env": cfg.env,
        "horizon": cfg.horizon,
        "num_bits": cfg.num_bits,
        "seed": cfg.seed,
        "world_size": ranks.world_size,
        "updates": update,
        "global_step": global_step,
        "train_time_s": train_time_s,
        # this process's device; a run resumed elsewhere trained on train_device_names
        "device": str(device),
        "device_name": _device_name(device),
        "train_device_names": list(dict.fromkeys(h["device_name"] for h in history if "device_name" in h)),
        "eval_device_name": _device_name(device) if evaluation else None,
        "torch_version": str(torch.__version__),
        "param_counts": counts,
        **_summary(history, cfg.num_bits),
        "eval_accuracy_greedy": evaluation.get(trained, {}).get("greedy", {}).get("accuracy"),
        "eval_accuracy_sampled": evaluation.get(trained, {}).get("sampled", {}).get("accuracy"),
        **_eval_returns(cfg, evaluation),
        "evaluation": evaluation,
        "config": config_to_dict(cfg),
    }
    if error is not None:
        metrics["error"] = error
    if ranks.main:
        (Path(run_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
