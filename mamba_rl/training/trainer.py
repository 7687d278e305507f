"""PPO with GAE for recurrent (Mamba or GRU) policies on any env (the delayed memory task by default).

Reads top to bottom like CleanRL's ``ppo_atari_lstm.py``: set up, then per update: collect a
rollout (chunks of ``T`` steps across ``N`` envs, the recurrent state carried across chunks and
updates, only each chunk's start state stored), compute GAE, run the PPO epochs (minibatches of
whole environments, each chunk replayed from its stored state), log, checkpoint.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
import yaml

from mamba_rl.config import TrainConfig, check_machine, config_to_dict
from mamba_rl.io import CHECKPOINT_NAME, find_checkpoint, load_checkpoint, save_checkpoint
from mamba_rl.logging_utils import RunLogger
from mamba_rl.policies import build_policy, count_parameters, make_train_env, memory_params
from mamba_rl.training.evaluate import (
    evaluate_env,
    evaluate_horizons,
    format_return_table,
    format_table,
    resolve_device,
)
from mamba_rl.training.ppo import compute_gae, explained_variance, ppo_loss, replay
from mamba_rl.training.rollout import RolloutCollector
from mamba_rl.training.runs import RESUME_MUTABLE_KEYS, GracefulStop, RunLock, SignalsRaise, check_resume_config

__all__ = [
    "train",
    "TrainResult",
    "TrainingDiverged",
    "resolve_device",
    "new_run_dir",
    "run_name",
    "rollout_advantages",
    "RESUME_MUTABLE_KEYS",
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


def ppo_update(policy, optimizer, rollout, advantages, returns, cfg: TrainConfig, generator: torch.Generator) -> dict:
    """``update_epochs`` passes over the rollout in ``num_minibatches`` minibatches of whole environments.

    Returns the mean of each loss statistic over the minibatches run (0-d tensors, not synced).
    """
    num_envs = rollout.obs.shape[0]
    device = rollout.obs.device
    weight = rollout.decision.float() if cfg.policy_mask_key == "decision" else None
    totals: dict[str, torch.Tensor] = {}
    count = 0
    for _ in range(cfg.update_epochs):
        epoch_kl = []
        for env_idx in torch.randperm(num_envs, generator=generator).tensor_split(cfg.num_minibatches):
            env_idx = env_idx.to(device)
            logits, value = replay(policy, rollout, env_idx, cfg.backprop)
            out = ppo_loss(
                logits,
                value,
                rollout.action[env_idx],
                rollout.log_prob[env_idx],
                rollout.value[env_idx],
                advantages[env_idx],
                returns[env_idx],
                None if weight is None else weight[env_idx],
                clip_coef=cfg.clip_coef,
                ent_coef=cfg.ent_coef,
                vf_coef=cfg.vf_coef,
                norm_adv=cfg.norm_adv,
                clip_vloss=cfg.clip_vloss,
                action_dist=policy.action_dist,
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
        if cfg.target_kl is not None and float(torch.stack(epoch_kl).mean()) > cfg.target_kl:
            break
    return {name: total / count for name, total in totals.items()}


def _checkpoint_payload(
    cfg, update, global_step, train_time_s, policy, optimizer, collector, generator, history, counts
) -> dict:
    return {
        "config": config_to_dict(cfg),
        "update": update,
        "global_step": global_step,
        "train_time_s": train_time_s,
        "policy": policy.state_dict(),
        "optimizer": optimizer.state_dict(),
        "collector": collector.state_dict(),
        "minibatch_generator": generator.get_state(),
        "history": history,
        "param_counts": counts,
        "torch_version": str(torch.__version__),
    }


def _summary(history: list[dict], threshold: float = 0.9) -> dict:
    episode_returns = [h["episode_return"] for h in history if h.get("episode_return") is not None]
    accuracies = [h["accuracy"] for h in history if h["accuracy"] is not None]
    first = next((h["update"] for h in history if h["accuracy"] is not None and h["accuracy"] >= threshold), None)
    # the first two updates include CUDA graph capture and kernel compilation
    steady = [h["sps"] for h in history[2:]] or [h["sps"] for h in history]
    steady = sorted(steady)
    return {
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
    resume: bool = False,
    callback: Callable[[int, dict], None] | None = None,
    verbose: bool = True,
) -> TrainResult:
    """Train a policy as ``cfg`` says; writes everything into ``run_dir``.

    Args:
        cfg: the configuration.
        run_dir: the run directory (default: a new one under ``cfg.run_root``).
        resume: continue the run saved in ``run_dir/checkpoint.pt``: the same parameters,
            optimizer, environments, recurrent state and random streams, so the run goes on as
            if it had never stopped.
        callback: called after each update as ``callback(update, info)`` where ``info`` holds
            ``policy``, ``optimizer`` and the logged ``scalars`` (for tests and notebooks).
        verbose: print the parameter counts, the progress bar and the final table.

    Returns:
        A :class:`TrainResult`. ``metrics.json`` in the run directory holds the same metrics.

    Raises:
        TrainingDiverged: a loss or the gradient norm became NaN or inf (the last good
            checkpoint stays in the run directory).
        RunDirLocked: another live process owns ``run_dir`` (:class:`~mamba_rl.training.runs.RunLock`).
        ConfigError: ``cfg`` does not fit this machine, or (on resume) differs from the run's
            saved config outside :data:`RESUME_MUTABLE_KEYS`. Nothing in ``run_dir`` changes
            until the checkpoint has loaded into the policy built from a compatible config.
        CheckpointError: the checkpoint is missing, damaged or holds non-finite parameters.
    """
    run_dir = Path(run_dir) if run_dir is not None else new_run_dir(cfg)
    check_machine(cfg)
    if resume:
        find_checkpoint(run_dir)
    with RunLock(run_dir):
        return _train(cfg, run_dir, resume, callback, verbose)


def _train(cfg: TrainConfig, run_dir: Path, resume: bool, callback, verbose: bool) -> TrainResult:
    # --- setup -------------------------------------------------------------------------------
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    checkpoint_path = run_dir / CHECKPOINT_NAME
    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(checkpoint_path, map_location=device)
        check_resume_config(checkpoint["config"], cfg, str(checkpoint_path))
    elif checkpoint_path.exists():
        raise FileExistsError(
            f"{run_dir} already holds a run (checkpoint.pt); pass --resume {run_dir} to continue "
            "it, or choose another run directory"
        )

    torch.manual_seed(cfg.seed)
    params = memory_params(cfg) if cfg.is_memory_task else None
    env = make_train_env(cfg, cfg.num_envs, device)
    policy = build_policy(cfg, device, env)
    counts = count_parameters(policy)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
    collector = RolloutCollector(
        policy,
        env,
        cfg.num_envs,
        cfg.resolved_chunk_len,
        cfg.chunks_per_rollout,
        cfg.seed,
        device,
        cuda_graph=cfg.cuda_graph,
        compile_env=cfg.compile_env and device.type == "cuda",
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    start_update, global_step, train_time_s, history = 0, 0, 0.0, []
    if checkpoint is not None:
        policy.load_state_dict(checkpoint["policy"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        collector.load_state_dict(checkpoint["collector"])
        generator.set_state(checkpoint["minibatch_generator"].cpu())
        start_update, global_step = checkpoint["update"], checkpoint["global_step"]
        train_time_s, history = checkpoint["train_time_s"], list(checkpoint["history"])
    # the checkpoint has loaded: only now may the run directory change
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    if verbose:
        trunk = "shared trunk" if cfg.shared_trunk else "separate trunks"
        print(
            f"{cfg.env}, {cfg.num_envs} envs; {cfg.controller} policy ({trunk}) on {device}: "
            f"{counts['total']:,} parameters (trunks {counts['actor_trunk'] + counts['critic_trunk']:,}, "
            f"actor head {counts['actor_head']:,}, value head {counts['value_head']:,}); run dir {run_dir}"
        )
        if resume:
            print(f"resuming at update {start_update} (global step {global_step:,})")

    logger = RunLogger(run_dir, cfg.tensorboard, resume_step=global_step if resume else None)
    if not resume:
        logger.hparams(config_to_dict(cfg))
        logger.text("parameters", json.dumps(counts))

    def save(update: int) -> None:
        save_checkpoint(
            _checkpoint_payload(
                cfg, update, global_step, train_time_s, policy, optimizer, collector, generator, history, counts
            ),
            checkpoint_path,
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
                stats = ppo_update(policy, optimizer, rollout, advantages, returns, cfg, generator)
                with torch.no_grad():
                    episodes = rollout.done.sum()
                    stats["train/episodes"] = episodes.float()
                    stats["train/accuracy"] = rollout.success.sum() / episodes.clamp(min=1)
                    stats["train/episode_return"] = rollout.episode_return.sum() / episodes.clamp(min=1)
                    stats["train/episode_length"] = rollout.episode_length.sum() / episodes.clamp(min=1)
                    # 95% interval of the mean over the episodes that ended in this rollout
                    ended = rollout.done.float()
                    for name, per_step in (("return", rollout.episode_return), ("length", rollout.episode_length)):
                        mean = stats[f"train/episode_{name}"]
                        var = (ended * (per_step.float() - mean) ** 2).sum() / (episodes - 1).clamp(min=1)
                        stats[f"train/episode_{name}_ci95"] = 1.96 * (var / episodes.clamp(min=1)).sqrt()
                    stats["train/explained_variance"] = explained_variance(rollout.value, returns)
                    for name, value in policy.state_norms(collector.policy_state).items():
                        stats[f"state/{name}"] = value.float()
                # one host sync per update: read every statistic at once
                names = list(stats)
                values = dict(zip(names, torch.stack([stats[n].float() for n in names]).tolist()))
                update_s = time.perf_counter() - start

                update += 1
                global_step += cfg.steps_per_update
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
                if not cfg.is_memory_task:
                    values["train/accuracy"] = None
                sps = cfg.steps_per_update / (rollout_s + update_s)
                history.append(
                    {
                        "update": update,
                        "global_step": global_step,
                        "accuracy": values["train/accuracy"],
                        "episode_return": values["train/episode_return"],
                        "sps": sps,
                        "time_s": train_time_s,
                    }
                )
                scalars = {
                    **values,
                    "train/learning_rate": lr,
                    "time/sps": sps,
                    "time/rollout_s": rollout_s,
                    "time/update_s": update_s,
                    "time/rollout_sps": cfg.steps_per_update / rollout_s,
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

                # stopping rules
                if interrupt.requested:
                    status = "interrupted"
                    break
                if (
                    cfg.max_wall_time_s is not None
                    and update < cfg.num_updates
                    and time.perf_counter() - session_start >= cfg.max_wall_time_s
                ):
                    status = "time_limit"
                    break
                recent = [h["accuracy"] for h in history[-cfg.target_window :]]
                if (
                    cfg.target_accuracy is not None
                    and len(recent) == cfg.target_window
                    and None not in recent
                    and sum(recent) / len(recent) >= cfg.target_accuracy
                ):
                    status = "target_reached"
                    break
    except TrainingDiverged as err:
        collector.close()
        _write_metrics(
            run_dir, cfg, "diverged", update, global_step, train_time_s, history, counts, {}, device, error=str(err)
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
                evaluation = _final_evaluation(cfg, policy, logger, global_step, device, verbose)
    except KeyboardInterrupt:
        status, evaluation = "interrupted", {}
        print(
            "\ninterrupted during the final checkpoint or evaluation: metrics.json has no evaluation",
            file=sys.stderr,
            flush=True,
        )
    logger.close()
    metrics = _write_metrics(
        run_dir, cfg, status, update, global_step, train_time_s, history, counts, evaluation, device
    )
    if verbose:
        print(
            _final_message(cfg, status, update, global_step, train_time_s, run_dir),
            file=sys.stderr if status in ("time_limit", "interrupted") else sys.stdout,
        )
    return TrainResult(run_dir, status, metrics)


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
    cfg: TrainConfig, status: str, update: int, global_step: int, train_time_s: float, run_dir: Path
) -> str:
    done = f"after {update} of {cfg.num_updates} updates ({global_step:,} steps, {train_time_s:.0f} s of training)"
    metrics = f"metrics in {run_dir / 'metrics.json'}"
    if status == "time_limit":
        return (
            f"NOT FINISHED: stopped by max_wall_time_s={cfg.max_wall_time_s:g} {done}; {metrics}. Continue "
            f"with: python train.py --resume {run_dir} --set max_wall_time_s=null"
        )
    if status == "interrupted":
        return f"interrupted {done}; continue with: python train.py --resume {run_dir}; {metrics}"
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
    cfg: TrainConfig, policy, logger: RunLogger, global_step: int, device: torch.device, verbose: bool
) -> dict:
    """Mean episode return on any env; accuracy per horizon on the memory task. Logged and printed."""
    if not cfg.is_memory_task:
        evaluation = evaluate_env(
            policy, cfg, cfg.eval_episodes, num_envs=min(cfg.eval_num_envs, cfg.num_envs), device=device
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
        policy, cfg, horizons, cfg.eval_episodes, num_envs=cfg.eval_num_envs, device=device, cuda_graph=cfg.cuda_graph
    )
    for horizon, entry in evaluation.items():
        for mode in ("greedy", "sampled"):
            logger.tensorboard_scalars({f"eval/accuracy_{mode}_h{horizon}": entry[mode]["accuracy"]}, global_step)
    if verbose:
        print(format_table(evaluation, cfg.horizon_range[1]))
    return evaluation


def _write_metrics(
    run_dir, cfg, status, update, global_step, train_time_s, history, counts, evaluation, device, error=None
) -> dict:
    trained = str(cfg.horizon_range[1])
    metrics = {
        "status": status,
        "controller": cfg.controller,
        "env": cfg.env,
        "horizon": cfg.horizon,
        "num_bits": cfg.num_bits,
        "seed": cfg.seed,
        "updates": update,
        "global_step": global_step,
        "train_time_s": train_time_s,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_version": str(torch.__version__),
        "param_counts": counts,
        **_summary(history),
        "eval_accuracy_greedy": evaluation.get(trained, {}).get("greedy", {}).get("accuracy"),
        "eval_accuracy_sampled": evaluation.get(trained, {}).get("sampled", {}).get("accuracy"),
        **_eval_returns(cfg, evaluation),
        "evaluation": evaluation,
        "config": config_to_dict(cfg),
    }
    if error is not None:
        metrics["error"] = error
    (Path(run_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
