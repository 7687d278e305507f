"""The Mamba-1 mixer with an explicit, per-environment recurrent state, and the one dataclass of
Mamba hyperparameters (:class:`MambaConfig`) that the mixer, :class:`~mamba_rl.MambaModule`, the
policy trunks and the trainer's config all build from.

Parameter names, shapes, defaults and initialisation follow ``mamba_ssm.modules.mamba_simple.Mamba``,
so a state dict saved from mamba-ssm loads unchanged. Unlike mamba-ssm's inference cache, the state
is an argument and a return value: nothing is mutated in place unless a step is asked to
(``out_state``), resets can happen inside a sequence, and gradients reach the initial state.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from mamba_rl.kernels import ops
from mamba_rl.state import MambaState

__all__ = ["MambaConfig", "MambaMixer", "PRESETS"]

# What each preset puts in the MambaConfig fields left at None. "mamba_ssm" is mamba-ssm's init;
# "rl" is what learns memory tasks from a policy gradient (MambaConfig's docstring says why).
PRESETS = {
    "rl": {"dt_min": 1e-4, "dt_init_floor": 1e-4, "bc_init_scale": 30.0, "start_marker": True},
    "mamba_ssm": {"dt_min": 1e-3, "dt_init_floor": 1e-4, "bc_init_scale": 1.0, "start_marker": False},
}


@dataclass(frozen=True)
class MambaConfig:
    """The hyperparameters of a Mamba-1 stack: one set of defaults, validated when made.

    :class:`MambaMixer` reads the per-layer fields, :class:`~mamba_rl.MambaModule` also
    ``num_layers`` and ``norm``. ``dt_min``, ``dt_init_floor``, ``bc_init_scale`` and
    ``start_marker`` left at None take ``preset``'s value (:data:`PRESETS`) when the config is
    made, so a made config holds plain values; ``dataclasses.replace`` re-validates and keeps them.
    A bad value raises ``ValueError`` naming the field, what it must be and what came.
    """

    d_model: int = 64
    """Model width (features in and out of every mixer)."""
    num_layers: int = 1
    """Mixer blocks stacked by :class:`~mamba_rl.MambaModule`."""
    d_state: int = 16
    """SSM state size per channel."""
    d_conv: int = 4
    """Causal conv width (>= 2: the conv state holds ``d_conv - 1`` inputs)."""
    expand: int = 2
    """``d_inner = expand * d_model``."""
    dt_rank: Union[int, Literal["auto"]] = "auto"
    """Rank of the step-size projection; ``"auto"`` is ``ceil(d_model / 16)``."""
    dt_min: Optional[float] = None
    """Smallest initial step size (steps are log-uniform in ``[dt_min, dt_max]``). Small steps
    decay slowly, which long horizons need; values down to 1e-6 are fine. None: the preset's."""
    dt_max: float = 0.1
    """Largest initial step size."""
    dt_init: Literal["random", "constant"] = "random"
    """Init of ``dt_proj.weight``: uniform in ``[-s, s]`` or the constant ``s``,
    ``s = dt_scale / sqrt(dt_rank)``."""
    dt_scale: float = 1.0
    """Scale ``dt_scale`` of that init."""
    dt_init_floor: Optional[float] = None
    """Lower clamp of the initial step sizes, at most ``dt_min``. None: the preset's, lowered to
    ``dt_min`` when ``dt_min`` is below it."""
    bc_init_scale: Optional[float] = None
    """Multiplies the initial rows of ``x_proj`` that produce ``B`` and ``C``. A cue written into
    the SSM state reaches the output scaled by ``dt * |B| * |C|``; at mamba-ssm's init (1) that is
    about 1e-4 of the features, too small for a policy gradient to find under its noise.
    None: the preset's."""
    start_marker: Optional[bool] = None
    """Give ``in_proj`` a bias whose conv-input half is initialised U(-1, 1). Every input to the
    conv then carries this learned offset, except the history a restart begins from: the conv
    window tells the first ``d_conv - 1`` steps of an episode from the rest through the state
    alone, so the SSM's input-dependent gates can write the first observation differently. It is
    read from the state, never from ``is_init`` (which TorchRL's value estimators also set where
    they splice in a stored state). ``bias=True`` adds the bias too, at ``nn.Linear``'s small
    init. None: the preset's."""
    conv_bias: bool = True
    """Bias in the causal conv."""
    bias: bool = False
    """Biases in the in and out projections."""
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    """The pre-norm of every block and the final norm of :class:`~mamba_rl.MambaModule`."""
    preset: Literal["rl", "mamba_ssm"] = "rl"
    """Which set of defaults fills the fields left at None: ``"rl"`` (``dt_min = dt_init_floor =
    1e-4``, ``bc_init_scale=30``, ``start_marker=True``) learns memory tasks from a policy
    gradient; ``"mamba_ssm"`` (``dt_min=1e-3``, ``dt_init_floor=1e-4``, ``bc_init_scale=1``, no
    start marker) is mamba-ssm's exact layout and init, for loading its weights and comparing."""
    backend: Literal["auto", "torch", "triton", "chunked"] = "auto"
    """Scan and conv kernels, see :mod:`mamba_rl.kernels.ops`."""

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {list(PRESETS)}, got {self.preset!r}")
        chosen = PRESETS[self.preset]
        # the field an out-of-range initial step size is blamed on: the one the user set
        floor_from = "dt_init_floor" if self.dt_init_floor is not None else "dt_min"
        for name in ("dt_min", "bc_init_scale", "start_marker"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, chosen[name])
        if self.dt_init_floor is None and isinstance(self.dt_min, (int, float)):
            object.__setattr__(self, "dt_init_floor", min(chosen["dt_init_floor"], self.dt_min))
        _validate(self, floor_from)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def resolved_dt_rank(self) -> int:
        """``dt_rank`` with ``"auto"`` resolved to ``ceil(d_model / 16)``."""
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else self.dt_rank


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_float(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _validate(cfg: MambaConfig, floor_from: str) -> None:
    for name in ("d_model", "num_layers", "d_state", "d_conv", "expand"):
        value = getattr(cfg, name)
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if cfg.d_conv < 2:
        raise ValueError(f"d_conv must be >= 2 (the conv state holds d_conv - 1 inputs), got {cfg.d_conv}")
    if cfg.dt_rank != "auto" and not (_is_int(cfg.dt_rank) and cfg.dt_rank >= 1):
        raise ValueError(f"dt_rank must be a positive int or 'auto', got {cfg.dt_rank!r}")
    if not (_is_float(cfg.dt_min) and cfg.dt_min > 0):
        raise ValueError(f"dt_min must be a positive float, got {cfg.dt_min!r}")
    if not (_is_float(cfg.dt_max) and cfg.dt_max >= cfg.dt_min):
        raise ValueError(f"dt_max must be a finite float >= dt_min={cfg.dt_min}, got {cfg.dt_max!r}")
    if not (_is_float(cfg.dt_scale) and cfg.dt_scale > 0):
        raise ValueError(f"dt_scale must be a finite float > 0, got {cfg.dt_scale!r}")
    if not (_is_float(cfg.dt_init_floor) and 0 < cfg.dt_init_floor <= cfg.dt_min):
        raise ValueError(
            f"dt_init_floor must be in (0, dt_min={cfg.dt_min}] (a larger floor would silently "
            f"raise every initial step size), got {cfg.dt_init_floor!r}"
        )
    if cfg.dt_init not in ("random", "constant"):
        raise ValueError(f"dt_init must be 'random' or 'constant', got {cfg.dt_init!r}")
    if not (_is_float(cfg.bc_init_scale) and cfg.bc_init_scale > 0):
        raise ValueError(f"bc_init_scale must be a finite float > 0, got {cfg.bc_init_scale!r}")
    for name in ("start_marker", "conv_bias", "bias"):
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name} must be a bool, got {getattr(cfg, name)!r}")
    if cfg.norm not in ("rmsnorm", "layernorm"):
        raise ValueError(f"norm must be 'rmsnorm' or 'layernorm', got {cfg.norm!r}")
    if cfg.backend not in ops.BACKENDS:
        raise ValueError(f"backend must be one of {ops.BACKENDS}, got {cfg.backend!r}")
    # the dt_proj bias is the inverse softplus of the initial step sizes: it must be finite in float32
    for name, value in ((floor_from, cfg.dt_init_floor), ("dt_max", cfg.dt_max)):
        dt = torch.tensor(value, dtype=torch.float32)
        if not bool((dt + torch.log(-torch.expm1(-dt))).isfinite()):
            raise ValueError(
                f"{name} must give a finite initial step in float32 (about 1e-44 <= value <= 1e38), "
                f"got {getattr(cfg, name)!r}"
            )


def config_from(config: MambaConfig | None, where: str, defaults: dict | None = None, **options) -> MambaConfig:
    """The :class:`MambaConfig` a constructor was given: ``config``, or one made from the
    ``options`` that are not None (over ``defaults``), never both; ``where`` names the caller."""
    given = {name: value for name, value in options.items() if value is not None}
    unknown = sorted(set(given) - set(MambaConfig.field_names()))
    if unknown:
        raise TypeError(
            f"{where} got unknown option(s) {unknown}; the Mamba options are MambaConfig's fields: "
            f"{', '.join(MambaConfig.field_names())}"
        )
    if config is None:
        return MambaConfig(**{**(defaults or {}), **given})
    if not isinstance(config, MambaConfig):
        raise TypeError(f"config must be a MambaConfig, got {type(config).__name__}")
    if given:
        raise ValueError(
            f"{where}: pass the Mamba options in config or as arguments, not both: got config and {sorted(given)}"
        )
    return config


def _at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision parameters (as mamba-ssm's ``.float()``), float64 kept."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class MambaMixer(nn.Module):
    """Mamba-1 selective SSM block: in_proj -> causal conv -> selective scan (gated) -> out_proj.

    Args:
        d_model: model width (or ``config.d_model``).
        config: a :class:`MambaConfig`; its ``num_layers`` and ``norm`` are the module's, not
            read here.
        **options: instead of ``config``, any :class:`MambaConfig` fields, over the
            ``"mamba_ssm"`` preset: ``MambaMixer(16)`` is mamba-ssm's ``Mamba(d_model=16)``.
        device, dtype: of the parameters.

    Three ways in, one set of parameters:

    - :meth:`forward` ``(x [B, T, d_model], state=None, reset=None [B, T]) -> (y [B, T, d_model], state)``
    - :meth:`step` ``(x [B, d_model], state, reset=None [B], out_state=None) -> (y [B, d_model], state)``:
      pure, or in place with ``out_state=state``; one fused Triton kernel between ``in_proj`` and
      ``out_proj`` when no gradient is needed.
    - :meth:`zero_state` ``(batch_shape) -> MambaState``.

    The state of one layer is a :class:`~mamba_rl.state.MambaState`: ssm ``[*, d_inner,
    d_state]`` (at least float32), conv ``[*, d_inner, d_conv - 1]`` (the parameters' dtype).
    """

    def __init__(
        self, d_model: int | None = None, config: MambaConfig | None = None, *, device=None, dtype=None, **options
    ) -> None:
        super().__init__()
        if config is None and d_model is None:
            raise TypeError("MambaMixer needs d_model or a config")
        if config is not None and d_model is not None and d_model != config.d_model:
            raise ValueError(f"d_model={d_model} differs from config.d_model={config.d_model}: pass one of them")
        config = config_from(
            config, "MambaMixer", {"preset": "mamba_ssm"}, d_model=None if config is not None else d_model, **options
        )
        self.config = config
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model = config.d_model
        self.d_state = d_state = config.d_state
        self.d_conv = d_conv = config.d_conv
        self.expand = config.expand
        self.d_inner = config.d_inner
        self.dt_rank = config.resolved_dt_rank

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=config.bias or config.start_marker, **factory)
        if config.start_marker:
            with torch.no_grad():
                nn.init.uniform_(self.in_proj.bias[: self.d_inner], -1.0, 1.0)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=config.conv_bias,
            **factory,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        if config.bc_init_scale != 1.0:
            with torch.no_grad():
                # rows [dt_rank:] of x_proj produce B and C
                self.x_proj.weight[self.dt_rank :] *= config.bc_init_scale
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        dt_min, dt_max, dt_init_floor = config.dt_min, config.dt_max, config.dt_init_floor
        dt_init_std = self.dt_rank**-0.5 * config.dt_scale
        with torch.no_grad():
            if config.dt_init == "constant":
                nn.init.constant_(self.dt_proj.weight, dt_init_std)
            else:
                nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
            dt = torch.exp(
                torch.rand(self.d_inner, **factory) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            ).clamp(min=dt_init_floor)
            # inverse of softplus, so that softplus(dt_proj.bias) == dt
            inv_dt = dt + torch.log(-torch.expm1(-dt))
            # MambaConfig checks this in float32; half-precision parameters can still overflow
            if not torch.isfinite(inv_dt).all():
                raise ValueError(
                    f"dt_min={dt_min}, dt_max={dt_max}, dt_init_floor={dt_init_floor} give a non-finite "
                    f"initial step size in {self.dt_proj.bias.dtype} (inverse softplus of "
                    f"{dt.min().item():.3g}); raise dt_min and dt_init_floor"
                )
            self.dt_proj.bias.copy_(inv_dt)
        self.dt_proj.bias._no_reinit = True

        # S4D-real initialisation: A[:, i] = -(i + 1)
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=config.bias, **factory)

    @property
    def backend(self) -> str:
        """The scan and conv kernels (``config.backend``); settable."""
        return self.config.backend

    @backend.setter
    def backend(self, value: str) -> None:
        self.config = dataclasses.replace(self.config, backend=value)

    # --- state -------------------------------------------------------------------------------

    def zero_state(self, batch_shape=(), device=None, dtype=None) -> MambaState:
        """A zero state for any batch shape: conv ``[*batch, d_inner, d_conv - 1]``, ssm
        ``[*batch, d_inner, d_state]`` in at least float32."""
        batch_shape = torch.Size(batch_shape)
        device = self.A_log.device if device is None else device
        dtype = self.conv1d.weight.dtype if dtype is None else dtype
        conv = torch.zeros(*batch_shape, self.d_inner, self.d_conv - 1, device=device, dtype=dtype)
        # the SSM state is kept in at least float32 (float64 parameters give a float64 state)
        ssm_dtype = torch.promote_types(self.conv1d.weight.dtype, torch.float32)
        ssm = torch.zeros(*batch_shape, self.d_inner, self.d_state, device=device, dtype=ssm_dtype)
        return MambaState(ssm, conv)

    def _check_state(self, state: MambaState, batch: int) -> None:
        expected_conv = (batch, self.d_inner, self.d_conv - 1)
        expected_ssm = (batch, self.d_inner, self.d_state)
        if tuple(state.conv.shape) != expected_conv:
            raise ValueError(f"conv_state must have shape {list(expected_conv)}, got {list(state.conv.shape)}")
        if tuple(state.ssm.shape) != expected_ssm:
            raise ValueError(f"ssm_state must have shape {list(expected_ssm)}, got {list(state.ssm.shape)}")
        for name, t in (("conv_state", state.conv), ("ssm_state", state.ssm)):
            if not t.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")

    def _check_input(self, x: torch.Tensor, ndim: int, layout: str) -> None:
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != ndim or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape {layout} with d_model={self.d_model}, got {list(x.shape)}")

    # --- shared pieces -----------------------------------------------------------------------

    def _ssm_params(self, x_conv: torch.Tensor):
        """Project the conv output ``[..., d_inner]`` to ``delta [..., d_inner]``, ``B, C [..., n]``."""
        x_dbl = self.x_proj(x_conv)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        # dt_proj's bias is added inside the scan (delta_bias), as in mamba-ssm
        delta = F.linear(dt, self.dt_proj.weight)
        return delta, B, C

    @property
    def A(self) -> torch.Tensor:
        """``[d_inner, d_state]``, ``-exp(A_log)`` in (at least) float32."""
        return -torch.exp(_at_least_fp32(self.A_log))

    # --- sequence ----------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        state: MambaState | None = None,
        reset: torch.Tensor | None = None,
        reset_state: MambaState | None = None,
    ) -> tuple[torch.Tensor, MambaState]:
        """Sequence call.

        Args:
            x: ``[B, T, d_model]``.
            state: state entering ``t = 0`` (zero when None).
            reset: ``[B, T]`` bool; True at ``t``: an episode starts at ``t`` and the state
                entering step ``t`` is the restart state (zero without ``reset_state``),
                whatever came before.
            reset_state: the restart states, gathered at the ``R = reset.sum()`` reset
                positions only (``stored[reset]`` for a per-step ``stored [B, T, ...]``): conv
                ``[R, d_inner, d_conv - 1]``, ssm ``[R, d_inner, d_state]``. None: zeros.
                Gradients flow into it, as into ``state``.

        Returns:
            ``y [B, T, d_model]`` and the state after step ``T - 1``.
        """
        self._check_input(x, 3, "[B, T, d_model]")
        batch, seqlen, _ = x.shape
        if state is not None:
            self._check_state(state, batch)
        if reset is not None and tuple(reset.shape) != (batch, seqlen):
            raise ValueError(f"reset must have shape {[batch, seqlen]}, got {list(reset.shape)}")
        if reset is not None and reset.dtype != torch.bool:
            raise TypeError(f"reset must be a bool tensor, got dtype {reset.dtype}")
        if reset_state is not None and reset is None:
            raise ValueError("reset_state needs reset: it holds the states entering the reset steps")
        conv_state = None if state is None else state.conv
        h0 = None if state is None else state.ssm

        # [B, T, 2 * d_inner] -> [B, d_inner, T] each
        xz = self.in_proj(x).transpose(1, 2)
        x_in, z = xz.chunk(2, dim=1)
        x_conv, conv_last = ops.causal_conv1d(
            x_in,
            self.conv1d.weight.squeeze(1),
            self.conv1d.bias,
            initial_state=conv_state,
            reset=reset,
            activation="silu",
            backend=self.backend,
            reset_state=None if reset_state is None else reset_state.conv,
        )
        delta, B, C = self._ssm_params(x_conv.transpose(1, 2))
        y, h_last = ops.selective_scan(
            x_conv,
            delta.transpose(1, 2),
            self.A,
            B.transpose(1, 2),
            C.transpose(1, 2),
            D=_at_least_fp32(self.D),
            z=z,
            delta_bias=_at_least_fp32(self.dt_proj.bias),
            delta_softplus=True,
            h0=h0,
            reset=reset,
            backend=self.backend,
            reset_state=None if reset_state is None else reset_state.ssm,
        )
        out = self.out_proj(y.transpose(1, 2))
        return out, MambaState(h_last, conv_last)

    # --- single step -------------------------------------------------------------------------

    def step(
        self,
        x: torch.Tensor,
        state: MambaState,
        reset: torch.Tensor | None = None,
        out_state: MambaState | None = None,
    ) -> tuple[torch.Tensor, MambaState]:
        """One step for ``B`` environments; pure by default: ``state`` is not written.

        Args:
            x: ``[B, d_model]``.
            state: the state entering this step.
            reset: ``[B]`` bool; True: the state is taken as zero (an episode starts here).
            out_state: where to write the state after the step (shapes as ``state``; the SSM part
                float32); it may be ``state`` itself, which then steps in place. Returned as the
                new state. In place and a gradient through ``state`` do not mix.

        Without a gradient to compute and with the Triton backend, the step is the fused
        :func:`~mamba_rl.kernels.triton_step.mamba_mixer_step` (one kernel between ``in_proj``
        and ``out_proj``); otherwise the conv step, the projections and the SSM step run one by
        one (differentiable).
        """
        self._check_input(x, 2, "[B, d_model]")
        self._check_state(state, x.shape[0])
        if reset is not None and (tuple(reset.shape) != (x.shape[0],) or reset.dtype != torch.bool):
            raise ValueError(
                f"reset must be a bool tensor of shape [{x.shape[0]}], got {reset.dtype} {list(reset.shape)}"
            )
        if out_state is not None:
            self._check_state(out_state, x.shape[0])
        if self._fused_step_applies(x, state, out_state):
            return self._fused_step(x, state, reset, out_state)
        # [B, d_inner] each
        x_in, z = self.in_proj(x).chunk(2, dim=-1)
        x_conv, conv_new = ops.causal_conv1d_step(
            x_in,
            state.conv,
            self.conv1d.weight.squeeze(1),
            self.conv1d.bias,
            activation="silu",
            reset=reset,
            backend=self.backend,
        )
        delta, B, C = self._ssm_params(x_conv)
        y, ssm_new = ops.selective_state_step(
            state.ssm,
            x_conv,
            delta,
            self.A,
            B,
            C,
            D=_at_least_fp32(self.D),
            z=z,
            delta_bias=_at_least_fp32(self.dt_proj.bias),
            delta_softplus=True,
            reset=reset,
            backend=self.backend,
        )
        if out_state is not None:
            out_state.conv.copy_(conv_new)
            out_state.ssm.copy_(ssm_new)
            ssm_new, conv_new = out_state
        return self.out_proj(y.to(x.dtype)), MambaState(ssm_new, conv_new)

    def _fused_step_applies(self, x: torch.Tensor, state: MambaState, out_state: MambaState | None) -> bool:
        if ops.resolve_backend(self.backend, x.device) != "triton":
            return False
        if torch.is_grad_enabled() and (
            x.requires_grad
            or state.conv.requires_grad
            or state.ssm.requires_grad
            or any(p.requires_grad for p in self.parameters())
        ):
            return False
        from mamba_rl.kernels.triton_step import fused_step_takes_ssm_state as takes

        return takes(state.ssm) and (out_state is None or takes(out_state.ssm))

    def _fused_step(self, x, state, reset, out_state):
        from mamba_rl.kernels.triton_step import mamba_mixer_step

        xz = self.in_proj(x)
        if out_state is None:
            out_state = MambaState(torch.empty_like(state.ssm), torch.empty_like(state.conv))
        y = torch.empty(x.shape[0], self.d_inner, device=x.device, dtype=xz.dtype)
        mamba_mixer_step(
            xz,
            state.conv,
            state.ssm,
            self.conv1d.weight.squeeze(1),
            self.conv1d.bias,
            self.x_proj.weight,
            self.dt_proj.weight,
            self.dt_proj.bias,
            self.A,
            _at_least_fp32(self.D),
            reset,
            y,
            conv_state_out=out_state.conv,
            ssm_state_out=out_state.ssm,
        )
        return self.out_proj(y.to(x.dtype)), out_state
