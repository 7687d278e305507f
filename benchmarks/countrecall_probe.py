"""Probes behind benchmarks/NOTES_countrecall.md: what a policy must do on POPGym
CountRecallEasy, whether a trunk can do it, and what a trained run does. Writes JSON.

Episodes are synthetic copies of CountRecallEasy's (two 52-card decks, 26 cards of each colour;
51 steps; observation ``[one-hot dealt colour, one-hot query colour]``, the trainer's encoding of
``MultiDiscrete([2, 2])``). The answer at step ``t`` is how many cards of the query's colour were
dealt in steps ``0..t``; the env pays ``+-1/51`` for it, so the return is ``2 * accuracy - 1``.

Subcommands:

- ``timer``: the accuracy of memory-less answers: the most likely count given the step index and
  whether the dealt card matches the query (the best a policy without a count can do).
- ``train``: a fresh trunk + actor head (``TrainConfig``'s sizes: width 64, the ``rl`` Mamba
  preset) trained on the counts, ``--loss ce`` (cross-entropy) or ``--loss pg`` (one sampled
  action per step, reward +-1 for it alone, advantage = reward minus the batch mean,
  normalised: a per-step policy gradient); test accuracy at fixed steps.
- ``policy RUN...``: a trained run's greedy accuracy, how often it gives the timer's answer,
  its mean absolute error, and the accuracy of a fresh linear readout (27-way logistic
  regression) fitted on its frozen trunk features.

Usage::

    python benchmarks/countrecall_probe.py timer
    python benchmarks/countrecall_probe.py train --controller mamba --loss pg --steps 600
    python benchmarks/countrecall_probe.py policy runs/<run dir> --out benchmarks/results/cr.json
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from mamba_rl.mixer import MambaConfig
from mamba_rl.policies import load_policy, make_actor_critic

STEPS = 51
NUM_ACTIONS = 27
MARKS = (50, 100, 200, 300, 400, 500, 600, 1000, 2000)


def episodes(n: int, rng: np.random.Generator):
    """``(obs [n, 51, 4] float32, answer [n, 51] int64, match [n, 51] bool)``."""
    deck = np.repeat([0, 1], 26)
    dealt = np.stack([rng.permutation(deck)[:STEPS] for _ in range(n)])
    query = np.stack([rng.permutation(deck)[:STEPS] for _ in range(n)])
    counts = np.stack([np.cumsum(dealt == colour, 1) for colour in (0, 1)], -1)  # [n, 51, 2]
    answer = np.take_along_axis(counts, query[..., None], -1)[..., 0]
    obs = np.concatenate([np.eye(2)[dealt], np.eye(2)[query]], -1)
    return torch.tensor(obs, dtype=torch.float32), torch.tensor(answer), torch.tensor(dealt == query)


def timer_answers(rng: np.random.Generator, n: int = 20000) -> torch.Tensor:
    """``[51, 2]``: the most likely count at each step, for a dealt card that does not / does match."""
    _, answer, match = episodes(n, rng)
    table = torch.zeros(STEPS, 2, dtype=torch.int64)
    for t in range(STEPS):
        for m in (0, 1):
            table[t, m] = torch.bincount(answer[match[:, t] == m, t], minlength=NUM_ACTIONS).argmax()
    return table


def sequence_logits(policy, obs: torch.Tensor):
    """``(logits [B, 51, 27], trunk features [B, 51, D])`` for whole episodes from a zero state."""
    reset = torch.zeros(obs.shape[:2], dtype=torch.bool)
    reset[:, 0] = True
    features, _ = policy.actor_trunk.sequence(obs, policy.actor_trunk.zero_state(obs.shape[0]), reset)
    return policy.actor_head(features), features


def cmd_timer(args) -> dict:
    rng = np.random.default_rng(args.seed)
    table = timer_answers(rng)
    _, answer, match = episodes(20000, rng)
    steps = torch.arange(STEPS)
    with_match = (table[steps, match.long()] == answer).float().mean().item()
    t_only = np.mean([torch.bincount(answer[:, t], minlength=NUM_ACTIONS).max().item() / 20000 for t in range(STEPS)])
    return {
        "timer_with_match": {"accuracy": with_match, "return": 2 * with_match - 1},
        "timer_step_only": {"accuracy": t_only, "return": 2 * t_only - 1},
        "uniform": {"accuracy": 1 / NUM_ACTIONS, "return": 2 / NUM_ACTIONS - 1},
    }


def cmd_train(args) -> dict:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    mamba = MambaConfig(**{"d_model": 64, "preset": "rl", **json.loads(args.mamba)})
    policy = make_actor_critic(
        args.controller, 4, NUM_ACTIONS, mamba=mamba, gru_hidden_size=64, head_hidden=args.head_hidden
    )
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.lr, eps=1e-5)
    test_obs, test_answer, _ = episodes(512, rng)
    accuracy = {}
    for step in range(1, args.steps + 1):
        obs, answer, _ = episodes(64, rng)
        logits, _ = sequence_logits(policy, obs)
        if args.loss == "ce":
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, NUM_ACTIONS), answer.reshape(-1))
        else:
            log_probs = torch.log_softmax(logits, -1)
            action = torch.distributions.Categorical(logits=logits.detach()).sample()
            reward = (action == answer).float() * 2 - 1
            advantage = (reward - reward.mean()) / (reward.std() + 1e-8)
            entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
            loss = -(advantage * log_probs.gather(-1, action[..., None])[..., 0]).mean() - args.ent_coef * entropy
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
        optimizer.step()
        if step in MARKS or step == args.steps:
            with torch.no_grad():
                accuracy[step] = (sequence_logits(policy, test_obs)[0].argmax(-1) == test_answer).float().mean().item()
    return {"test_accuracy": accuracy}


def linear_readout_accuracy(x, y, x_test, y_test) -> float:
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, x_test = (x - mean) / std, (x_test - mean) / std
    readout = torch.nn.Linear(x.shape[1], NUM_ACTIONS)
    optimizer = torch.optim.LBFGS(readout.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(readout(x), y) + 1e-4 * readout.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (readout(x_test).argmax(-1) == y_test).float().mean().item()


def cmd_policy(args) -> dict:
    rng = np.random.default_rng(args.seed)
    table = timer_answers(rng)
    obs, answer, match = episodes(1024, rng)
    fit_obs, fit_answer, _ = episodes(400, rng)
    timer = table[torch.arange(STEPS), match.long()]
    results = {}
    for run in args.runs:
        policy = load_policy(run)[0]
        with torch.no_grad():
            logits, features = sequence_logits(policy, obs)
            _, fit_features = sequence_logits(policy, fit_obs)
        action = logits.argmax(-1)
        right = (action == answer).float()
        results[run] = {
            "greedy_accuracy": right.mean().item(),
            "greedy_return": 2 * right.mean().item() - 1,
            "agrees_with_timer": (action == timer).float().mean().item(),
            "mean_abs_error": (action - answer).abs().float().mean().item(),
            "accuracy_by_step": {
                f"{a}-{b - 1}": right[:, a:b].mean().item() for a, b in ((0, 10), (10, 25), (25, 40), (40, 51))
            },
            "linear_readout_accuracy": linear_readout_accuracy(
                fit_features.flatten(0, 1), fit_answer.flatten(), features.flatten(0, 1), answer.flatten()
            ),
        }
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON file to write (printed either way)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("timer")
    train = sub.add_parser("train")
    train.add_argument("--controller", choices=["mamba", "gru"], default="mamba")
    train.add_argument("--loss", choices=["ce", "pg"], default="ce")
    train.add_argument("--steps", type=int, default=300)
    train.add_argument("--lr", type=float, default=3e-3)
    train.add_argument("--ent-coef", type=float, default=0.01)
    train.add_argument("--head-hidden", type=int, default=0)
    train.add_argument(
        "--mamba", default="{}", help="MambaConfig fields over the rl preset, as JSON: '{\"num_layers\": 2}'"
    )
    policy = sub.add_parser("policy")
    policy.add_argument("runs", nargs="+", help="run directories or checkpoint files")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = {"command": " ".join(sys.argv), "seed": args.seed}
    result.update({"timer": cmd_timer, "train": cmd_train, "policy": cmd_policy}[args.command](args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
