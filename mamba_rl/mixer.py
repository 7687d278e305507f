"""The Mamba-1 mixer with an explicit, per-environment recurrent state.

Parameter names, shapes, defaults and initialisation follow ``mamba_ssm.modules.mamba_simple.Mamba``,
so a state dict saved from mamba-ssm loads unchanged. Unlike mamba-ssm's inference cache, the state
is an argument and a return value: nothing is mutated in place unless a step is asked to
(``out_state``), resets can happen inside a sequence, and gradients reach the initial state.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mamba_rl.kernels import ops

__all__ = ["MambaMixer", "MixerState"]


class MixerState(NamedTuple):
    """Recurrent state of one mixer layer.

    Attributes:
        conv: ``[*, d_inner, d_conv - 1]``, the last ``d_conv - 1`` conv inputs (parameter dtype).
        ssm: ``[*, d_inner, d_state]``, the SSM state (float32).
    """

    conv: torch.Tensor
    ssm: torch.Tensor


def _at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision parameters (as mamba-ssm's ``.float()``), float64 kept."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class MambaMixer(nn.Module):
    """Mamba-1 selective SSM block: in_proj -> causal conv -> selective scan (gated) -> out_proj.

    Args:
        d_model: model width.
        d_state: SSM state size per channel (default 16).
        d_conv: causal conv width (default 4).
        expand: ``d_inner = expand * d_model`` (default 2).
        dt_rank: rank of the step-size projection, ``"auto"`` = ``ceil(d_model / 16)``.
        dt_min, dt_max: range of the initial step sizes (log-uniform). Values down to 1e-6 are
            fine: small steps decay slowly, which long horizons need.
        dt_init: ``"random"`` or ``"constant"`` init of ``dt_proj.weight``.
        dt_scale: scale of that init.
        dt_init_floor: lower clamp of the initial step sizes; must not exceed ``dt_min``.
        conv_bias: bias in the conv (default True). bias: biases in in/out projections (default False).
        start_marker: give ``in_proj`` a bias whose conv-input half is initialised U(-1, 1)
            (default False). Every input to the conv then carries this learned offset, except the
            history a restart begins from: the conv window tells the first ``d_conv - 1`` steps
            of an episode from the rest through the state alone, so the SSM's input-dependent
            gates can write the first observation differently. ``bias=True`` adds it too, with
            ``nn.Linear``'s small init.
        bc_init_scale: multiplies the initial rows of ``x_proj`` that produce ``B`` and ``C``
            (default 1). A cue written into the SSM state reaches the output scaled by
            ``dt * |B| * |C|``; at mamba-ssm's init that is about 1e-4 of the features, too small
            for a policy gradient to find under its noise.
        backend: ``"auto" | "torch" | "triton"``, see :mod:`mamba_rl.kernels.ops`.
        device, dtype: of the parameters.

    Three ways in, one set of parameters:

    - :meth:`forward` ``(x [B, T, d_model], state=None, reset=None [B, T]) -> (y [B, T, d_model], state)``
    - :meth:`step` ``(x [B, d_model], state, reset=None [B], out_state=None) -> (y [B, d_model], state)``:
      pure, or in place with ``out_state=state``; one fused Triton kernel between ``in_proj`` and
      ``out_proj`` when no gradient is needed.
    - :meth:`zero_state` ``(batch_shape) -> MixerState``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        start_marker: bool = False,
        bc_init_scale: float = 1.0,
        backend: str = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        _check_positive_int("d_model", d_model)
        _check_positive_int("d_state", d_state)
        _check_positive_int("d_conv", d_conv)
        _check_positive_int("expand", expand)
        if d_conv < 2:
            raise ValueError(f"d_conv must be >= 2 (the conv state holds d_conv - 1 inputs), got {d_conv}")
        if dt_rank != "auto":
            _check_positive_int("dt_rank", dt_rank)
        if not (isinstance(dt_min, (int, float)) and dt_min > 0):
            raise ValueError(f"dt_min must be a positive float, got {dt_min!r}")
        if not (isinstance(dt_max, (int, float)) and math.isfinite(dt_max) and dt_max >= dt_min):
            raise ValueError(f"dt_max must be a finite float >= dt_min={dt_min}, got {dt_max!r}")
        if not (isinstance(dt_scale, (int, float)) and math.isfinite(dt_scale) and dt_scale > 0):
            raise ValueError(f"dt_scale must be a finite float > 0, got {dt_scale!r}")
        if not (isinstance(dt_init_floor, (int, float)) and 0 < dt_init_floor <= dt_min):
            raise ValueError(
                f"dt_init_floor must be in (0, dt_min={dt_min}] (a larger floor would silently "
                f"raise every initial step size), got {dt_init_floor!r}"
            )
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        if not (isinstance(bc_init_scale, (int, float)) and bc_init_scale > 0):
            raise ValueError(f"bc_init_scale must be a positive float, got {bc_init_scale!r}")
        if backend not in ops.BACKENDS:
            raise ValueError(f"backend must be one of {ops.BACKENDS}, got {backend!r}")
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.backend = backend

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias or start_marker, **factory)
        if start_marker:
            with torch.no_grad():
                nn.init.uniform_(self.in_proj.bias[: self.d_inner], -1.0, 1.0)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
            padding=d_conv - 1, bias=conv_bias, **factory,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        if bc_init_scale != 1.0:
            with torch.no_grad():
                # rows [dt_rank:] of x_proj produce B and C
                self.x_proj.weight[self.dt_rank:] *= bc_init_scale
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        dt_init_std = self.dt_rank**-0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                nn.init.constant_(self.dt_proj.weight, dt_init_std)
            else:
                nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
            dt = torch.exp(
                torch.rand(self.d_inner, **factory) * (math.log(dt_max) - math.log(dt_min))
                + math.log(dt_min)
            ).clamp(min=dt_init_floor)
            # inverse of softplus, so that softplus(dt_proj.bias) == dt
            inv_dt = dt + torch.log(-torch.expm1(-dt))
            if not torch.isfinite(inv_dt).all():
                raise ValueError(f"dt_min={dt_min}, dt_max={dt_max}, dt_init_floor={dt_init_floor} give a non-finite "
                                 f"initial step size in {self.dt_proj.bias.dtype} (inverse softplus of "
                                 f"{dt.min().item():.3g}); raise dt_min and dt_init_floor")
            self.dt_proj.bias.copy_(inv_dt)
        self.dt_proj.bias._no_reinit = True

        # S4D-real initialisation: A[:, i] = -(i + 1)
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    # --- state -------------------------------------------------------------------------------

    def zero_state(self, batch_shape=(), device=None, dtype=None) -> MixerState:
        """A zero state for any batch shape: conv ``[*batch, d_inner, d_conv - 1]``, ssm
        ``[*batch, d_inner, d_state]`` in at least float32."""
        batch_shape = torch.Size(batch_shape)
        device = self.A_log.device if device is None else device
        dtype = self.conv1d.weight.dtype if dtype is None else dtype
        conv = torch.zeros(*batch_shape, self.d_inner, self.d_conv - 1, device=device, dtype=dtype)
        # the SSM state is kept in at least float32 (float64 parameters give a float64 state)
        ssm_dtype = torch.promote_types(self.conv1d.weight.dtype, torch.float32)
        ssm = torch.zeros(*batch_shape, self.d_inner, self.d_state, device=device, dtype=ssm_dtype)
        return MixerState(conv, ssm)

    def _check_state(self, state: MixerState, batch: int) -> None:
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
        state: MixerState | None = None,
        reset: torch.Tensor | None = None,
        reset_state: MixerState | None = None,
    ) -> tuple[torch.Tensor, MixerState]:
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
            x_in, self.conv1d.weight.squeeze(1), self.conv1d.bias,
            initial_state=conv_state, reset=reset, activation="silu", backend=self.backend,
            reset_state=None if reset_state is None else reset_state.conv,
        )
        delta, B, C = self._ssm_params(x_conv.transpose(1, 2))
        y, h_last = ops.selective_scan(
            x_conv, delta.transpose(1, 2), self.A, B.transpose(1, 2), C.transpose(1, 2),
            D=_at_least_fp32(self.D), z=z, delta_bias=_at_least_fp32(self.dt_proj.bias), delta_softplus=True,
            h0=h0, reset=reset, backend=self.backend,
            reset_state=None if reset_state is None else reset_state.ssm,
        )
        out = self.out_proj(y.transpose(1, 2))
        return out, MixerState(conv_last, h_last)

    # --- single step -------------------------------------------------------------------------

    def step(
        self,
        x: torch.Tensor,
        state: MixerState,
        reset: torch.Tensor | None = None,
        out_state: MixerState | None = None,
    ) -> tuple[torch.Tensor, MixerState]:
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
            raise ValueError(f"reset must be a bool tensor of shape [{x.shape[0]}], got "
                             f"{reset.dtype} {list(reset.shape)}")
        if out_state is not None:
            self._check_state(out_state, x.shape[0])
        if self._fused_step_applies(x, state, out_state):
            return self._fused_step(x, state, reset, out_state)
        # [B, d_inner] each
        x_in, z = self.in_proj(x).chunk(2, dim=-1)
        x_conv, conv_new = ops.causal_conv1d_step(
            x_in, state.conv, self.conv1d.weight.squeeze(1), self.conv1d.bias,
            activation="silu", reset=reset, backend=self.backend,
        )
        delta, B, C = self._ssm_params(x_conv)
        y, ssm_new = ops.selective_state_step(
            state.ssm, x_conv, delta, self.A, B, C, D=_at_least_fp32(self.D), z=z,
            delta_bias=_at_least_fp32(self.dt_proj.bias), delta_softplus=True, reset=reset,
            backend=self.backend,
        )
        if out_state is not None:
            out_state.conv.copy_(conv_new)
            out_state.ssm.copy_(ssm_new)
            conv_new, ssm_new = out_state
        return self.out_proj(y.to(x.dtype)), MixerState(conv_new, ssm_new)

    def _fused_step_applies(self, x: torch.Tensor, state: MixerState, out_state: MixerState | None) -> bool:
        if ops.resolve_backend(self.backend, x.device) != "triton":
            return False
        if torch.is_grad_enabled() and (x.requires_grad or state.conv.requires_grad or state.ssm.requires_grad
                                        or any(p.requires_grad for p in self.parameters())):
            return False
        from mamba_rl.kernels.triton_step import fused_step_takes_ssm_state as takes

        return takes(state.ssm) and (out_state is None or takes(out_state.ssm))

    def _fused_step(self, x, state, reset, out_state):
        from mamba_rl.kernels.triton_step import mamba_mixer_step

        xz = self.in_proj(x)
        if out_state is None:
            out_state = MixerState(torch.empty_like(state.conv), torch.empty_like(state.ssm))
        y = torch.empty(x.shape[0], self.d_inner, device=x.device, dtype=xz.dtype)
        mamba_mixer_step(
            xz, state.conv, state.ssm, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.x_proj.weight,
            self.dt_proj.weight, self.dt_proj.bias, self.A, _at_least_fp32(self.D), reset, y,
            conv_state_out=out_state.conv, ssm_state_out=out_state.ssm,
        )
        return self.out_proj(y.to(x.dtype)), out_state
