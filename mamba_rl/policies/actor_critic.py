"""Recurrent actor-critic: a Mamba or GRU trunk (shared or one per head), an actor head with the
action space's distribution (:mod:`mamba_rl.policies.heads`) and a value head."""

from __future__ import annotations

from typing import NamedTuple

import torch
from gymnasium import spaces
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.modules import ActorValueOperator, ProbabilisticActor, ValueOperator

from mamba_rl.closed_form import skip_constant_steps
from mamba_rl.mixer import MambaConfig, config_from
from mamba_rl.policies.heads import ActionHead, CategoricalHead, make_action_head
from mamba_rl.policies.trunks import GRU_BACKENDS, GRUTrunk, MambaTrunk

__all__ = ["ActorCritic", "TorchRLActorCritic", "CONTROLLERS", "make_actor_critic", "count_parameters"]

CONTROLLERS = ("mamba", "gru")

# the states of the trunks as named tensors, "actor." / "critic." + the trunk state's field names
PolicyState = dict[str, torch.Tensor]


class TorchRLActorCritic(NamedTuple):
    """The TorchRL face of an :class:`ActorCritic` (same parameters).

    Attributes:
        actor: a ``ProbabilisticActor`` writing ``"logits"``, ``"action"``, ``"action_log_prob"``
            (and the trunk's ``"features"`` and ``("next", <state>)`` entries).
        critic: a module writing ``"state_value"`` ``[*, 1]``.
        primers: ``TensorDictPrimer`` transforms that register the recurrent state in an env's
            specs (append them to a ``TransformedEnv`` with ``InitTracker``), or use a Collector
            with ``auto_register_policy_transforms=True``.
    """

    actor: ProbabilisticActor
    critic: TensorDictModule
    primers: list


class ActorCritic(nn.Module):
    """A recurrent actor-critic.

    Layers: trunk (``MambaTrunk`` or ``GRUTrunk``) -> ``actor_head`` (the distribution's
    parameters, ``action_dist.num_outputs`` of them: logits for a discrete space, the mean for a
    box) and ``value_head`` (one value). ``action_dist`` (an
    :class:`~mamba_rl.policies.heads.ActionHead`) samples, scores and picks actions. With ``shared_trunk``
    one trunk feeds both heads; otherwise the critic has its own trunk and its own recurrent state.

    Tensor API (what the trainer uses; no TensorDict per step):

    - :meth:`zero_state` ``(B) -> state``: a dict of ``[B, ...]`` tensors, each trunk's state
      (:class:`~mamba_rl.state.MambaState` or :class:`~mamba_rl.policies.trunks.GRUState`) by
      field name, prefixed ``"actor."`` / ``"critic."`` (``"actor.ssm"``, ``"actor.conv"``).
    - :meth:`step` ``(obs [B, F], state, reset [B] bool, out_state=None) -> (params [B, A], value [B],
      state)``: pure, or writing the new state into ``out_state`` (``out_state=state``: in place).
    - :meth:`sequence` ``(obs [B, T, F], state, reset [B, T], policy_mask=None) -> (logits [B, T, A],
      value [B, T], final state)``: ``state`` enters ``t = 0``; ``reset[:, t]`` zeroes the state
      entering ``t``; differentiable in ``state``; with a ``policy_mask [B, T]`` the logits only at
      the steps it selects, ``[M, A]``.

    :meth:`to_torchrl` gives the same parameters as TorchRL modules (``ProbabilisticActor``,
    a value operator and the state primers) for Collectors and loss modules.

    Build one with :func:`make_actor_critic`.
    """

    def __init__(
        self,
        actor_trunk: nn.Module,
        critic_trunk: nn.Module | None,
        action_dist: ActionHead | int,
        head_hidden: int = 0,
    ) -> None:
        super().__init__()
        self.actor_trunk = actor_trunk
        self.critic_trunk = critic_trunk
        # an int is a number of categories
        self.action_dist = CategoricalHead(action_dist) if isinstance(action_dist, int) else action_dist
        self.num_actions = self.action_dist.num_outputs
        self.controller = actor_trunk.kind
        self.actor_head = _head(actor_trunk.out_features, self.num_actions, head_hidden, out_std=0.01)
        critic_features = (critic_trunk or actor_trunk).out_features
        self.value_head = _head(critic_features, 1, head_hidden, out_std=1.0)

    @property
    def shared_trunk(self) -> bool:
        return self.critic_trunk is None

    def _trunks(self):
        yield "actor.", self.actor_trunk
        if self.critic_trunk is not None:
            yield "critic.", self.critic_trunk

    def zero_state(self, batch_size: int, device=None) -> PolicyState:
        """Zero recurrent state for ``batch_size`` environments."""
        return {
            prefix + name: value
            for prefix, trunk in self._trunks()
            for name, value in trunk.zero_state(batch_size, device)._asdict().items()
        }

    @staticmethod
    def _split(state: PolicyState, prefix: str, trunk: nn.Module):
        """The state of ``trunk`` (its ``state_type``) from the entries of ``state`` under ``prefix``."""
        return trunk.state_type(**{key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)})

    def _run(self, method: str, obs, state, reset, policy_mask=None, **kwargs):
        new_state = {}
        features = {}
        for prefix, trunk in self._trunks():
            trunk_kwargs = {k: None if v is None else self._split(v, prefix, trunk) for k, v in kwargs.items()}
            out, trunk_state = getattr(trunk, method)(obs, self._split(state, prefix, trunk), reset, **trunk_kwargs)
            features[prefix] = out
            new_state.update({prefix + name: value for name, value in trunk_state._asdict().items()})
        actor_features = features["actor."]
        if policy_mask is not None:
            # [M, D]: the steps whose action is scored
            actor_features = actor_features[policy_mask]
        logits = self.actor_head(actor_features)
        value = self.value_head(features.get("critic.", features["actor."])).squeeze(-1)
        return logits, value, new_state

    def step(self, obs: torch.Tensor, state: PolicyState, reset: torch.Tensor, out_state: PolicyState | None = None):
        """One step: ``(logits [B, A], value [B], state after the step)``. The new state is written
        into ``out_state`` when given (``out_state=state`` steps in place, as the rollout does)."""
        return self._run("step", obs, state, reset, out_state=out_state)

    def sequence(
        self, obs: torch.Tensor, state: PolicyState, reset: torch.Tensor, policy_mask: torch.Tensor | None = None
    ):
        """A ``[B, T]`` sequence: ``(logits [B, T, A], value [B, T], state after step T - 1)``.

        With ``policy_mask`` (``[B, T]`` bool) the actor head runs only at the steps it selects:
        ``logits`` is ``[M, A]``, the rows of ``logits[policy_mask]`` (row-major order), while the
        value is still ``[B, T]``. A PPO loss that scores a few steps of long episodes then never
        holds ``B * T * A`` logits (at ``A = 2**16`` actions those would not fit in memory)."""
        return self._run("sequence", obs, state, reset, policy_mask=policy_mask)

    def skip_constant_steps(self, obs: torch.Tensor, state: PolicyState, steps: torch.Tensor) -> PolicyState:
        """The state after ``steps`` ``[B]`` (ints >= 0) more steps that all observe ``obs`` ``[B, F]``,
        in closed form (:func:`mamba_rl.closed_form.skip_constant_steps`), differentiable. Exact
        for one-layer Mamba trunks whose conv window holds only ``obs`` (its last ``d_conv - 1``
        steps observed it).

        Raises:
            ValueError: a GRU trunk (nonlinear: no closed form) or a Mamba stack.
        """
        if self.controller != "mamba":
            raise ValueError(
                f"the policy's trunk must be 'mamba' for a closed form across constant observations (a GRU "
                f"is nonlinear in its state), got controller={self.controller!r}"
            )
        new_state = {}
        for prefix, trunk in self._trunks():
            skipped = skip_constant_steps(trunk.core, obs, self._split(state, prefix, trunk), steps)
            new_state.update({prefix + name: value for name, value in skipped._asdict().items()})
        return new_state

    def state_norms(self, state: PolicyState) -> dict[str, torch.Tensor]:
        """Norms of the recurrent state (for logging), ``{"actor/ssm_norm": ..., ...}``."""
        return {
            f"{prefix[:-1]}/{name}": value
            for prefix, trunk in self._trunks()
            for name, value in trunk.state_norms(self._split(state, prefix, trunk)).items()
        }

    def to_torchrl(self) -> TorchRLActorCritic:
        """TorchRL modules over the same parameters (see :class:`TorchRLActorCritic`)."""
        trunk = self.actor_trunk.core
        actor_head = TensorDictModule(self.actor_head, in_keys=["features"], out_keys=["logits"])
        primers = [_primer(trunk)]
        if self.critic_trunk is None:
            value_head = ValueOperator(self.value_head, in_keys=["features"], out_keys=["state_value"])
            operator = ActorValueOperator(trunk, actor_head, value_head)
            actor_module = operator.get_policy_operator()
            critic = operator.get_value_operator()
        else:
            critic_core = self.critic_trunk.core
            primers.append(_primer(critic_core))
            actor_module = TensorDictSequential(trunk, actor_head)
            critic = TensorDictSequential(
                critic_core,
                ValueOperator(self.value_head, in_keys=["critic_features"], out_keys=["state_value"]),
            )
        if not isinstance(self.action_dist, CategoricalHead):
            raise NotImplementedError(f"to_torchrl supports categorical actions, got {type(self.action_dist).__name__}")
        actor = ProbabilisticActor(
            actor_module,
            in_keys=["logits"],
            out_keys=["action"],
            distribution_class=torch.distributions.Categorical,
            return_log_prob=True,
        )
        return TorchRLActorCritic(actor, critic, primers)


def _primer(core):
    return core.make_tensordict_primer()


def _head(in_features: int, out_features: int, hidden: int, out_std: float) -> nn.Module:
    """Linear head (CleanRL's orthogonal init: small actor logits, unit-scale value), with an
    optional tanh hidden layer."""
    layers: list[nn.Module] = []
    if hidden:
        layers += [_orthogonal(nn.Linear(in_features, hidden), 2**0.5), nn.Tanh()]
        in_features = hidden
    layers.append(_orthogonal(nn.Linear(in_features, out_features), out_std))
    return nn.Sequential(*layers)


def _orthogonal(layer: nn.Linear, std: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.zeros_(layer.bias)
    return layer


def make_actor_critic(
    controller: str,
    obs_dim: int,
    num_actions: int | None = None,
    *,
    action_space=None,
    shared_trunk: bool = True,
    mamba: MambaConfig | None = None,
    gru_hidden_size: int = 128,
    gru_backend: str = "packed",
    head_hidden: int = 0,
    discrete_head: str = "categorical",
    device=None,
    **mamba_options,
) -> ActorCritic:
    """Build the actor-critic for ``controller="mamba"`` or ``"gru"`` (same heads for both).

    Args:
        controller: ``"mamba"`` (a :class:`~mamba_rl.MambaModule` trunk) or ``"gru"``
            (``torchrl.modules.GRUModule``).
        obs_dim, num_actions: the env's observation size and number of (categorical) actions.
        action_space: a Gymnasium action space instead of ``num_actions`` (``Discrete``,
            ``MultiDiscrete`` or a bounded ``Box``): the head follows it.
        shared_trunk: one trunk for both heads (True) or one per head.
        mamba: the Mamba trunk (:class:`~mamba_rl.mixer.MambaConfig`); its ``num_layers`` also
            sets the GRU's layers.
        **mamba_options: instead of ``mamba``, any of its fields (``d_model``, ``num_layers``,
            ``d_state``, ``bc_init_scale``, ``backend``...), over the ``"mamba_ssm"`` preset as
            :class:`~mamba_rl.config.TrainConfig`'s ``mamba_preset``.
        gru_hidden_size, gru_backend: the GRU trunk (``gru_backend``: :class:`GRUTrunk`'s
            ``recurrent_backend``).
        head_hidden: width of a tanh hidden layer in each head; 0 = linear heads.
        discrete_head: a discrete action space's head, ``"categorical"`` or ``"bits"`` (one
            Bernoulli per bit of the action, :class:`~mamba_rl.policies.heads.BitsHead`).
        device: of the parameters.

    Example:
        >>> import torch
        >>> from mamba_rl.policies import make_actor_critic
        >>> policy = make_actor_critic("mamba", obs_dim=6, num_actions=16, d_model=32)
        >>> state = policy.zero_state(8)
        >>> logits, value, state = policy.step(torch.randn(8, 6), state, torch.ones(8, dtype=torch.bool))
        >>> logits.shape, value.shape
        (torch.Size([8, 16]), torch.Size([8]))
    """
    if controller not in CONTROLLERS:
        raise ValueError(f"controller must be one of {CONTROLLERS}, got {controller!r}")
    if gru_backend not in GRU_BACKENDS:
        raise ValueError(f"gru_backend must be one of {GRU_BACKENDS}, got {gru_backend!r}")
    mamba = config_from(mamba, "make_actor_critic", {"preset": "mamba_ssm"}, **mamba_options)

    def trunk(prefix: str, out_key: str):
        if controller == "mamba":
            return MambaTrunk(obs_dim, mamba, out_key=out_key, state_prefix=prefix, device=device)
        return GRUTrunk(
            obs_dim,
            gru_hidden_size,
            mamba.num_layers,
            recurrent_backend=gru_backend,
            out_key=out_key,
            state_prefix=prefix,
            device=device,
        )

    actor_trunk = trunk("recurrent_state_" if shared_trunk else "actor_state_", "features")
    critic_trunk = None if shared_trunk else trunk("critic_state_", "critic_features")
    if (num_actions is None) == (action_space is None):
        raise ValueError(
            f"pass one of num_actions or action_space, got num_actions={num_actions!r} and "
            f"action_space={action_space!r}"
        )
    space = action_space if action_space is not None else spaces.Discrete(num_actions)
    action_dist = make_action_head(space, discrete_head)
    return ActorCritic(actor_trunk, critic_trunk, action_dist, head_hidden).to(device)


def count_parameters(policy: ActorCritic) -> dict[str, int]:
    """Trainable parameters per part: ``{"actor_trunk", "critic_trunk", "actor_head", "value_head", "total"}``."""

    def count(module):
        return 0 if module is None else sum(p.numel() for p in module.parameters() if p.requires_grad)

    counts = {
        "actor_trunk": count(policy.actor_trunk),
        "critic_trunk": count(policy.critic_trunk),
        "actor_head": count(policy.actor_head),
        "value_head": count(policy.value_head),
    }
    counts["total"] = count(policy)
    return counts
