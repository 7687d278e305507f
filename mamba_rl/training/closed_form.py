"""PPO on the memory task with the blank delay in closed form (``delay_closed_form: true``).

Why it is exact. During the delay of the memory task without distractors every observation is
the same blank, whatever the actions (the task's observations never depend on them). For a
policy whose trunks are each one Mamba layer, once the conv window holds only blanks
(``d_conv - 1`` blank steps after the cue) the selective scan is linear and time-invariant, and
the state after any number of further blank steps is a closed form of the state then
(:mod:`mamba_rl.closed_form`), exact and differentiable. Only the query step's action is scored.
So an episode with a delay of ``10**7`` is played here as: the cue and ``d_conv - 1`` blank
steps through the policy's own step, a jump of the SSM state across the remaining blank steps
(the conv window, full of blanks, stays as it is), and the query step; the env scores the
query's answer (:func:`~mamba_rl.envs.delayed_memory_step`), and draws the next episode.
Delays shorter than ``d_conv - 1`` are played whole.

What PPO sees. Each update plays one episode in each of the ``num_envs`` environments; the
rollout is their query steps, a one-step :class:`~mamba_rl.training.rollout.Rollout`
(:class:`ClosedFormRollout`) with the action sampled at collection and its log-prob, the value
there, the reward and the flags. The query step ends its episode, so GAE's advantage there is
``reward - value`` and the value target ``reward``, as in the stepped trainer, whatever ``gamma``
and ``gae_lambda``. The policy loss (ratio, clip, entropy) is the stepped trainer's with
``policy_mask_key: decision``, where only the query step carries policy weight. The replay
(:func:`closed_form_replay`) plays the same episodes again with gradients, through the jump.

What it leaves out: the value loss at the cue and the blank steps (there is no state at the
skipped steps to evaluate the critic on). The value loss is at the query step alone, where the
critic's state and target are exact. This does not bias the actor's gradient: the policy-gradient
term is ``(reward - V(s_q)) grad log pi(a_q | s_q)`` and ``V(s_q)``, a function of the state
only, is a baseline, which leaves the gradient's expectation unchanged whatever the critic has
learned; the value loss at the delay steps only trains the critic (and, through a shared trunk,
acts as an auxiliary loss whose targets ``gamma^(delay - t) reward`` vanish for long delays).

It is a computational shortcut that uses the task's known, action-independent blank
observations, not a general RL method: with distractors, a GRU trunk or a Mamba stack there is
no closed form and the config is refused (:func:`check_closed_form_config`). The trained
policy is an ordinary one: its checkpoint plays the real task step by step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.envs.adapters import DelayedMemoryTask
from mamba_rl.envs.delayed_memory import DelayedMemoryState, delayed_memory_observe
from mamba_rl.training.rollout import Rollout, restore_generator

__all__ = [
    "ClosedFormRollout",
    "ClosedFormCollector",
    "closed_form_replay",
    "play_closed_form",
    "cue_blank_query",
]


@dataclass
class ClosedFormRollout(Rollout):
    """The query steps of ``N`` episodes played in closed form, as a one-step :class:`Rollout`
    (every per-step tensor ``[N, 1]``: ``obs`` the query observation, ``done`` and ``decision``
    all True, ``episode_length`` the episode's ``horizon + 2``), and what the replay needs to
    play the episodes again.

    Attributes:
        episodes: the env state at each episode's cue, ``{name: [N]}`` (the fields of
            :class:`~mamba_rl.envs.DelayedMemoryState`).
        params: the task.
    """

    episodes: dict[str, torch.Tensor] = field(default_factory=dict)
    params: DelayedMemoryParams | None = None


def cue_blank_query(params: DelayedMemoryParams, episodes: dict[str, torch.Tensor]):
    """``(cue, blank, query)``, each float32 ``[N, obs_dim]``: the observations of the episodes
    whose env state at the cue is ``episodes`` (every delay step shows the same blank)."""
    state = DelayedMemoryState(**{name: episodes[name] for name in DelayedMemoryState._fields})
    horizon = state.horizon
    return tuple(
        delayed_memory_observe(state._replace(t=t), params)[0]
        for t in (torch.zeros_like(horizon), torch.ones_like(horizon), horizon + 1)
    )


def played_blank_steps(policy) -> int:
    """Blank steps played through the policy before the jump: ``d_conv - 1``, after which the
    conv window holds only blanks."""
    return policy.actor_trunk.core.config.d_conv - 1


def play_closed_form(policy, params: DelayedMemoryParams, episodes: dict[str, torch.Tensor]):
    """Play the episodes ``episodes`` (their env state at the cue, ``{name: [N]}``) up to their
    query step: the cue and ``min(horizon, d_conv - 1)`` blank steps through ``policy.step``, the
    rest of the delay in closed form (:meth:`~mamba_rl.policies.ActorCritic.skip_constant_steps`),
    then the query step. Differentiable.

    Returns ``(logits [N, A], value [N], state entering the query step)``.
    """
    dtype = next(policy.parameters()).dtype
    cue, blank, query = (obs.to(dtype) for obs in cue_blank_query(params, episodes))
    horizon = episodes["horizon"]
    n = horizon.shape[0]
    device = horizon.device
    state = policy.zero_state(n, device)
    no_reset = torch.zeros(n, dtype=torch.bool, device=device)
    _, _, state = policy.step(cue, state, torch.ones_like(no_reset))
    played = played_blank_steps(policy)
    for t in range(1, played + 1):
        _, _, stepped = policy.step(blank, state, no_reset)
        # [N]: episodes whose delay has a step t; the others keep the state they reached
        live = horizon >= t
        state = {
            name: torch.where(live.view(n, *[1] * (value.dim() - 1)), stepped[name], value)
            for name, value in state.items()
        }
    state = policy.skip_constant_steps(blank, state, (horizon - played).clamp(min=0))
    logits, value, _ = policy.step(query, state, no_reset)
    return logits, value, state


def closed_form_replay(
    policy, rollout: ClosedFormRollout, env_idx: torch.Tensor, backprop: str = "chunk", policy_mask=None
):
    """The query logits and values of the episodes ``env_idx`` of ``rollout``, played again in
    closed form with gradients (:func:`play_closed_form`); the signature of
    :func:`~mamba_rl.training.ppo.replay` (``backprop`` has no choice to make here: the gradient
    flows through the whole episode, jump included).

    Returns ``(logits [n, A], or [M, A] with policy_mask, value [n, 1])``.
    """
    episodes = {name: value[env_idx] for name, value in rollout.episodes.items()}
    logits, value, _ = play_closed_form(policy, rollout.params, episodes)
    if policy_mask is not None:
        logits = logits[policy_mask[env_idx][:, 0]]
    return logits, value[:, None]


class ClosedFormCollector:
    """Plays one episode of the memory task in each of ``num_envs`` environments per
    :meth:`collect`, in closed form (:func:`play_closed_form`), and samples the query's answer.

    The episodes are the env's own (:class:`~mamba_rl.envs.adapters.DelayedMemoryTask`,
    seeded with ``seed``): episode ``k`` of environment ``i`` is the ``k``-th the stepped
    collector would play there. The env state and the sampling generator carry from one
    :meth:`collect` to the next and go into checkpoints (:meth:`state_dict`); ``carry`` holds
    the env state as ``"env.<field>"`` (so the bits curriculum can raise ``env.active_bits``).
    ``policy_state`` is the state entering the last query steps (for the logged state norms).
    """

    def __init__(self, policy, params: DelayedMemoryParams, num_envs: int, seed: int, device) -> None:
        self.device = torch.device(device)
        self.policy = policy
        self.params = params
        self.action_dist = policy.action_dist
        self.num_envs = num_envs
        self.env = DelayedMemoryTask(params, num_envs, self.device)
        env_state, _, _ = self.env.reset(seed)
        self._env_state_names = list(env_state)
        self.carry = {f"env.{name}": value for name, value in env_state.items()}
        self.generator = torch.Generator(self.device)
        self.generator.manual_seed(seed)
        self.noise = torch.zeros(num_envs, *self.action_dist.noise_shape, device=self.device)
        self.policy_state = policy.zero_state(num_envs, self.device)

    def state_dict(self) -> dict:
        return {"carry": {k: v.clone() for k, v in self.carry.items()}, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        carry = state["carry"]
        if set(carry) != set(self.carry):
            raise ValueError(
                f"collector state does not match the closed-form collector: keys differ in "
                f"{sorted(set(carry) ^ set(self.carry))} (a checkpoint of a stepped run?)"
            )
        for name, value in carry.items():
            if value.shape != self.carry[name].shape:
                raise ValueError(
                    f"collector state {name!r} must have shape {list(self.carry[name].shape)}, got {list(value.shape)}"
                )
            self.carry[name].copy_(value)
        restore_generator(self.generator, state["generator"])

    @torch.no_grad()
    def collect(self) -> ClosedFormRollout:
        episodes = {name: self.carry[f"env.{name}"].clone() for name in self._env_state_names}
        logits, value, state = play_closed_form(self.policy, self.params, episodes)
        self.action_dist.draw_noise(self.noise, self.generator)
        action, log_prob = self.action_dist.sample(logits, self.noise)
        # the env scores the answer at the query step and draws each environment's next episode
        env_state, step = self.env.step(self.env.check_state(episodes), action)
        for name, tensor in env_state.items():
            self.carry[f"env.{name}"].copy_(tensor)
        for name, tensor in state.items():
            self.policy_state[name].copy_(tensor)
        _, query, _ = cue_blank_query(self.params, episodes)
        n = self.num_envs
        done = step.terminated[:, None]
        return ClosedFormRollout(
            obs=query[:, None],
            action=action[:, None],
            log_prob=log_prob.float()[:, None],
            value=value.float()[:, None],
            reward=step.reward[:, None],
            done=done,
            is_init=torch.zeros_like(done),
            decision=torch.ones_like(done),
            success=step.success[:, None],
            episode_return=step.reward[:, None],
            episode_length=(episodes["horizon"] + 2)[:, None],
            chunk_states={},
            bootstrap_value=torch.zeros(n, device=self.device),
            chunk_len=1,
            episodes=episodes,
            params=self.params,
        )

    def close(self) -> None:
        self.env.close()
