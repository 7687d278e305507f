"""Evaluate a trained policy: episode return and length with 95% intervals on any env; on the
memory task also accuracy per horizon. Greedy and sampled.

    mamba-rl-eval --checkpoint runs/<run>/checkpoint.pt [--episodes 1000] [--device cpu] [--json eval.json]
                  [--horizons 50 100 200]   # memory task: the horizons to evaluate
    python -m mamba_rl.evaluate ...  (the same; mamba_rl.evaluate is the command, this module the code)

Accuracy is the fraction of episodes whose query-step answer was right. Evaluation episodes
come from their own seed (``--seed``, default 12345), so they are not the training episodes.
On the memory task the episodes run by blocks of steps through the trunk's sequence path
(:func:`play_memory_episodes`), with memory bounded by one block at any horizon.
On Gymnasium envs episode ``i`` is reset with a seed made from ``(seed, i)`` and its sampled
actions use noise hashed from ``(seed, i, step)``: the same episodes whatever ``--num-envs``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import torch

from mamba_rl.config import TrainConfig
from mamba_rl.cuda_graph import capture_cuda_graph
from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.envs.adapters import BatchedEnv, DelayedMemoryTask, EnvSpecError, episode_seed
from mamba_rl.envs.delayed_memory import DelayedMemoryState, delayed_memory_observe, mix32
from mamba_rl.io import CheckpointError
from mamba_rl.policies import ActorCritic, build_policy, load_policy, make_train_env
from mamba_rl.training.distributed import Ranks

__all__ = [
    "evaluate_policy",
    "evaluate_modes",
    "evaluate_horizons",
    "play_memory_episodes",
    "memory_blocks",
    "MemoryEpisodes",
    "evaluate_env",
    "run_episodes",
    "build_policy",
    "load_policy",
    "mean_ci95",
    "resolve_device",
    "main",
    "EVAL_SEED",
]

EVAL_SEED = 12345


def mean_ci95(values) -> tuple[float, float]:
    """``(mean, half-width of its 95% normal interval)`` of a 1-d sequence; nan for an empty one,
    0 half-width for one value."""
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    if x.numel() == 0:
        return float("nan"), float("nan")
    half = 1.96 * float(x.std()) / x.numel() ** 0.5 if x.numel() > 1 else 0.0
    return float(x.mean()), half


def hashed_noise(
    key: int, episode: torch.Tensor, t: torch.Tensor, shape: tuple[int, ...], normal: bool
) -> torch.Tensor:
    """Noise ``[n, *shape]`` that depends only on ``(key, episode[i], t[i])``: uniform in [0, 1), or
    standard normal (Box-Muller). ``episode`` and ``t`` are int64 ``[n]`` in ``0 .. 2**32 - 1``."""
    count = 1
    for d in shape:
        count *= d
    base = mix32(mix32(episode ^ key) ^ t)[:, None]
    component = torch.arange(2 * count if normal else count, device=episode.device)
    u = ((mix32(base ^ component).double() + 0.5) / 2**32).clamp(max=1 - 2**-24)
    if normal:
        u1, u2 = u[:, :count], u[:, count:]
        z = (-2 * u1.log()).sqrt() * torch.cos(2 * torch.pi * u2)
        return z.float().reshape(-1, *shape)
    return u.float().reshape(-1, *shape)


def policy_action(head, params: torch.Tensor, greedy: bool, key, episode: torch.Tensor, t) -> torch.Tensor:
    """``head``'s greedy action for ``params``, or its sample with the noise hashed from ``(key,
    episode, t)``: the same episode draws the same action whatever batch it is played in."""
    if greedy:
        return head.mode(params)
    noise = hashed_noise(key, episode, t, head.noise_shape, normal=head.action_dtype.is_floating_point)
    return head.sample(params, noise)[0]


@torch.no_grad()
def run_episodes(
    policy: ActorCritic,
    env: BatchedEnv,
    episodes: int,
    *,
    greedy: bool = True,
    seed: int = EVAL_SEED,
    progress: bool = False,
) -> dict:
    """Play ``episodes`` episodes of ``env`` (its ``num_envs`` copies in parallel) with ``policy``.

    Episode ``i`` is the ``i``-th to start (the first ``num_envs`` at the reset, then one per copy
    that finishes, in copy order). On envs with per-episode seeding (Gymnasium ids) its reset
    seed is :func:`~mamba_rl.envs.adapters.episode_seed` ``(seed, i)`` and its sampled actions use
    noise hashed from ``(seed, i, step)``, so its outcome does not depend on ``num_envs``.

    Returns ``{"episodes", "mean_return", "return_ci95", "mean_length", "length_ci95",
    "success_rate"}`` (``*_ci95``: half-width of the 95% interval of the mean).
    """
    return episode_summary(
        *play_episodes(policy, env, episodes, greedy=greedy, seed=seed, progress=progress, first_episode=0)
    )


def episode_summary(returns: list[float], lengths: list[int], successes: list[bool]) -> dict:
    """:func:`run_episodes`'s summary of per-episode returns, lengths and successes."""
    episodes = len(returns)
    mean_return, return_ci = mean_ci95(returns)
    mean_length, length_ci = mean_ci95(lengths)
    return {
        "episodes": episodes,
        "mean_return": mean_return,
        "return_ci95": return_ci,
        "mean_length": mean_length,
        "length_ci95": length_ci,
        "success_rate": sum(successes) / episodes,
    }


@torch.no_grad()
def play_episodes(
    policy: ActorCritic,
    env: BatchedEnv,
    episodes: int,
    *,
    greedy: bool = True,
    seed: int = EVAL_SEED,
    progress: bool = False,
    first_episode: int = 0,
) -> tuple[list[float], list[int], list[bool]]:
    """Episodes ``first_episode .. first_episode + episodes - 1`` as :func:`run_episodes` numbers
    them (the same reset seeds and sampling noise): ``(returns, lengths, successes)``, one entry
    per episode in episode order. A block of the episodes gives the entries of the whole run's
    that block, so that ranks can split an evaluation."""
    device = next(policy.parameters()).device
    head = policy.action_dist
    n = env.num_envs
    if hasattr(env, "episode_seeds"):
        # the env starts episodes in the order this loop numbers them: copies in index order
        seeded = first_episode

        def seeds(count: int) -> list[int]:
            nonlocal seeded
            first, seeded = seeded, seeded + count
            return [episode_seed(seed, first + k) for k in range(count)]

        env.episode_seeds = seeds
    state, obs, _ = env.reset(seed)
    started = first_episode + n
    slot_episode = first_episode + torch.arange(n, device=device)
    t = torch.zeros(n, dtype=torch.int64, device=device)
    ret = torch.zeros(n, dtype=torch.float64, device=device)
    success = torch.zeros(n, dtype=torch.bool, device=device)
    policy_state = policy.zero_state(n, device)
    reset = torch.ones(n, dtype=torch.bool, device=device)
    returns, lengths, successes = [float("nan")] * episodes, [0] * episodes, [False] * episodes
    key = mix32(int(seed) & 0xFFFFFFFF)
    finished = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=episodes, unit="episode", dynamic_ncols=True)
    while finished < episodes:
        params, _, _ = policy.step(obs.to(device), policy_state, reset, out_state=policy_state)
        action = policy_action(head, params, greedy, key, slot_episode, t)
        state, step = env.step(state, action)
        ret += step.reward.to(device)
        success |= step.success.to(device)
        t += 1
        done = (step.terminated | step.truncated).to(device)
        if bool(done.any()):
            index = done.nonzero().squeeze(-1)
            for episode, r, length, s in zip(
                slot_episode[index].tolist(), ret[index].tolist(), t[index].tolist(), success[index].tolist()
            ):
                # the episode's place in this block
                k = episode - first_episode
                if k < episodes:
                    returns[k], lengths[k], successes[k] = r, length, s
                    finished += 1
                    if bar is not None:
                        bar.update(1)
            slot_episode[index] = torch.arange(started, started + len(index), device=device)
            started += len(index)
            ret[index], t[index], success[index] = 0.0, 0, False
        obs, reset = step.obs, done
    if bar is not None:
        bar.close()
    return returns, lengths, successes


def evaluate_env(
    policy: ActorCritic,
    cfg: TrainConfig,
    episodes: int,
    *,
    seed: int = EVAL_SEED,
    num_envs: int = 16,
    device=None,
    modes=("greedy", "sampled"),
    progress: bool = False,
    ranks: Ranks | None = None,
) -> dict:
    """``{mode: run_episodes(...)}`` on ``min(num_envs, episodes)`` copies of ``cfg.env``, plus ``"seconds"``.

    With several ``ranks`` each plays its block of the episodes (:meth:`Ranks.share`) on up to
    ``num_envs`` copies and the per-episode results are gathered in episode order: the numbers
    of one process, on every rank."""
    ranks = ranks or Ranks()
    device = next(policy.parameters()).device if device is None else torch.device(device)
    first, last = ranks.share(episodes)
    start = time.perf_counter()
    results = {}
    for mode in modes:
        played = ([], [], [])
        if last > first:
            env = make_train_env(cfg, min(num_envs, last - first), device)
            try:
                played = play_episodes(
                    policy,
                    env,
                    last - first,
                    greedy=mode == "greedy",
                    seed=seed,
                    progress=progress,
                    first_episode=first,
                )
            finally:
                env.close()
        blocks = ranks.all_gather(played)
        results[mode] = episode_summary(*([x for block in blocks for x in block[i]] for i in range(3)))
    results["seconds"] = time.perf_counter() - start
    return results


def format_return_table(results: dict, env: str) -> str:
    lines = ["| env | mode | mean return (95% CI) | mean length (95% CI) | episodes |", "|---|---|---:|---:|---:|"]
    for mode in ("greedy", "sampled"):
        if mode in results:
            r = results[mode]
            lines.append(
                f"| {env} | {mode} | {r['mean_return']:.3f} +- {r['return_ci95']:.3f} | "
                f"{r['mean_length']:.1f} +- {r['length_ci95']:.1f} | {r['episodes']} |"
            )
    return "\n".join(lines)


# episodes of at least this many steps show a progress bar (with an estimate of the time left)
PROGRESS_STEPS = 100_000

# (episode, step) pairs in one block of the block evaluation: its trunk activations, ~1.5 K
# floats per pair for a d_model 64 Mamba layer, stay near 6 GB on a GPU (~1,000 steps of 1,000
# episodes); on the CPU the pairs of one block are what the caches can hold
BLOCK_PAIRS = {"cuda": 1 << 20, "cpu": 1 << 15}


class MemoryEpisodes(NamedTuple):
    """The outcome of ``n`` evaluation episodes of the memory task, one row per episode."""

    # bool [n]: the answer at the query step was right
    success: torch.Tensor
    # float32 [n]: the episode's return (the query step's reward; every other reward is 0)
    reward: torch.Tensor
    # [n, A]: the actor's output at the query step
    logits: torch.Tensor
    # int64 [n]: the episode's bit pattern (the right answer's code)
    target: torch.Tensor


def default_block_steps(n: int, device) -> int:
    """Steps per block for ``n`` episodes on ``device``: :data:`BLOCK_PAIRS` pairs, at least one step."""
    pairs = BLOCK_PAIRS["cuda" if torch.device(device).type == "cuda" else "cpu"]
    return max(1, pairs // n)


def memory_blocks(params: DelayedMemoryParams, n: int, device, block_steps: int | None = None) -> list[int]:
    """The steps of each block :func:`play_memory_episodes` plays ``n`` episodes of ``params`` by on
    ``device``: ``block_steps`` (default :func:`default_block_steps`, at most the episode) each, the
    last block the rest. Block ``k`` runs the trunk on ``[n, lengths[k], obs_dim]``."""
    steps = params.max_episode_steps
    block_steps = default_block_steps(n, device) if block_steps is None else int(block_steps)
    if block_steps < 1:
        raise ValueError(f"block_steps must be >= 1, got {block_steps}")
    block_steps = min(block_steps, steps)
    return [min(block_steps, steps - start) for start in range(0, steps, block_steps)]


@torch.no_grad()
def play_memory_episodes(
    policy: ActorCritic,
    params: DelayedMemoryParams,
    n: int,
    seed: int,
    modes=("greedy",),
    device=None,
    *,
    first_episode: int = 0,
    block_steps: int | None = None,
    progress: bool | None = None,
) -> dict[str, MemoryEpisodes]:
    """Evaluation episodes ``first_episode .. first_episode + n - 1`` of the memory task, by blocks of steps.

    Exact by construction: the task's observations do not depend on the actions (the cue at
    ``t = 0``, blank steps whose only content is the distractors hashed from the episode's key
    and ``t``, the query at ``t = horizon + 1``; the actions before the query are ignored and
    earn 0). So a block of ``block_steps`` steps of every episode is generated at once with
    :func:`~mamba_rl.envs.delayed_memory_observe` (the env's own function, on the episodes'
    states from :class:`~mamba_rl.envs.adapters.DelayedMemoryTask` ``reset``: the same
    ``(seed, episode)`` streams as :class:`_EpisodeBatch`), the actor's trunk runs over it through
    its sequence path (Mamba: the chunked or Triton scan; GRU: its replay) with the state carried
    from block to block, and the actor head runs once, on the features of each episode's query
    step. The answer of each of ``modes`` is the head's most likely action (``"greedy"``, the
    argmax of a categorical head's logits) or the head's sample drawn with the noise hashed from
    ``(seed, episode, horizon + 1)`` (``"sampled"``), from the same logits (the trunk runs once
    for all modes): the episodes, answers and noise of :class:`_EpisodeBatch`,
    which steps the env and the whole policy one step at a time. What differs is the rounding:
    the sequence path sums in another order than the single step. In float32 each path drifts
    from the float64 answer by its own rounding, which grows with the delay (~4e-7 of a logit
    per step for the committed H = 20,000 policy, neither path closer; benchmarks/NOTES_eval.md),
    so an answer whose two best logits are that close can differ. The critic is not run (it
    does not act).

    Memory is that of one block (``[n, block_steps]`` observations and trunk activations), the
    state carried between blocks, whatever the horizon. The blocks are :func:`memory_blocks`
    (``block_steps`` defaults to :func:`default_block_steps`); ``progress`` (default: episodes
    of :data:`PROGRESS_STEPS` steps or more) shows a bar over the steps. Returns ``{mode:
    MemoryEpisodes}``.
    """
    unknown = set(modes) - {"greedy", "sampled"}
    if unknown or not modes:
        raise ValueError(f"modes must be a non-empty sequence of 'greedy' and 'sampled', got {modes!r}")
    device = next(policy.parameters()).device if device is None else torch.device(device)
    dtype = next(policy.parameters()).dtype
    lengths = memory_blocks(params, n, device, block_steps)
    task = DelayedMemoryTask(params, n, device, autoreset=False, first_env=first_episode)
    env, _, _ = task.reset(seed)
    # [n]: the step whose action is scored
    query_t = env["horizon"] + 1
    steps = params.max_episode_steps
    trunk, head = policy.actor_trunk, policy.actor_head
    state = trunk.zero_state(n, device)
    # the episodes start from the zero state: no reset inside a row
    no_reset = torch.zeros(n, lengths[0], dtype=torch.bool, device=device)
    features = torch.zeros(n, trunk.out_features, dtype=dtype, device=device)
    bar = None
    if progress is None:
        progress = steps >= PROGRESS_STEPS
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"{n} episodes", unit="step", unit_scale=True, dynamic_ncols=True)
    start = 0
    for length in lengths:
        # every env field [n] as [n * length], t = start .. start + length - 1 in each row
        block = {name: value[:, None].expand(n, length).reshape(-1) for name, value in env.items()}
        block["t"] = torch.arange(start, start + length, device=device).repeat(n)
        obs, _ = delayed_memory_observe(DelayedMemoryState(**block), params)
        # [n, length, D]
        out, state = trunk.sequence(obs.view(n, length, -1).to(dtype), state, no_reset[:, :length])
        offset = query_t - start
        inside = (offset >= 0) & (offset < length)
        index = offset.clamp(0, length - 1)[:, None, None].expand(n, 1, out.shape[-1])
        features = torch.where(inside[:, None], out.gather(1, index).squeeze(1), features)
        if bar is not None:
            bar.update(length)
        start += length
    if bar is not None:
        bar.close()
    logits = head(features)
    action_dist = policy.action_dist
    played = {}
    for mode in modes:
        episode = first_episode + torch.arange(n, dtype=torch.int64, device=device)
        action = policy_action(action_dist, logits, mode == "greedy", mix32(int(seed) & 0xFFFFFFFF), episode, query_t)
        # the env scores the answer: its step from the query
        _, step = task.step(dict(env, t=query_t), action)
        played[mode] = MemoryEpisodes(step.success, step.reward, logits, env["target"])
    return played


class _EpisodeBatch:
    """``n`` evaluation episodes, numbered ``first_episode ..``, stepped together: the env and the
    whole policy one step at a time, the ground truth of :func:`play_memory_episodes` (the tests
    and ``benchmarks/bench_long_eval.py`` hold it to this). Every tensor is updated in place, so
    that on CUDA one step is captured in a CUDA graph and replayed (a step is then one launch
    instead of ~100 kernels queued from Python).

    ``obs``, ``state`` (the policy's, stepped in place), ``reset`` (True before the first step),
    ``env`` (the state of ``task``, a :class:`~mamba_rl.envs.adapters.DelayedMemoryTask` without
    autoreset), ``successes`` and ``returns`` per episode ``[n]``, ``logits`` the actor's output
    at each episode's query step ``[n, A]``, and ``t`` the step. Episode
    ``i``'s env draws from the stream of ``(seed, i)`` and, sampled, its actions from noise hashed
    from ``(seed, i, t)``: the episode is the same whatever batch it runs in. A finished env stays
    terminal: reward 0, success False.
    """

    def __init__(
        self, policy, params: DelayedMemoryParams, n: int, seed: int, greedy: bool, device, first_episode: int = 0
    ):
        self.policy, self.params, self.greedy = policy, params, greedy
        self.task = DelayedMemoryTask(params, n, device, autoreset=False, first_env=first_episode)
        self.env, obs, _ = self.task.reset(seed)
        dtype = next(policy.parameters()).dtype
        self.obs = obs.to(dtype, copy=True)
        self.state = policy.zero_state(n, device)
        # [n, A]: the actor's output at the query step
        self.logits = torch.zeros(n, policy.num_actions, dtype=dtype, device=device)
        self.reset = torch.ones(n, dtype=torch.bool, device=device)
        self.successes = torch.zeros(n, dtype=torch.int64, device=device)
        self.returns = torch.zeros(n, device=device)
        self.episode = first_episode + torch.arange(n, dtype=torch.int64, device=device)
        self.key = mix32(int(seed) & 0xFFFFFFFF)
        self.t = torch.zeros(1, dtype=torch.int64, device=device)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor :meth:`step` writes."""
        return [
            self.obs,
            *self.state.values(),
            self.reset,
            *self.env.values(),
            self.successes,
            self.returns,
            self.t,
            self.logits,
        ]

    def step(self) -> None:
        params, _, _ = self.policy.step(self.obs, self.state, self.reset, out_state=self.state)
        head = self.policy.action_dist
        query = self.env["t"] == self.env["horizon"] + 1
        self.logits.copy_(torch.where(query[:, None], params, self.logits))
        action = policy_action(head, params, self.greedy, self.key, self.episode, self.t)
        env, step = self.task.step(self.env, action)
        for name, value in env.items():
            self.env[name].copy_(value)
        self.obs.copy_(step.obs)
        self.successes += step.success
        self.returns += step.reward
        self.reset.zero_()
        self.t.add_(1)

    def run(self, cuda_graph: bool) -> None:
        """Play the episodes to the end (``max_episode_steps`` steps); a progress bar from
        ``PROGRESS_STEPS`` steps on."""
        graph = None
        if cuda_graph and self.obs.device.type == "cuda":
            try:
                graph = capture_cuda_graph(self.step, self.tensors())
            except Exception as err:  # a capture failure must not stop an evaluation: eager is correct
                warnings.warn(f"CUDA graph capture of the evaluation step failed ({err!r}); running eagerly")
        steps = range(self.params.max_episode_steps)
        if self.params.max_episode_steps >= PROGRESS_STEPS:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc=f"{len(self.episode)} episodes", unit="step", dynamic_ncols=True)
        for _ in steps:
            if graph is not None:
                graph.replay()
            else:
                self.step()


@torch.no_grad()
def evaluate_policy(
    policy: ActorCritic,
    params: DelayedMemoryParams,
    episodes: int,
    *,
    greedy: bool = True,
    seed: int = EVAL_SEED,
    num_envs: int = 1000,
    device=None,
    block_steps: int | None = None,
    ranks: Ranks | None = None,
) -> dict:
    """Play ``episodes`` episodes (``num_envs`` at a time) and count the right answers: greedy (the
    head's most likely action) or sampled (drawn from the policy with noise hashed from ``(seed, episode,
    step)``). :func:`evaluate_modes` for one mode."""
    mode = "greedy" if greedy else "sampled"
    return evaluate_modes(
        policy,
        params,
        episodes,
        (mode,),
        seed=seed,
        num_envs=num_envs,
        device=device,
        block_steps=block_steps,
        ranks=ranks,
    )[mode]


@torch.no_grad()
def evaluate_modes(
    policy: ActorCritic,
    params: DelayedMemoryParams,
    episodes: int,
    modes=("greedy", "sampled"),
    *,
    seed: int = EVAL_SEED,
    num_envs: int = 1000,
    device=None,
    block_steps: int | None = None,
    ranks: Ranks | None = None,
) -> dict:
    """Play ``episodes`` episodes (``num_envs`` at a time) and count the right answers of each mode.

    Episode ``i`` is the same whatever ``num_envs``. The episodes run by blocks of
    ``block_steps`` steps through the trunk's sequence path, once for all modes
    (:func:`play_memory_episodes`, which says why that is exact), with a progress bar over the
    steps from :data:`PROGRESS_STEPS` steps on. With several ``ranks`` each plays its block of the
    episodes (:meth:`Ranks.share`) and the results are gathered in episode order: the numbers of
    one process, on every rank.

    Returns ``{mode: {"accuracy", "episodes", "successes", "mean_return", "return_ci95",
    "wrong_patterns"}}``; ``wrong_patterns`` lists ``[pattern, episodes, right]`` for each bit
    pattern (the target's code) answered wrong at least once, by pattern: errors spread over every
    pattern are a fading or noisy memory, errors confined to a few patterns answered wrong every
    time are a wrong answer map.
    """
    ranks = ranks or Ranks()
    device = next(policy.parameters()).device if device is None else torch.device(device)
    done_episodes, last = ranks.share(episodes)
    returns = {mode: [torch.zeros(0, dtype=torch.float64)] for mode in modes}
    patterns = 2**params.num_bits
    # per pattern: episodes and right answers (their sum: the successes)
    counts = {mode: torch.zeros(2, patterns, dtype=torch.int64) for mode in modes}
    while done_episodes < last:
        n = min(num_envs, last - done_episodes)
        played = play_memory_episodes(
            policy, params, n, seed, modes, device, first_episode=done_episodes, block_steps=block_steps
        )
        for mode, outcome in played.items():
            returns[mode].append(outcome.reward.double().cpu())
            target = outcome.target.cpu()
            counts[mode][0] += torch.bincount(target, minlength=patterns)
            counts[mode][1] += torch.bincount(target, weights=outcome.success.cpu().double(), minlength=patterns).long()
        done_episodes += n
    blocks = ranks.all_gather({mode: (torch.cat(returns[mode]), counts[mode]) for mode in modes})
    results = {}
    for mode in modes:
        mode_returns = torch.cat([block[mode][0] for block in blocks])
        seen, right = sum(block[mode][1] for block in blocks)
        mode_successes = int(right.sum())
        wrong = torch.nonzero(right < seen).flatten().tolist()
        _, return_ci = mean_ci95(mode_returns)
        results[mode] = {
            "accuracy": mode_successes / episodes,
            "episodes": episodes,
            "successes": mode_successes,
            "mean_return": float(mode_returns.sum()) / episodes,
            "return_ci95": return_ci,
            "wrong_patterns": [[p, int(seen[p]), int(right[p])] for p in wrong],
        }
    return results


def evaluate_horizons(
    policy,
    cfg: TrainConfig,
    horizons,
    episodes: int,
    *,
    seed: int = EVAL_SEED,
    num_envs: int = 1000,
    device=None,
    modes=("greedy", "sampled"),
    block_steps: int | None = None,
    ranks: Ranks | None = None,
) -> dict:
    """``{horizon: {"greedy": {...}, "sampled": {...}, "seconds": s}}`` for each horizon: the
    trunk runs once per episode for all modes (:func:`evaluate_modes`; with several ``ranks``,
    each plays its block of the episodes)."""
    results = {}
    for horizon in horizons:
        params = DelayedMemoryParams(
            num_bits=cfg.num_bits, horizon=horizon, num_distractors=cfg.num_distractors, wrong_penalty=cfg.wrong_penalty
        )
        start = time.perf_counter()
        entry = evaluate_modes(
            policy,
            params,
            episodes,
            tuple(modes),
            seed=seed,
            num_envs=num_envs,
            device=device,
            block_steps=block_steps,
            ranks=ranks,
        )
        entry["seconds"] = time.perf_counter() - start
        results[str(horizon) if not isinstance(horizon, str) else horizon] = entry
    return results


def default_horizons(cfg: TrainConfig) -> list[int]:
    """The trained horizon (the top of a range), half of it and 2x, 4x, and the run's own final
    evaluation horizons (:attr:`TrainConfig.final_eval_horizons`): does the memory generalise?"""
    trained = cfg.horizon_range[1]
    return sorted({max(1, trained // 2), trained, 2 * trained, 4 * trained} | set(cfg.final_eval_horizons))


def format_table(results: dict, trained_horizon) -> str:
    lines = ["| horizon | greedy accuracy | sampled accuracy | episodes |", "|---:|---:|---:|---:|"]
    for horizon, entry in results.items():
        mark = " (trained)" if str(horizon) == str(trained_horizon) else ""
        greedy = entry.get("greedy", {}).get("accuracy", float("nan"))
        sampled = entry.get("sampled", {}).get("accuracy", float("nan"))
        episodes = (entry.get("greedy") or entry.get("sampled"))["episodes"]
        lines.append(f"| {horizon}{mark} | {greedy:.3f} | {sampled:.3f} | {episodes} |")
    return "\n".join(lines)


def format_wrong_patterns(results: dict, limit: int = 8) -> str:
    """One line per horizon and mode: the bit patterns answered wrong, as ``pattern right/episodes``
    (the ``limit`` most often wrong, then how many more)."""
    lines = []
    for horizon, entry in results.items():
        for mode in ("greedy", "sampled"):
            wrong = (entry.get(mode) or {}).get("wrong_patterns")
            if wrong is None:
                continue
            if not wrong:
                lines.append(f"horizon {horizon}, {mode}: every pattern right")
                continue
            worst = sorted(wrong, key=lambda w: (w[2] - w[1], w[0]))[:limit]
            text = ", ".join(f"{p} {r}/{n}" for p, n, r in worst)
            more = f" and {len(wrong) - len(worst)} more" if len(wrong) > len(worst) else ""
            noun = "pattern" if len(wrong) == 1 else "patterns"
            lines.append(f"horizon {horizon}, {mode}: {len(wrong)} {noun} answered wrong: {text}{more}")
    return "\n".join(lines)


def resolve_device(name: str, arg: str = "device") -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a device;
    ``arg`` names the setting in the error when CUDA is asked for and missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{arg}={name!r} but CUDA is not available on this machine; use cpu or auto")
    return device


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="mamba-rl-eval",
        description="Episode return and length of a trained "
        "policy (and accuracy per horizon on the memory task), greedy and sampled.",
        epilog="Memory task, long horizons (e.g. --horizons 1000000 10000000): the observations do not "
        "depend on the actions, so each episode runs by blocks of --block-steps steps through the "
        "trunk's sequence path (the Triton scan on CUDA), the state carried between blocks, the "
        "head at the query step only, greedy and sampled from one pass: the answers of stepping "
        "the env, memory bounded by one block, a progress bar from 100,000 steps on.",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    parser.add_argument(
        "--horizons",
        type=int,
        nargs="+",
        default=None,
        help="horizons to evaluate (default: the trained one, half of it, 2x and 4x)",
    )
    parser.add_argument("--episodes", type=int, default=1000, help="episodes per horizon and mode (default 1000)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument(
        "--num-envs",
        type=int,
        default=None,
        help="episodes run in parallel (default: 1000 on the memory task, else 16)",
    )
    parser.add_argument(
        "--seed", type=int, default=EVAL_SEED, help=f"seed of the evaluation episodes (default {EVAL_SEED})"
    )
    parser.add_argument("--modes", nargs="+", choices=("greedy", "sampled"), default=["greedy", "sampled"])
    parser.add_argument(
        "--block-steps",
        type=int,
        default=None,
        help="memory task: steps of every episode run through the trunk's sequence path at once "
        f"(default {BLOCK_PAIRS['cuda']} // num-envs on CUDA, {BLOCK_PAIRS['cpu']} // num-envs on the CPU); "
        "memory grows with it, not with the horizon",
    )
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--plot-states",
        default=None,
        metavar="DIR",
        help="also write pictures of the recurrent state, correct vs wrong answers, for each horizon "
        "to DIR/horizon_<h>/ (Mamba policies; see docs/STATE_LAB.md)",
    )
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    if args.num_envs is not None and args.num_envs < 1:
        parser.error(f"--num-envs must be >= 1, got {args.num_envs}")
    if args.block_steps is not None and args.block_steps < 1:
        parser.error(f"--block-steps must be >= 1, got {args.block_steps}")
    if args.horizons is not None and min(args.horizons) < 1:
        parser.error(f"--horizons must be ints >= 1, got {args.horizons}")
    try:
        device = resolve_device(args.device, "--device")
        policy, cfg, checkpoint = load_policy(args.checkpoint, device)
    except (CheckpointError, ValueError) as err:
        print(f"mamba-rl-eval: error: {err}", file=sys.stderr)
        return 2
    if not cfg.is_memory_task:
        if args.horizons or args.plot_states:
            print(
                f"mamba-rl-eval: error: --horizons and --plot-states are for the memory task; this run trained on "
                f"{cfg.env!r}",
                file=sys.stderr,
            )
            return 2
        print(
            f"{args.checkpoint}: {cfg.controller} policy trained on {cfg.env} for {checkpoint.get('update', '?')} "
            f"updates; {args.episodes} episodes per mode on {device}"
        )
        try:
            results = evaluate_env(
                policy,
                cfg,
                args.episodes,
                seed=args.seed,
                num_envs=args.num_envs or 16,
                device=device,
                modes=tuple(args.modes),
                progress=True,
            )
        except EnvSpecError as err:
            print(f"mamba-rl-eval: error: {err}", file=sys.stderr)
            return 2
        print(format_return_table(results, cfg.env))
        if args.json:
            out = {
                "checkpoint": str(args.checkpoint),
                "controller": cfg.controller,
                "env": cfg.env,
                "env_kwargs": cfg.env_kwargs,
                "update": checkpoint.get("update"),
                "device": str(device),
                "seed": args.seed,
                "results": results,
            }
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(out, indent=2))
            print(f"wrote {args.json}")
        return 0
    args.num_envs = args.num_envs or 1000
    if args.plot_states and cfg.controller != "mamba":
        print(f"mamba-rl-eval: error: --plot-states needs a Mamba policy, got {cfg.controller!r}", file=sys.stderr)
        return 2
    horizons = args.horizons or default_horizons(cfg)
    print(
        f"{args.checkpoint}: {cfg.controller} policy trained on horizon {cfg.horizon} for "
        f"{checkpoint.get('update', '?')} updates; {args.episodes} episodes per horizon on {device}"
    )
    results = evaluate_horizons(
        policy,
        cfg,
        horizons,
        args.episodes,
        seed=args.seed,
        num_envs=args.num_envs,
        device=device,
        modes=tuple(args.modes),
        block_steps=args.block_steps,
    )
    print(format_table(results, cfg.horizon_range[1]))
    print(format_wrong_patterns(results))
    if args.plot_states:
        from mamba_rl.lab.plots import write_state_report

        for horizon in horizons:
            params = DelayedMemoryParams(
                num_bits=cfg.num_bits,
                horizon=horizon,
                num_distractors=cfg.num_distractors,
                wrong_penalty=cfg.wrong_penalty,
            )
            out_dir = Path(args.plot_states) / f"horizon_{horizon}"
            # at most about 250 kept states per episode, whatever the horizon
            report = write_state_report(
                policy, params, out_dir, seed=args.seed, device=device, stride=max(1, horizon // 250)
            )
            print(
                f"state pictures, horizon {horizon} ({report['correct']} correct, {report['wrong']} wrong of "
                f"{report['episodes']} episodes): {out_dir}"
            )
    if args.json:
        out = {
            "checkpoint": str(args.checkpoint),
            "controller": cfg.controller,
            "trained_horizon": cfg.horizon,
            "num_bits": cfg.num_bits,
            "update": checkpoint.get("update"),
            "device": str(device),
            "seed": args.seed,
            "results": results,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
