"""Recurrent PPO with TorchRL parts only; GRUModule, LSTMModule or MambaModule swapped by one flag.

    python examples/torchrl_ppo.py --env popgym-RepeatFirstEasy-v0 --trunk mamba --total-frames 100000 \
        --seed 0 --json results/repeat_first_mamba_0.json

Any Gymnasium id (popgym ids register on ``import popgym``), discrete or continuous actions. The
observation goes through Gymnasium's ``FlattenObservation`` (a ``Discrete``/``MultiDiscrete``
observation becomes its one-hot vector, a ``Box`` is flattened) and is cast to float32, then
TorchRL's ``GymWrapper``, ``SerialEnv`` and ``InitTracker`` / ``StepCounter`` / ``RewardSum``. The
recurrent trunk is shared by the actor and the critic, so the Collector stores its state at every
step; the primers come from ``get_primers_from_module``. Each batch ``[num_envs, T]`` is scored by
``GAE`` (once per batch) and replayed in recurrent mode by ``ClipPPOLoss``, in minibatches of whole rows drawn from a
``ReplayBuffer``. The trunk's state enters each row from the state stored at its first step, as
TorchRL's recurrent modules do.

``--json`` writes the per-batch mean episode return and the final score (the mean return of the
episodes that end in the last 10% of the frames); ``examples/torchrl_ppo_grid.py`` runs a grid of
these and writes a table.
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import Categorical, LazyTensorStorage, OneHot, ReplayBuffer
from torchrl.data.replay_buffers import SamplerWithoutReplacement
from torchrl.envs import Compose, GymWrapper, InitTracker, RewardSum, SerialEnv, StepCounter, TransformedEnv
from torchrl.envs.utils import check_env_specs
from torchrl.modules import (
    MLP,
    GRUModule,
    LSTMModule,
    ProbabilisticActor,
    TanhNormal,
    ValueOperator,
    set_recurrent_mode,
)
from torchrl.modules.utils import get_primers_from_module
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from mamba_rl import MambaModule

TRUNKS = ("gru", "lstm", "mamba")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="popgym-RepeatFirstEasy-v0", help="a Gymnasium id")
    parser.add_argument("--trunk", choices=TRUNKS, default="mamba")
    parser.add_argument("--hidden", type=int, default=64, help="trunk width (hidden_size)")
    parser.add_argument("--num-layers", type=int, default=1)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=64, help="steps per env per batch (T)")
    parser.add_argument("--total-frames", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=4, help="PPO epochs per batch")
    parser.add_argument("--minibatches", type=int, default=4, help="minibatches of whole rows per epoch")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--lmbda", type=float, default=0.95)
    parser.add_argument("--clip", type=float, default=0.2)
    parser.add_argument("--entropy", type=float, default=0.01)
    parser.add_argument("--max-grad-norm", type=float, default=0.5)
    parser.add_argument(
        "--mamba-preset",
        choices=("rl", "mamba_ssm"),
        default="rl",
        help="MambaModule's preset: 'rl' (its default) or mamba-ssm's layout and init",
    )
    parser.add_argument(
        "--mamba-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another MambaModule keyword, e.g. bc_init_scale=10 (a Python literal; repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write the curve and the final score here")
    args = parser.parse_args(argv)
    args.mamba_options = {}
    for text in args.mamba_option:
        key, sep, value = text.partition("=")
        if not sep or not key:
            parser.error(f"--mamba-option expects KEY=VALUE, got {text!r}")
        try:
            args.mamba_options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parser.error(f"--mamba-option {key}: {value!r} is not a Python literal")
    if args.num_envs % args.minibatches:
        parser.error(f"--num-envs ({args.num_envs}) must be a multiple of --minibatches ({args.minibatches})")
    return args


def make_gym_env(env_id: str) -> GymWrapper:
    """One env: a Gymnasium id, its observation flattened (one-hot for discrete spaces) to float32."""
    if env_id.startswith("popgym-"):
        import popgym  # noqa: F401  (registers the popgym ids)
    env = gym.make(env_id)
    env = gym.wrappers.FlattenObservation(env)
    env = gym.wrappers.DtypeObservation(env, np.float32)
    return GymWrapper(env)


def make_env(env_id: str, num_envs: int, seed: int) -> TransformedEnv:
    env = TransformedEnv(
        SerialEnv(num_envs, lambda: make_gym_env(env_id)), Compose(InitTracker(), StepCounter(), RewardSum())
    )
    env.set_seed(seed)
    return env


def make_trunk(
    kind: str, input_size: int, hidden: int, num_layers: int, mamba_preset: str, mamba_options: dict | None = None
):
    """The one line that differs between the three runs: a TorchRL recurrent module."""
    keys = {"in_key": "observation", "out_key": "features"}
    if kind == "gru":
        return GRUModule(input_size, hidden, num_layers, **keys)
    if kind == "lstm":
        return LSTMModule(input_size, hidden, num_layers, **keys)
    return MambaModule(input_size, hidden, num_layers, preset=mamba_preset, **keys, **(mamba_options or {}))


def make_actor_critic(env, trunk, hidden: int):
    """Actor and critic over one shared trunk; discrete (Categorical / OneHot) or continuous actions."""
    action_spec = env.full_action_spec_unbatched[env.action_key]
    if isinstance(action_spec, (Categorical, OneHot)):
        num_actions = action_spec.n if isinstance(action_spec, Categorical) else action_spec.shape[-1]
        head = TensorDictModule(
            MLP(in_features=hidden, out_features=num_actions, num_cells=[hidden], activation_class=nn.Tanh),
            in_keys=["features"],
            out_keys=["logits"],
        )
        dist_class = (
            torch.distributions.Categorical
            if isinstance(action_spec, Categorical)
            else torch.distributions.OneHotCategorical
        )
        actor = ProbabilisticActor(
            TensorDictSequential(trunk, head),
            in_keys=["logits"],
            out_keys=["action"],
            spec=action_spec,
            distribution_class=dist_class,
            return_log_prob=True,
        )
    else:
        action_dim = action_spec.shape[-1]
        head = TensorDictModule(
            nn.Sequential(
                MLP(in_features=hidden, out_features=2 * action_dim, num_cells=[hidden], activation_class=nn.Tanh),
                NormalParamExtractor(),
            ),
            in_keys=["features"],
            out_keys=["loc", "scale"],
        )
        actor = ProbabilisticActor(
            TensorDictSequential(trunk, head),
            in_keys=["loc", "scale"],
            out_keys=["action"],
            spec=action_spec,
            distribution_class=TanhNormal,
            distribution_kwargs={"low": action_spec.space.low, "high": action_spec.space.high},
            return_log_prob=True,
        )
    critic = TensorDictSequential(
        trunk,
        ValueOperator(
            MLP(in_features=hidden, out_features=1, num_cells=[hidden], activation_class=nn.Tanh), in_keys=["features"]
        ),
    )
    return actor, critic


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    env = make_env(args.env, args.num_envs, args.seed)
    obs_size = env.observation_spec["observation"].shape[-1]
    trunk = make_trunk(args.trunk, obs_size, args.hidden, args.num_layers, args.mamba_preset, args.mamba_options)
    actor, critic = make_actor_critic(env, trunk, args.hidden)
    env.append_transform(get_primers_from_module(actor))
    check_env_specs(env, seed=args.seed)

    frames_per_batch = args.num_envs * args.steps
    collector = Collector(env, actor, frames_per_batch=frames_per_batch, total_frames=args.total_frames)
    # shifted: one recurrent call over [num_envs, T + 1] instead of the batch and its "next" twin
    advantage = GAE(gamma=args.gamma, lmbda=args.lmbda, value_network=critic, average_gae=True, shifted=True)
    loss_fn = ClipPPOLoss(actor, critic, clip_epsilon=args.clip, entropy_coeff=args.entropy)
    optim = torch.optim.Adam(loss_fn.parameters(), lr=args.lr)
    rows = args.num_envs // args.minibatches
    buffer = ReplayBuffer(
        storage=LazyTensorStorage(args.num_envs), sampler=SamplerWithoutReplacement(), batch_size=rows
    )

    curve, episode_returns, frames, start = [], [], 0, time.perf_counter()
    for data in collector:
        # data: [num_envs, T]
        frames += data.numel()
        done = data["next", "done"].squeeze(-1)
        returns = data["next", "episode_reward"].squeeze(-1)[done]
        episode_returns += [(frames, r) for r in returns.tolist()]
        with torch.no_grad(), set_recurrent_mode(True):
            advantage(data)
        buffer.extend(data)
        for _ in range(args.epochs):
            for _ in range(args.minibatches):
                with set_recurrent_mode(True):
                    losses = loss_fn(buffer.sample())
                loss = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
                optim.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(loss_fn.parameters(), args.max_grad_norm)
                optim.step()
        mean = float(returns.mean()) if len(returns) else float("nan")
        curve.append({"frames": frames, "mean_return": mean, "episodes": int(done.sum())})
        print(
            f"{args.trunk} {args.env} frames {frames:>7d}  return {mean:8.3f}  episodes {int(done.sum()):3d}  "
            f"{time.perf_counter() - start:6.1f} s",
            flush=True,
        )
        # written every batch, so that a run stopped early keeps its curve
        summarize(args, frames, episode_returns, curve, time.perf_counter() - start, complete=False)
    collector.shutdown()
    # the collector rounds total_frames to whole batches, which may be fewer frames than asked
    return summarize(args, frames, episode_returns, curve, time.perf_counter() - start, complete=True)


def summarize(args: argparse.Namespace, frames: int, episode_returns, curve, seconds: float, complete: bool) -> dict:
    """The run's record; ``final_return`` is the mean return of the episodes that ended in the last
    10% of the frames so far (all episodes when none did). Written to ``--json`` when given."""
    tail = [r for f, r in episode_returns if f > 0.9 * frames] or [r for _, r in episode_returns]
    result = {
        "env": args.env,
        "trunk": args.trunk,
        "seed": args.seed,
        "frames": frames,
        "complete": complete,
        "final_return": float(np.mean(tail)) if tail else float("nan"),
        "seconds": seconds,
        "curve": curve,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    train(parse_args())
