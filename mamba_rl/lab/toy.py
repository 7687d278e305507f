"""A small Mamba policy trained by supervised learning on the delayed-memory task, for tests and demos.

Not the way to train a policy (that is PPO, ``mamba-rl-train``): the answer at the query step is
fitted by cross-entropy on the code, through :meth:`MambaModule.sequence` over whole episodes. It
gives, in about half a minute on a CPU, a trunk whose state really holds the code, which is what the state
lab's tests and examples need.
"""

from __future__ import annotations

import torch
from torch import nn

from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.lab.plots import episode_observations
from mamba_rl.lab.policy import StatePolicy
from mamba_rl.module import MambaModule

__all__ = ["train_toy_policy"]


def train_toy_policy(
    params: DelayedMemoryParams,
    *,
    d_model: int = 32,
    num_layers: int = 1,
    d_state: int = 8,
    iterations: int = 400,
    batch_size: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    device=None,
    log_every: int = 0,
) -> tuple[StatePolicy, dict]:
    """Train ``MambaModule(obs_dim, d_model) + Linear(d_model, num_actions)`` to answer the code.

    Returns ``(policy, info)`` with ``info = {"accuracy", "loss", "iterations"}`` measured on
    fresh episodes (seed ``seed + 10**6``) after training.
    """
    torch.manual_seed(seed)
    module = MambaModule(
        params.obs_dim,
        d_model,
        num_layers,
        d_state=d_state,
        in_key="observation",
        out_key="features",
        backend="torch",
        device=device,
    )
    head = nn.Linear(d_model, params.num_actions, device=device)
    optimizer = torch.optim.Adam([*module.parameters(), *head.parameters()], lr=lr)
    loss_value = float("nan")
    for iteration in range(iterations):
        obs, target, query_step = episode_observations(params, batch_size, seed * 100_003 + iteration, device)
        reset = torch.zeros(obs.shape[:2], dtype=torch.bool, device=obs.device)
        features, _ = module.sequence(obs, None, reset)
        # [N, d_model] at each episode's query step
        at_query = features[torch.arange(batch_size, device=obs.device), query_step]
        loss = nn.functional.cross_entropy(head(at_query), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_value = loss.item()
        if log_every and iteration % log_every == 0:
            print(f"iteration {iteration}: loss {loss_value:.4f}")
    module.eval()
    head.eval()
    with torch.no_grad():
        obs, target, query_step = episode_observations(params, 1024, seed + 10**6, device)
        features, _ = module.sequence(obs)
        answer = head(features[torch.arange(1024, device=obs.device), query_step]).argmax(-1)
    info = {"accuracy": float((answer == target).float().mean()), "loss": loss_value, "iterations": iterations}
    return StatePolicy(module, head), info
