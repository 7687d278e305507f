"""Readable PyTorch reference implementations: the ground truth every fused kernel is tested against.

Everything here is plain autograd, runs on any device and any float dtype, and computes the
recurrence in at least float32 (float64 inputs stay float64, which gradcheck needs).

Layouts follow mamba-ssm's ``selective_scan_fn`` / ``causal_conv1d_fn`` (channels before time):

- ``u, delta, z``: ``[b, d, L]``;  ``A``: ``[d, n]`` (real);  ``B, C``: ``[b, n, L]``;
  ``D, delta_bias``: ``[d]``;  ``h0`` and the final state: ``[b, d, n]``;
- ``reset``: ``[b, L]`` bool. ``reset[:, t]`` is True where an episode starts at ``t``: the state
  entering step ``t`` (SSM state and conv history alike) is the restart state, whatever came before.
- ``reset_state``: the restart states, gathered at the reset positions only: ``[R, d, n]`` for the
  scan, ``[R, d, w - 1]`` for the conv, where ``R = reset.sum()`` and row ``k`` belongs to the
  ``k``-th True of ``reset`` in row-major ``[b, L]`` order (``reset.nonzero()``'s order, which is
  also ``stored[reset]``'s for a per-step ``stored`` tensor). None means zeros. This is TorchRL's
  recurrent-mode rule: an episode that starts inside a row restarts from the state stored at that
  step. Nothing from before a reset (inputs or states, finite or not) reaches the outputs after it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "selective_scan_ref",
    "selective_state_step_ref",
    "causal_conv1d_ref",
    "causal_conv1d_step_ref",
]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def reset_index(reset: torch.Tensor) -> torch.Tensor:
    """``[b, L]`` int64: at each reset position, its row in a ``reset_state`` tensor (see the module
    docstring); elsewhere the row of the last reset before it (0 before the first one)."""
    return (reset.reshape(-1).long().cumsum(0) - 1).clamp(min=0).view(reset.shape)


def _restart_rows(reset: torch.Tensor | None, reset_state: torch.Tensor | None) -> torch.Tensor | None:
    """The rows of ``reset_state`` to gather at each step (None when every restart is from zero)."""
    if reset is None or reset_state is None or reset_state.shape[0] == 0:
        return None
    return reset_index(reset)


def _discretize_delta(delta, delta_bias, delta_softplus, dtype):
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    h0: torch.Tensor | None = None,
    reset: torch.Tensor | None = None,
    reset_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stateful selective scan, one time step at a time.

    For each step ``t`` (``h`` is ``[b, d, n]``)::

        h = reset_state[k]  (zero if None)      if reset[:, t], its k-th reset
        h = exp(delta_t * A) * h + delta_t * B_t * u_t
        y_t = <h, C_t> + D * u_t,  then  y_t *= silu(z_t)  if z is given

    where ``delta_t`` is ``softplus(delta + delta_bias)`` when ``delta_softplus``.

    Returns:
        ``y`` ``[b, d, L]`` in ``u``'s dtype and the final state ``h_last`` ``[b, d, n]`` in
        float32 (float64 for float64 inputs).
    """
    dtype = _compute_dtype(u.dtype)
    b, d, L = u.shape
    n = A.shape[-1]
    delta = _discretize_delta(delta, delta_bias, delta_softplus, dtype)
    u_c = u.to(dtype)
    A_c = A.to(dtype)
    B_c = B.to(dtype)
    C_c = C.to(dtype)
    h = u_c.new_zeros(b, d, n) if h0 is None else h0.to(dtype)
    rows = _restart_rows(reset, reset_state)
    ys = []
    for t in range(L):
        if reset is not None:
            # [b, d, n]; a select, so that a non-finite state before a reset does not leak past it
            entering = torch.zeros_like(h) if rows is None else reset_state[rows[:, t]].to(dtype)
            h = torch.where(reset[:, t, None, None], entering, h)
        # [b, d, n]
        decay = torch.exp(delta[:, :, t, None] * A_c)
        h = decay * h + (delta[:, :, t] * u_c[:, :, t])[:, :, None] * B_c[:, None, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C_c[:, :, t]))
    # [b, d, L]
    y = torch.stack(ys, dim=-1) if L > 0 else u_c.new_zeros(b, d, 0)
    return _skip_and_gate(y, u_c, D, z, dtype).to(u.dtype), h


def selective_state_step_ref(
    h: torch.Tensor,
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    reset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the selective scan; a pure function (``h`` is never written).

    Shapes: ``h`` ``[b, d, n]``; ``x, delta, z`` ``[b, d]``; ``A`` ``[d, n]``; ``B, C`` ``[b, n]``;
    ``reset`` ``[b]`` bool (True: ``h`` is taken as zero). Returns ``(y [b, d], h_new [b, d, n])``.
    """
    dtype = _compute_dtype(x.dtype)
    y, h_new = selective_scan_ref(
        x[..., None],
        delta[..., None],
        A,
        B[..., None],
        C[..., None],
        D=D,
        z=None if z is None else z[..., None],
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        h0=h.to(dtype),
        reset=None if reset is None else reset[:, None],
    )
    return y[..., 0], h_new


def is_silu(activation: str | None) -> bool:
    """Whether ``activation`` (None, ``"silu"`` or ``"swish"``) asks for a silu after the conv."""
    if activation is None:
        return False
    if activation in ("silu", "swish"):
        return True
    raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")


def _apply_activation(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    return F.silu(y) if is_silu(activation) else y


def _skip_and_gate(y, u, D, z, dtype):
    """``y`` ``[b, d, L]`` plus the skip ``D u``, times ``silu(z)`` (each when given), in ``dtype``."""
    if D is not None:
        y = y + D.to(dtype)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y


def last_reset_times(reset: torch.Tensor, width: int) -> torch.Tensor:
    """``[b, L]``: the time of the last reset at or before each step, ``-2 width`` (before any
    conv window) where there is none yet."""
    t_idx = torch.arange(reset.shape[-1], device=reset.device)
    return torch.cummax(torch.where(reset, t_idx, torch.full_like(t_idx, -2 * width)), dim=-1).values


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    reset: torch.Tensor | None = None,
    activation: str | None = None,
    reset_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution whose history is replaced at resets.

    ``x`` ``[b, d, L]``, ``weight`` ``[d, w]``, ``bias`` ``[d]``, ``initial_state`` ``[b, d, w - 1]``
    (the ``w - 1`` inputs before ``t = 0``, oldest first), ``reset`` ``[b, L]``, ``reset_state``
    ``[R, d, w - 1]`` (the history entering each reset step, oldest first; None: zeros)::

        y_t = act(bias + sum_j weight[:, w - 1 - j] * x_{t - j})

    where ``x_{t - j}`` is the input if no reset lies in ``(t - j, t]``; otherwise, with ``s`` the
    last reset at or before ``t``, it is slot ``t - j - s + w - 1`` of the history entering ``s``
    (zero when that is below 0).

    Returns ``y`` ``[b, d, L]`` and ``final_state`` ``[b, d, w - 1]``: the last ``w - 1`` inputs
    as the same rule sees them, exactly the state that stepping would hold.
    """
    b, d, L = x.shape
    width = weight.shape[-1]
    if initial_state is None:
        initial_state = x.new_zeros(b, d, width - 1)
    # [b, d, w - 1 + L]; position p holds time p - (w - 1)
    x_full = torch.cat([initial_state.to(x.dtype), x], dim=-1)
    # time of the last reset at or before t, or a large negative number: [b, L]
    t_idx = torch.arange(L, device=x.device)
    if reset is None:
        last_reset = torch.full((b, L), -2 * width, device=x.device, dtype=torch.long)
    else:
        last_reset = last_reset_times(reset, width)
    rows = _restart_rows(reset, reset_state) if width > 1 else None
    # the history entering the last reset at or before each t: [b, d, L, w - 1] (None: zeros)
    history = None if rows is None else reset_state.to(x.dtype)[rows].permute(0, 2, 1, 3)

    def seen(times, last, source, restart):
        """The inputs at ``times`` as a step whose last reset is at ``last`` sees them (both
        ``[b, k]``): ``source`` ``[b, d, k]`` where no reset lies between, else the slot of
        ``restart`` ``[b, d, k, w - 1]`` (the history entering ``last``), else zero. Selects, never
        multiplies, so that a non-finite input before a reset does not leak past it."""
        out = torch.where((times >= last)[:, None, :], source, torch.zeros_like(source))
        if restart is None:
            return out
        slot = times - last + (width - 1)
        from_history = (times < last) & (slot >= 0)
        index = slot.clamp(0, width - 2)[:, None, :, None].expand(-1, d, -1, 1)
        return torch.where(from_history[:, None, :], restart.gather(-1, index).squeeze(-1), out)

    y = x.new_zeros(b, d, L)
    for j in range(width):
        # x_{t-j} for all t: [b, d, L]
        shifted = x_full[..., width - 1 - j : width - 1 - j + L]
        times = (t_idx - j)[None, :].expand(b, L)
        y = y + weight[:, width - 1 - j, None] * seen(times, last_reset, shifted, history)
    if bias is not None:
        y = y + bias[:, None]
    y = _apply_activation(y, activation)

    # the final state holds times L - (w - 1) .. L - 1, as the step after the last one sees them
    state_times = torch.arange(L - (width - 1), L, device=x.device)[None, :].expand(b, width - 1)
    last = last_reset[:, -1:] if L > 0 else torch.full((b, 1), -2 * width, device=x.device)
    restart = None if history is None else history[:, :, -1:].expand(-1, -1, width - 1, -1)
    final_state = seen(state_times, last.expand(b, width - 1), x_full[..., L:], restart)
    return y, final_state


def causal_conv1d_step_ref(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    reset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of :func:`causal_conv1d_ref`; a pure function (``conv_state`` is never written).

    ``x`` ``[b, d]``, ``conv_state`` ``[b, d, w - 1]``, ``reset`` ``[b]`` (True: the history is
    taken as zero). Returns ``(y [b, d], new_conv_state [b, d, w - 1])``.
    """
    if reset is not None:
        conv_state = torch.where(reset[:, None, None], torch.zeros_like(conv_state), conv_state)
    # [b, d, w]
    window = torch.cat([conv_state.to(x.dtype), x[..., None]], dim=-1)
    y = (window * weight).sum(-1)
    if bias is not None:
        y = y + bias
    return _apply_activation(y, activation), window[..., 1:]
