"""The training configuration: one dataclass, the single source of truth.

YAML presets (``configs/*.yaml``) and ``--set key=value`` only override its fields; an unknown
key is an error that lists the valid ones, and every value is type-checked against the field's
annotation. Each field's docstring (the string under it) is its documentation:
``python train.py --list-keys`` prints them. The Mamba keys are the fields of
:class:`~mamba_rl.mixer.MambaConfig`, which checks them (:meth:`TrainConfig.mamba_config`).

Why this module reads YAML and checks types itself (about 120 lines) rather than through a
library, measured with OmegaConf 2.4 and tyro 1.0 on this dataclass's field types:

- OmegaConf structured configs check ``Literal``, ``Optional`` and ``Union[int, list[int]]``,
  read ``1e-4`` as a float and take ``key=value`` dot-lists, but turn the string ``"5"`` into an
  int, resolve ``${...}`` interpolations in any string value (``exp_name``, env ids), do not read
  field docstrings, and word their errors differently from the rest of the project (``Key 'lrr'
  not in 'TrainConfig'. Did you mean: 'lr'?`` without the valid keys), so that the loading code,
  the docstring reader and an error translation would stay: it would remove about 60 lines for
  one more dependency.
- tyro reads field docstrings and types, but is a command-line parser (``--key value``, exits
  the process on an error): it replaces ``--set key=value`` and does not read YAML presets.

What the standard library and PyYAML do is used: ``dataclasses`` and ``typing.get_type_hints``
for the fields and their types, PyYAML's safe loader with one added float pattern (YAML 1.1,
which PyYAML follows, reads ``1e-4`` as a string), ``ast`` for the field docstrings.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import re
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

import yaml

from mamba_rl.envs.adapters import MEMORY_ENV_ID
from mamba_rl.mixer import MambaConfig

__all__ = [
    "TrainConfig",
    "ConfigError",
    "load_config",
    "apply_overrides",
    "parse_override",
    "field_docs",
    "config_to_dict",
    "config_from_dict",
    "check_machine",
]


# chunk_len="auto" on envs other than the memory task
DEFAULT_CHUNK_LEN = 128


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with ``1e-4``, ``1e4`` and ``1.0e4`` read as floats (YAML 1.2's
    spelling; YAML 1.1 wants a dot and a signed exponent, ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A bad configuration key or value."""


@dataclass
class TrainConfig:
    """PPO with GAE for a Mamba or GRU policy on any environment (the delayed memory task by default)."""

    # --- run ---------------------------------------------------------------------------------
    exp_name: str = "mamba_rl"
    """Experiment name: the first part of the run directory's name."""
    run_root: str = "runs"
    """Directory under which run directories are created (``tensorboard --logdir runs``)."""
    seed: int = 0
    """Seeds the parameters, the environments, the action sampling and the minibatch order."""
    device: str = "auto"
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    num_threads: int = 0
    """``torch.set_num_threads`` on CPU; 0 leaves torch's default."""
    dist_timeout_s: float = 600.0
    """Under torchrun: how long a collective waits for the other processes before it fails, so that
    a process that died or hangs stops the run instead of holding the others (docs/DISTRIBUTED.md)."""

    # --- environment -------------------------------------------------------------------------
    env: str = "mamba_rl/DelayedMemory-v0"
    """The environment: ``"mamba_rl/DelayedMemory-v0"`` (the memory task, set by the keys below),
    any Gymnasium id (``"CartPole-v1"``, ``"popgym-RepeatFirstEasy-v0"``), or a TorchRL env
    factory ``"package.module:function"`` called as ``function(num_envs=..., device=..., **env_kwargs)``."""
    env_kwargs: dict = field(default_factory=dict)
    """Keyword arguments for the env's constructor (Gymnasium ids and TorchRL factories);
    ``--set env_kwargs.KEY=VALUE`` sets one."""
    vectorization: Literal["sync", "async"] = "sync"
    """How a Gymnasium id's ``num_envs`` copies run: ``"sync"`` (one process) or ``"async"`` (one
    process per copy, for envs whose step costs more than the inter-process round trip)."""
    num_bits: int = 4
    """Bits to remember (1..16); the policy chooses among ``2**num_bits`` answers."""
    bits_curriculum_start: Optional[int] = None
    """A curriculum over the number of bits: training episodes draw only their first
    ``bits_curriculum_start`` bits at random (the others are 0; the observation and the answers keep
    ``num_bits`` bits), and ``bits_curriculum_step`` more each time the training accuracy has held
    ``bits_curriculum_threshold`` for ``bits_curriculum_patience`` updates in a row, up to
    ``num_bits``. ``target_accuracy`` counts only updates with every bit active; the final
    evaluation is at ``num_bits``. None = every bit from the start. With ``discrete_head: bits`` the
    map learned at ``k`` bits (answer bit ``j`` = cue bit ``j``) carries to ``k + 1``
    (docs/TRAINING.md, "Capacity and distractors")."""
    bits_curriculum_step: int = 2
    """Bits added at each step of the curriculum (``bits_curriculum_start``)."""
    bits_curriculum_threshold: float = 0.9
    """Training accuracy at which the curriculum adds bits, in (0, 1]."""
    bits_curriculum_patience: int = 3
    """Updates in a row at ``bits_curriculum_threshold`` or above before the curriculum adds bits."""
    horizon: Union[int, list[int]] = 50
    """Delay steps between the cue and the query: an int, or ``[low, high]`` drawn per episode."""
    horizon_sampling: Literal["uniform", "log_uniform"] = "uniform"
    """How a ``[low, high]`` horizon is drawn per episode: ``uniform`` over the delays, or
    ``log_uniform`` (each decade of delays gets the same share of episodes; docs/TRAINING.md)."""
    num_distractors: int = 0
    """Fair-coin noise channels appended to the observation."""
    wrong_penalty: float = 0.0
    """A wrong answer earns ``-wrong_penalty`` (a right one earns 1)."""
    num_envs: int = 64
    """Parallel environments (the batch of every rollout step) of each process: under torchrun with
    ``N`` processes each steps ``num_envs`` of its own, so the global batch of an update is
    ``N * num_envs`` (docs/DISTRIBUTED.md)."""

    # --- policy ------------------------------------------------------------------------------
    controller: Literal["mamba", "gru"] = "mamba"
    """Recurrent trunk: ``"mamba"`` (MambaModule) or ``"gru"`` (torchrl GRUModule, the baseline)."""
    shared_trunk: bool = True
    """One trunk for the actor and the critic (True) or one each."""
    num_layers: int = MambaConfig.num_layers
    """Stacked Mamba blocks or GRU layers."""
    # The Mamba keys below are the fields of mamba_rl.mixer.MambaConfig (its docstrings say more),
    # with its defaults; mamba_config() makes the one the policy is built from, and validates them.
    d_model: int = MambaConfig.d_model
    """Mamba width (features out of the trunk)."""
    d_state: int = MambaConfig.d_state
    """Mamba SSM state size per channel."""
    d_conv: int = MambaConfig.d_conv
    """Mamba causal-conv width."""
    expand: int = MambaConfig.expand
    """Mamba inner width = ``expand * d_model``."""
    mamba_preset: Literal["rl", "mamba_ssm"] = "mamba_ssm"
    """The Mamba init the four keys below take when left at null: ``"mamba_ssm"`` (``dt_min=1e-3``,
    ``bc_init_scale=1``, no start marker) or ``"rl"`` (``dt_min=1e-4``, ``bc_init_scale=30``,
    ``start_marker=true``); see ``MambaConfig.preset``."""
    dt_min: Optional[float] = None
    """Smallest initial Mamba step size. Small steps decay slowly: long horizons want ~1/horizon
    or less (values down to 1e-6 are fine). null: the preset's."""
    dt_max: float = MambaConfig.dt_max
    """Largest initial Mamba step size (initial steps are log-uniform in [dt_min, dt_max])."""
    dt_init_floor: Optional[float] = None
    """Lower clamp of the initial step sizes, at most ``dt_min``; null: the preset's (1e-4),
    lowered to ``dt_min`` when that is smaller."""
    bc_init_scale: Optional[float] = None
    """Scale of the initial ``x_proj`` weights that make Mamba's ``B`` and ``C``: mamba-ssm's init (1)
    passes a remembered cue to the output at ~1e-4 of the features, too faint for the policy
    gradient; 10 makes it ~1e-3, as in a fresh GRU (see docs/TRAINING.md). null: the preset's."""
    start_marker: Optional[bool] = None
    """Mamba: a learned offset on every conv input, which marks an episode's first ``d_conv - 1``
    steps through the state (for tasks whose observations do not mark the first step, such as
    POPGym's RepeatFirst; see docs/TORCHRL_DROPIN.md). null: the preset's."""
    mamba_backend: Literal["auto", "torch", "triton", "chunked"] = MambaConfig.backend
    """Scan/conv kernels: ``"auto"`` is Triton on CUDA when available, the chunked PyTorch scan on
    the CPU (``"torch"`` is the step-by-step reference)."""
    gru_hidden_size: int = 128
    """GRU width (features out of the trunk)."""
    gru_backend: Literal["packed", "pad", "scan", "triton", "auto"] = "packed"
    """GRU training replays: ``"packed"`` is :func:`mamba_rl.policies.gru_replay.gru_replay`: on
    CUDA a fused Triton recurrence per layer (float32, width <= 128; else one cuDNN call over the
    episodes packed by length), on the CPU the GRU equations stepped over the rows; the others are
    GRUModule's ``recurrent_backend`` values. All give the same numbers."""
    init_policy: Optional[str] = None
    """Start from the policy parameters of this checkpoint (a ``checkpoint.pt``/``policy.pt`` file or a
    run directory) instead of a fresh initialisation: a fine-tune. The model keys must build the
    same policy; the optimizer, the environments and the counters start fresh. A resumed run
    loads its own checkpoint instead."""
    head_hidden: int = 0
    """Width of a tanh hidden layer in the actor and value heads; 0 = linear heads."""
    discrete_head: Literal["categorical", "bits"] = "categorical"
    """A ``Discrete(n)`` action space's head: ``"categorical"`` (``n`` logits) or ``"bits"`` (``n`` a
    power of 2: one Bernoulli logit per bit of the action's binary code, the log-prob a sum over the
    bits). A right answer then teaches every bit, where a categorical head learns each of the
    ``2**num_bits`` answers on its own: at 8 bits of the memory task (delays 1..50, CPU) the
    categorical head stayed at chance for 175 updates, the bits head reached 0.9 in them
    (docs/TRAINING.md, "Capacity and distractors")."""

    # --- rollouts ----------------------------------------------------------------------------
    chunk_len: Union[int, Literal["auto"]] = "auto"
    """Steps per chunk (T). A stored chunk is replayed from its stored start state. ``"auto"``:
    on the memory task ``max horizon + 2``, one whole episode, so that truncated backprop still
    reaches the cue; on other envs 128."""
    chunks_per_rollout: int = 1
    """Chunks collected per update; a rollout is ``chunk_len * chunks_per_rollout`` steps per env."""
    backprop: Literal["chunk", "episode"] = "chunk"
    """``"chunk"``: truncated backprop inside each chunk. ``"episode"``: through the whole rollout
    across chunks (the gradient flows through the carried state), chunks recomputed in the
    backward pass so memory stays at one chunk's activations."""
    delay_closed_form: bool = False
    """The memory task's blank delay in closed form (``mamba_rl.training.closed_form``): each update
    plays one episode per env as the cue, ``d_conv - 1`` blank steps through the policy, a jump of
    the SSM state across the rest of the delay, exact and differentiable, and the query step, in
    the collection and in the PPO replay alike, so that a delay of 10,000,000 steps costs what 5
    do. Exact for one Mamba layer without distractors (other configs are refused); the value loss
    is at the query step only. ``time/sps`` counts the episodes' steps, delays included. The
    trained policy is an ordinary one (docs/TRAINING.md, "The delay in closed form")."""
    cuda_graph: bool = True
    """On CUDA, capture one rollout step (policy, sampling, env, storage) in a CUDA graph. For the
    step loop of envs whose observations depend on the actions; the memory task's rollout runs by
    blocks through the sequence path (``SequenceRolloutCollector``) and has no step to capture."""
    compile_env: bool = True
    """On CUDA, ``torch.compile`` the rollout's env step and the storage after it: a few fused
    kernels instead of ~140 tensor ops, the same numbers bit for bit (checked when it compiles; eager with a
    warning if that fails). Not on the CPU, where the C++ build takes minutes. The step loop's, as
    ``cuda_graph``."""

    # --- PPO ---------------------------------------------------------------------------------
    num_updates: int = 300
    """PPO updates (one rollout each)."""
    learning_rate: float = 1e-3
    """Adam learning rate (start of the schedule)."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate schedule over ``num_updates``, down to 0 for linear and cosine."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    update_epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 2
    """Minibatches per epoch, split by environment (whole rows of chunks, never shuffled steps)."""
    norm_adv: bool = True
    """Normalise advantages per minibatch (statistics over the steps that carry policy weight)."""
    clip_coef: float = 0.2
    """PPO ratio clip range."""
    clip_vloss: bool = False
    """Clip the value loss around the old values (as CleanRL's ``clip_vloss``)."""
    ent_coef: float = 0.01
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this for the advantages and the value targets (the logged episode
    returns are the env's own). Envs with large per-step rewards (Pendulum's reach -16) want value
    targets near 1, which a freshly initialised value head reaches in a few updates."""
    max_grad_norm: float = 1.0
    """Gradient clipping (global norm)."""
    target_kl: Optional[float] = None
    """Stop the epochs of an update once the approximate KL exceeds this; None = never."""
    policy_mask_key: Optional[Literal["decision"]] = "decision"
    """Steps whose action carries policy weight: ``"decision"`` (the env's scored steps) weights
    the policy and entropy losses and the advantage statistics by that mask, so the many delay
    steps, whose action changes nothing, do not drown the one that matters. Envs that mark no
    steps mark every step, which is plain PPO. None = plain PPO (every step weighs the same)."""

    # --- logging, checkpoints, stopping ------------------------------------------------------
    log_interval: int = 1
    """Write TensorBoard scalars every this many updates."""
    checkpoint_interval: int = 25
    """Save a checkpoint every this many updates (and at the end, on Ctrl-C)."""
    max_wall_time_s: Optional[float] = None
    """Stop training after this many seconds (checkpoint and final evaluation still run)."""
    target_accuracy: Optional[float] = None
    """Stop training once the mean training accuracy of the last ``target_window`` updates reaches
    this and, with delays from a range, so does the accuracy of the episodes they ended with at least
    half the range's longest delay (``train/accuracy_long``, pooled over the window)."""
    target_window: int = 5
    """Updates averaged for ``target_accuracy``."""
    eval_episodes: int = 1000
    """Episodes per horizon and mode of the final evaluation (0 skips it)."""
    eval_horizons: list[int] = field(default_factory=list)
    """Horizons evaluated at the end besides the trained one (to show how memory generalises)."""
    eval_horizon_multiples: list[float] = field(default_factory=list)
    """Multiples of the trained horizon (the top of a range) also evaluated at the end, each rounded
    to the nearest whole step: ``[2, 5, 10]`` shows how far past its training a memory holds."""
    eval_num_envs: int = 1000
    """Episodes run in parallel during evaluation."""
    tensorboard: bool = True
    """Write TensorBoard event files into the run directory."""
    state_figure_interval: int = 0
    """Log a picture of the Mamba state (heatmap, norms, PCA; ``mamba_rl.lab.state_figure``) to
    TensorBoard under ``states/summary`` every this many updates; 0 = never."""
    progress_bar: bool = True
    """Show a tqdm progress bar (accuracy, steps/s)."""

    def __post_init__(self) -> None:
        validate(self)

    def mamba_config(self) -> MambaConfig:
        """The Mamba trunk these keys describe (raises ``ValueError`` naming a bad key)."""
        return MambaConfig(
            d_model=self.d_model,
            num_layers=self.num_layers,
            d_state=self.d_state,
            d_conv=self.d_conv,
            expand=self.expand,
            dt_min=self.dt_min,
            dt_max=self.dt_max,
            dt_init_floor=self.dt_init_floor,
            bc_init_scale=self.bc_init_scale,
            start_marker=self.start_marker,
            preset=self.mamba_preset,
            backend=self.mamba_backend,
        )

    # --- derived -----------------------------------------------------------------------------
    @property
    def horizon_range(self) -> tuple[int, int]:
        if isinstance(self.horizon, int):
            return (self.horizon, self.horizon)
        return (self.horizon[0], self.horizon[1])

    @property
    def final_eval_horizons(self) -> list[int]:
        """The memory task's final evaluation horizons: the trained one (the top of a range) first,
        then ``eval_horizons`` and ``round(m * trained)`` for each of ``eval_horizon_multiples``,
        sorted, each once."""
        trained = self.horizon_range[1]
        extra = {*self.eval_horizons, *(round(m * trained) for m in self.eval_horizon_multiples)} - {trained}
        return [trained, *sorted(extra)]

    @property
    def env_horizon(self) -> int | tuple[int, int]:
        """``horizon`` as the env takes it."""
        return self.horizon if isinstance(self.horizon, int) else tuple(self.horizon)

    @property
    def resolved_chunk_len(self) -> int:
        """``chunk_len`` with ``"auto"`` resolved to ``max horizon + 2``."""
        if self.chunk_len != "auto":
            return self.chunk_len
        return self.horizon_range[1] + 2 if self.is_memory_task else DEFAULT_CHUNK_LEN

    @property
    def is_memory_task(self) -> bool:
        """Whether ``env`` is the delayed memory task (its keys, accuracy and horizon sweeps apply)."""
        return self.env == MEMORY_ENV_ID

    @property
    def rollout_len(self) -> int:
        """Steps per environment per update."""
        return self.resolved_chunk_len * self.chunks_per_rollout

    @property
    def steps_per_update(self) -> int:
        return self.rollout_len * self.num_envs


# --------------------------------------------------------------------------------------------
# Validation


def _positive_int(cfg, name):
    value = getattr(cfg, name)
    if value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")


def _positive(cfg, name, allow_none=False):
    value = getattr(cfg, name)
    if value is None and allow_none:
        return
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


def validate(cfg: TrainConfig) -> None:
    """Type-check every field against its annotation, then the ranges and the cross-field rules."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        setattr(cfg, f.name, _coerce(f.name, getattr(cfg, f.name), hints[f.name]))
    for name in (
        "num_envs",
        "gru_hidden_size",
        "chunks_per_rollout",
        "num_updates",
        "update_epochs",
        "num_minibatches",
        "log_interval",
        "checkpoint_interval",
        "eval_num_envs",
        "target_window",
        "bits_curriculum_step",
        "bits_curriculum_patience",
    ):
        _positive_int(cfg, name)
    if not 1 <= cfg.num_bits <= 16:
        raise ConfigError(f"num_bits must be in 1..16, got {cfg.num_bits}")
    if cfg.bits_curriculum_start is not None:
        if not 1 <= cfg.bits_curriculum_start <= cfg.num_bits:
            raise ConfigError(
                f"bits_curriculum_start must be in 1..num_bits={cfg.num_bits} or None (no curriculum), "
                f"got {cfg.bits_curriculum_start}"
            )
        if not cfg.is_memory_task:
            raise ConfigError(
                f"bits_curriculum_start applies to the memory task ({MEMORY_ENV_ID!r}) only, got env={cfg.env!r}; "
                "set it to None"
            )
    if cfg.delay_closed_form:
        _check_closed_form(cfg)
    if not 0.0 < cfg.bits_curriculum_threshold <= 1.0:
        raise ConfigError(f"bits_curriculum_threshold must be in (0, 1], got {cfg.bits_curriculum_threshold}")
    if isinstance(cfg.horizon, list):
        if len(cfg.horizon) != 2 or not 1 <= cfg.horizon[0] <= cfg.horizon[1]:
            raise ConfigError(f"horizon must be an int >= 1 or [low, high] with 1 <= low <= high, got {cfg.horizon}")
    elif cfg.horizon < 1:
        raise ConfigError(f"horizon must be an int >= 1 or [low, high], got {cfg.horizon}")
    if cfg.state_figure_interval < 0:
        raise ConfigError(f"state_figure_interval must be an int >= 0 (0 = never), got {cfg.state_figure_interval}")
    if cfg.chunk_len != "auto" and cfg.chunk_len < 1:
        raise ConfigError(f"chunk_len must be an int >= 1 or 'auto', got {cfg.chunk_len!r}")
    for name in ("learning_rate", "adam_eps", "clip_coef", "max_grad_norm", "reward_scale", "dist_timeout_s"):
        _positive(cfg, name)
    for name in ("target_kl", "max_wall_time_s"):
        _positive(cfg, name, allow_none=True)
    for name in ("gamma", "gae_lambda"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {getattr(cfg, name)}")
    for name in ("ent_coef", "vf_coef", "num_distractors", "wrong_penalty", "eval_episodes", "num_threads"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.target_accuracy is not None and not 0.0 < cfg.target_accuracy <= 1.0:
        raise ConfigError(f"target_accuracy must be in (0, 1] or None, got {cfg.target_accuracy}")
    if cfg.num_minibatches > cfg.num_envs:
        raise ConfigError(
            f"num_minibatches must be <= num_envs={cfg.num_envs} (minibatches are split by environment), "
            f"got {cfg.num_minibatches}"
        )
    if any(h < 1 for h in cfg.eval_horizons):
        raise ConfigError(f"eval_horizons must be ints >= 1, got {cfg.eval_horizons}")
    for multiple in cfg.eval_horizon_multiples:
        if not (multiple > 0 and math.isfinite(multiple)):
            raise ConfigError(f"eval_horizon_multiples must be finite numbers > 0, got {cfg.eval_horizon_multiples}")
        if round(multiple * cfg.horizon_range[1]) < 1:
            raise ConfigError(
                f"eval_horizon_multiples: {multiple:g} x the trained horizon {cfg.horizon_range[1]} rounds to 0 "
                f"steps; each multiple must give a horizon >= 1, got {cfg.eval_horizon_multiples}"
            )
    if not (cfg.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", cfg.device)):
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (N a GPU index), got {cfg.device!r}")
    if cfg.learning_rate > MAX_LEARNING_RATE:
        raise ConfigError(
            f"learning_rate must be in (0, {MAX_LEARNING_RATE}] (Adam's step size), got {cfg.learning_rate!r}"
        )
    try:
        cfg.mamba_config()
    except ValueError as err:
        raise ConfigError(str(err)) from err


def _check_closed_form(cfg: TrainConfig) -> None:
    """The keys ``delay_closed_form`` needs: the closed form holds for the memory task's blank delay
    (no distractors) through one Mamba layer, and replays whole episodes' query steps."""
    expected = [
        ("env", cfg.is_memory_task, f"the memory task {MEMORY_ENV_ID!r} (its delay is what is skipped)", cfg.env),
        ("controller", cfg.controller == "mamba", "'mamba' (a GRU is nonlinear: no closed form)", cfg.controller),
        (
            "num_layers",
            cfg.num_layers == 1,
            "1 (a later Mamba layer reads the earlier one's moving output: no closed form)",
            cfg.num_layers,
        ),
        (
            "num_distractors",
            cfg.num_distractors == 0,
            "0 (distractors make every delay step's observation different)",
            cfg.num_distractors,
        ),
        ("chunk_len", cfg.chunk_len == "auto", "'auto' (each episode is replayed whole)", cfg.chunk_len),
        (
            "chunks_per_rollout",
            cfg.chunks_per_rollout == 1,
            "1 (one episode per env per update)",
            cfg.chunks_per_rollout,
        ),
        (
            "policy_mask_key",
            cfg.policy_mask_key == "decision",
            "'decision' (only the query step is played with its action scored)",
            cfg.policy_mask_key,
        ),
        (
            "state_figure_interval",
            cfg.state_figure_interval == 0,
            "0 (the state picture steps through the whole delay)",
            cfg.state_figure_interval,
        ),
    ]
    for name, ok, what, got in expected:
        if not ok:
            raise ConfigError(f"delay_closed_form needs {name} = {what}, got {got!r}")


# Adam moves each parameter by about learning_rate per step: above 1 the first update wrecks the policy
MAX_LEARNING_RATE = 1.0


def check_machine(cfg: TrainConfig) -> None:
    """The checks of ``cfg`` against this machine, made before a run touches its directory:
    a CUDA device that exists, and Triton kernels only where they run (a CUDA device, or the
    Triton interpreter with ``TRITON_INTERPRET=1``)."""
    import os

    import torch

    cuda = torch.cuda.is_available()
    if cfg.device.startswith("cuda"):
        if not cuda:
            raise ConfigError(f"device={cfg.device!r} but CUDA is not available on this machine; use 'cpu' or 'auto'")
        index = int(cfg.device.split(":")[1]) if ":" in cfg.device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={cfg.device!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    on_cuda = cuda and cfg.device != "cpu"
    name = "mamba_backend" if cfg.controller == "mamba" else "gru_backend"
    if getattr(cfg, name) == "triton" and not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        where = "no CUDA on this machine" if not cuda else "device='cpu'"
        other = "'auto', 'chunked' or 'torch'" if name == "mamba_backend" else "'packed', 'pad', 'scan' or 'auto'"
        raise ConfigError(f"{name}='triton' needs a CUDA device ({where}); use {other}")


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(name: str, value, tp):
    """``value`` checked against (and lightly converted to) the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin is Union:
        for arg in typing.get_args(tp):
            try:
                return _coerce(name, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{name} must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) is type(typing.get_args(tp)[0]):
            return value
        raise ConfigError(f"{name} must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{name} must be {_type_name(tp)}, got {value!r}")
        return [_coerce(name, item, typing.get_args(tp)[0]) for item in value]
    if tp is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise ConfigError(f"{name} must be a mapping of str keys, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{name} must be {_type_name(tp)}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Loading


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _unknown(keys, where: str) -> None:
    valid = field_names()
    bad = [k for k in keys if k not in valid]
    if bad:
        raise ConfigError(f"unknown config key(s) {bad} in {where}; valid keys: {', '.join(valid)}")


def config_to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(values: dict, where: str = "config") -> TrainConfig:
    _unknown(values, where)
    return TrainConfig(**values)


def parse_override(text: str) -> tuple[str, object]:
    """``"key=value"`` -> ``(key, value)``, the value read as YAML (``1e-4``, ``[1, 2]``, ``null``)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {err}") from err
    return key, value


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = _load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(values).__name__}")
    return values


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    values = dict(values)
    for text in overrides:
        key, value = parse_override(text)
        if key.startswith("env_kwargs."):
            # --set env_kwargs.KEY=VALUE sets one keyword argument
            values["env_kwargs"] = {**values.get("env_kwargs", {}), key[len("env_kwargs.") :]: value}
            continue
        _unknown([key], f"--set {text}")
        values[key] = value
    return values


def load_config(path: str | Path | None = None, overrides: list[str] = (), extra: dict | None = None) -> TrainConfig:
    """Defaults, then the YAML preset at ``path``, then ``extra``, then ``--set`` overrides."""
    values = read_yaml(path) if path is not None else {}
    where = str(path) if path is not None else "config"
    _unknown(values, where)
    values.update(extra or {})
    values = apply_overrides(values, list(overrides))
    return TrainConfig(**values)


def field_docs() -> dict[str, str]:
    """Each field's docstring, read from this module's source."""
    source = textwrap.dedent(inspect.getsource(TrainConfig))
    body = ast.parse(source).body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs
