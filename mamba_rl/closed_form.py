"""A one-layer Mamba trunk across a run of identical inputs, in closed form.

When a layer's input is the same ``x`` at every step and its causal conv's window already holds
only that input (``d_conv - 1`` steps of it), everything the selective scan reads is constant
from step to step: the conv output, the step size ``dt``, ``B``, ``C`` and the gate ``z``. Each
SSM state element then follows the linear time-invariant recurrence ``h <- a h + b`` with
``a = exp(dt A)`` and ``b = dt B x``, whose state after ``n`` more steps is

    ``h_n = a^n h_0 + b (1 - a^n) / (1 - a) = exp(n dt A) h_0 + b expm1(n dt A) / expm1(dt A)``

(``h_0 + n b`` where ``dt A`` is exactly 0), and as ``n -> inf`` the fixed point
``-b / expm1(dt A)``. The conv window does not change (it holds the same input). The result is
exact, and differentiable in every parameter and in ``h_0``, at any ``n``.

The memory task's delay is such a run (every blank observation is the same), which is what the
lab's fast-forward (:mod:`mamba_rl.lab.fastforward`) and the trainer's closed-form delay
(:mod:`mamba_rl.training.closed_form`) use. Exact for one Mamba layer only: a later layer of a
stack reads the earlier layer's output, which moves with the earlier layer's decaying state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mamba_rl.kernels import ops
from mamba_rl.state import MambaState

__all__ = ["blank_scan_inputs", "advance_ssm", "skip_constant_steps"]


def blank_scan_inputs(module, x: torch.Tensor, state: MambaState) -> list[dict[str, torch.Tensor]]:
    """Per layer, what the selective scan of ``module.step(x, state)`` reads: ``x`` (conv output)
    ``[B, d_inner]``, ``dt`` (after softplus) ``[B, d_inner]``, ``B``, ``C`` ``[B, d_state]``,
    ``z`` ``[B, d_inner]``, ``dt_a = dt A`` and ``drive = dt B x`` ``[B, d_inner, d_state]``.
    Differentiable."""
    h = module.input_proj(x)
    inputs = []
    for i, block in enumerate(module.layers):
        mixer = block.mixer
        u = block.norm(h)
        x_in, z = mixer.in_proj(u).chunk(2, dim=-1)
        x_conv, _ = ops.causal_conv1d_step(
            x_in,
            state.layer(i).conv,
            mixer.conv1d.weight.squeeze(1),
            mixer.conv1d.bias,
            activation="silu",
            backend="torch",
        )
        delta, B, C = mixer._ssm_params(x_conv)
        dt = F.softplus(delta + mixer.dt_proj.bias)
        dt_a = dt[..., None] * mixer.A
        drive = (dt * x_conv)[..., None] * B[:, None, :]
        inputs.append({"x": x_conv, "dt": dt, "B": B, "C": C, "z": z, "dt_a": dt_a, "drive": drive})
        if i + 1 < len(module.layers):
            y, _ = mixer.step(u, state.layer(i))
            h = h + y
    return inputs


def advance_ssm(ssm: torch.Tensor, dt_a: torch.Tensor, drive: torch.Tensor, steps) -> torch.Tensor:
    """The SSM state after ``steps`` more steps of ``h <- exp(dt_a) h + drive``.

    ``ssm``, ``dt_a``, ``drive``: ``[..., d_inner, d_state]``. ``steps``: a number (``math.inf``:
    the fixed point) or a tensor that broadcasts against them (``[B, 1, 1]`` for a per-row count;
    0 leaves that row's state as it is). Computed in ``ssm``'s dtype; differentiable, with finite
    gradients where ``dt_a`` is exactly 0."""
    if not isinstance(steps, torch.Tensor):
        if steps == 0:
            return ssm.clone()
        if math.isinf(steps):
            return -drive / torch.expm1(dt_a)
    else:
        steps = steps.to(ssm.dtype)
    # dt A == 0 exactly (a step size that underflowed): a = 1 and the drive adds up; the
    # denominator is kept off 0 there, so that the unused branch's gradient stays finite
    held = dt_a == 0
    denominator = torch.where(held, torch.ones_like(dt_a), torch.expm1(dt_a))
    gain = torch.where(held, steps * torch.ones_like(dt_a), torch.expm1(steps * dt_a) / denominator)
    return torch.exp(steps * dt_a) * ssm + gain * drive


def skip_constant_steps(module, x: torch.Tensor, state: MambaState, steps: torch.Tensor) -> MambaState:
    """The state of a one-layer ``module`` after ``steps`` ``[B]`` (ints >= 0) more steps of the
    input ``x`` ``[B, input_size]``, from ``state`` (ssm ``[B, 1, d_inner, d_state]``) whose conv
    window already holds only ``x``'s conv input (``x`` was the input of the last ``d_conv - 1``
    steps, or of every step since a reset). Differentiable.

    Raises:
        ValueError: ``module`` has more than one layer.
    """
    if len(module.layers) != 1:
        raise ValueError(
            f"module must have one Mamba layer for a closed form across constant inputs (a later layer "
            f"reads the earlier layer's moving output), got num_layers={len(module.layers)}"
        )
    inputs = blank_scan_inputs(module, x, state)[0]
    ssm = advance_ssm(state.ssm[:, 0], inputs["dt_a"], inputs["drive"], steps[:, None, None])
    return MambaState(ssm[:, None], state.conv)
