"""Trace a :class:`~mamba_rl.MambaModule`: its outputs and every layer's SSM and conv state over time.

    >>> import torch
    >>> from mamba_rl import MambaModule
    >>> from mamba_rl.lab import trace
    >>> module = MambaModule(input_size=3, hidden_size=8, num_layers=2, in_key="obs", out_key="features")
    >>> x = torch.randn(4, 10, 3)                                  # [B, T, input_size]
    >>> tr = trace(module, x)
    >>> tr.ssm.shape, tr.conv.shape, tr.out.shape                  # [T + 1, B, L, ...], [T, B, d_model]
    (torch.Size([11, 4, 2, 16, 16]), torch.Size([11, 4, 2, 16, 3]), torch.Size([10, 4, 8]))
    >>> out, final = module.sequence(x)
    >>> torch.allclose(tr.out.transpose(0, 1), out, atol=1e-6) and torch.allclose(tr.ssm[-1], final.ssm, atol=1e-6)
    True

Time convention: ``ssm[k]`` is the state after the first ``steps[k]`` steps, the state a
step-by-step rollout holds between step ``steps[k] - 1`` and step ``steps[k]``; ``steps[0] = 0`` is
the initial state and ``t = T`` the final one. A reset at ``t`` zeroes the state on entry to step
``t`` (as in the module), so the trace at ``t`` still shows the state the previous episode left.

Long episodes: ``stride`` keeps every ``stride``-th state and ``window=(start, stop)`` only the
states in ``start .. stop``; the final state (``t = T``) is always kept, the outputs ``[T, ...]``
always whole, and ``storage_device="cpu"`` moves what is kept off the GPU as it goes. The scan is
run chunk by chunk (chunk boundaries at the kept steps, at most ``max_chunk`` steps each) with
the state carried across: :meth:`MambaModule.sequence` with an initial state, equal to one call up
to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from tensordict import TensorDictBase

from mamba_rl.module import MambaModule
from mamba_rl.state import MambaState

__all__ = ["StateTrace", "LayerTrace", "trace", "recorded_steps"]

PATHS = ("sequence", "step")


@dataclass
class LayerTrace:
    """One layer's view of a :class:`StateTrace`.

    Attributes:
        out: ``[T, B, d_model]`` the residual stream after this layer's block.
        ssm: ``[K, B, d_inner, d_state]``.
        conv: ``[K, B, d_inner, d_conv - 1]``.
        steps: ``[K]`` the step of each kept state.
    """

    out: torch.Tensor
    ssm: torch.Tensor
    conv: torch.Tensor
    steps: torch.Tensor


@dataclass
class StateTrace:
    """What :func:`trace` returns; time comes first.

    Attributes:
        steps: ``[K]`` int64, increasing: the kept steps, in ``0 .. T`` (``T`` always included).
        ssm: ``[K, B, num_layers, d_inner, d_state]`` float32, the SSM state after ``steps[k]`` steps.
        conv: ``[K, B, num_layers, d_inner, d_conv - 1]``, the conv state after ``steps[k]`` steps.
        out: ``[T, B, d_model]``, the module's output (its ``out_key``) at every step.
        layer_out: ``[T, B, num_layers, d_model]``, the residual stream after each block.
        reset: ``[T, B]`` bool, the resets that were applied.
    """

    steps: torch.Tensor
    ssm: torch.Tensor
    conv: torch.Tensor
    out: torch.Tensor
    layer_out: torch.Tensor
    reset: torch.Tensor

    @property
    def num_steps(self) -> int:
        """``T``."""
        return self.out.shape[0]

    @property
    def batch_size(self) -> int:
        return self.out.shape[1]

    @property
    def num_layers(self) -> int:
        return self.ssm.shape[2]

    @property
    def final_state(self) -> MambaState:
        """The state after the last step, ``[B, num_layers, ...]``: the module's final state."""
        return MambaState(self.ssm[-1], self.conv[-1])

    def state_at(self, step: int) -> MambaState:
        """The state after ``step`` steps (a kept step), ``[B, num_layers, ...]``."""
        index = (self.steps == step).nonzero()
        if index.numel() == 0:
            raise KeyError(
                f"step {step} was not kept by the trace (kept: stride/window), kept steps "
                f"{self.steps[:5].tolist()}...{self.steps[-3:].tolist()}"
            )
        k = int(index[0, 0])
        return MambaState(self.ssm[k], self.conv[k])

    def layer(self, index: int) -> LayerTrace:
        """Layer ``index``'s outputs and states."""
        if not -self.num_layers <= index < self.num_layers:
            raise IndexError(f"layer must be in 0..{self.num_layers - 1}, got {index}")
        return LayerTrace(self.layer_out[:, :, index], self.ssm[:, :, index], self.conv[:, :, index], self.steps)

    def norms(self) -> dict[str, torch.Tensor]:
        """L2 norm of each layer's state: ``{"ssm": [K, B, L], "conv": [K, B, L]}`` float32."""
        return {
            "ssm": self.ssm.float().flatten(3).norm(dim=-1),
            "conv": self.conv.float().flatten(3).norm(dim=-1),
        }

    def select(self, index) -> StateTrace:
        """The trace of the environments ``index`` (anything that indexes a ``[B]`` dimension)."""
        if isinstance(index, int):
            index = [index]
        return StateTrace(
            self.steps,
            self.ssm[:, index],
            self.conv[:, index],
            self.out[:, index],
            self.layer_out[:, index],
            self.reset[:, index],
        )

    def to(self, device) -> StateTrace:
        return StateTrace(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def recorded_steps(num_steps: int, stride: int = 1, window: tuple[int, int] | None = None) -> list[int]:
    """The steps :func:`trace` keeps: ``range(start, stop + 1, stride)`` and ``num_steps``."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    start, stop = (0, num_steps) if window is None else window
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop):
        raise ValueError(f"window must be (start, stop) with 0 <= start <= stop, got {window!r}")
    kept = set(range(start, min(stop, num_steps) + 1, stride))
    kept.add(num_steps)
    return sorted(kept)


def _layers_sequence(module: MambaModule, x, state: MambaState, reset):
    """:meth:`MambaModule.sequence`, keeping each block's residual stream."""
    h = module.input_proj(x)
    streams, final = [], []
    for i, block in enumerate(module.layers):
        y, layer_state = block.mixer(block.norm(h), state.layer(i), reset)
        h = h + y
        streams.append(h)
        final.append(layer_state)
    # [B, T, L, d_model]
    return module.norm_f(h), torch.stack(streams, 2), MambaState.stack(final)


def _layers_step(module: MambaModule, x, state: MambaState, reset):
    """:meth:`MambaModule.step`, keeping each block's residual stream."""
    h = module.input_proj(x)
    streams, final = [], []
    for i, block in enumerate(module.layers):
        y, layer_state = block.mixer.step(block.norm(h), state.layer(i), reset)
        h = h + y
        streams.append(h)
        final.append(layer_state)
    return module.norm_f(h), torch.stack(streams, 1), MambaState.stack(final)


def _inputs_from_tensordict(module: MambaModule, td: TensorDictBase):
    """``(x [B, T, F], reset [B, T], state at t = 0 or None)``, read as recurrent mode reads them:
    each row enters ``t = 0`` from the state stored there (is_init or not), and restarts at later
    is_init steps from the state stored there, which the trace supports when it is zero."""
    if td.batch_dims not in (1, 2):
        raise ValueError(f"td must have batch_size [T] or [B, T], got {list(td.batch_size)}")
    rows = td.unsqueeze(0) if td.batch_dims == 1 else td
    x = rows.get(module.in_keys[0])
    is_init = rows.get(module.in_keys[3], None)
    reset = None if is_init is None else is_init.reshape(rows.batch_size).clone()
    ssm, conv = rows.get(module.ssm_key, None), rows.get(module.conv_key, None)
    state = None
    if ssm is not None or conv is not None:
        if reset is not None:
            later = reset.clone()
            later[:, 0] = False
            if any(stored is not None and bool(stored[later].any()) for stored in (ssm, conv)):
                raise ValueError(
                    "trace restarts from zero at is_init steps after t = 0, and this TensorDict "
                    "stores non-zero states there (recurrent mode restarts from them): trace "
                    "the rows cut at those steps"
                )
            # the stored state enters t = 0 whether or not an episode starts there
            reset[:, 0] = False
        zero = module.zero_state(rows.batch_size[:1], x.device)
        state = MambaState(zero.ssm if ssm is None else ssm[:, 0], zero.conv if conv is None else conv[:, 0])
    return x, reset, state


@torch.no_grad()
def trace(
    module,
    inputs: torch.Tensor | TensorDictBase,
    *,
    reset: torch.Tensor | None = None,
    state: MambaState | None = None,
    stride: int = 1,
    window: tuple[int, int] | None = None,
    path: str = "sequence",
    max_chunk: int = 1024,
    storage_device=None,
) -> StateTrace:
    """Run ``module`` over a ``[B, T]`` input and keep its outputs and per-layer states.

    Args:
        module: a :class:`~mamba_rl.MambaModule` (or anything :func:`~mamba_rl.lab.as_state_policy`
            accepts: an ``ActorCritic`` with a Mamba trunk traces its actor trunk).
        inputs: ``x`` ``[B, T, input_size]`` (``[T, input_size]`` is one row), or a TensorDict
            ``[B, T]`` / ``[T]`` holding the module's ``in_key``, ``is_init`` and, optionally, the
            state entering ``t = 0`` at ``[..., 0]`` (read exactly as recurrent mode reads it).
        reset: ``[B, T]`` bool, True where an episode starts (tensor inputs only; default none).
        state: the state entering ``t = 0`` (tensor inputs only; default zero).
        stride, window: keep the states at ``range(start, stop + 1, stride)`` and at ``T``.
        path: ``"sequence"`` (the scan with an initial state, chunk by chunk) or ``"step"``
            (:meth:`MambaModule.step` at every step, the path a rollout takes).
        max_chunk: longest piece handed to the scan at once (bounds its working memory).
        storage_device: where the kept tensors go (default: the inputs' device).

    Returns:
        A :class:`StateTrace`. The module is not changed; its parameters get no gradient.
    """
    from mamba_rl.lab.policy import as_state_policy

    module = as_state_policy(module).module
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if isinstance(max_chunk, bool) or not isinstance(max_chunk, int) or max_chunk < 1:
        raise ValueError(f"max_chunk must be an int >= 1, got {max_chunk!r}")
    if isinstance(inputs, TensorDictBase):
        if reset is not None or state is not None:
            raise ValueError("with a TensorDict input, reset and state come from its is_init and state entries")
        x, reset, state = _inputs_from_tensordict(module, inputs)
    else:
        x = inputs.unsqueeze(0) if inputs.dim() == 2 else inputs
        if reset is not None and reset.dim() == 1 and inputs.dim() == 2:
            reset = reset.unsqueeze(0)
    if x.dim() != 3:
        raise ValueError(f"inputs must have shape [B, T, input_size] or [T, input_size], got {list(inputs.shape)}")
    batch, num_steps, _ = x.shape
    if num_steps < 1:
        raise ValueError("inputs must hold at least one step (T >= 1)")
    if reset is None:
        reset = torch.zeros(batch, num_steps, dtype=torch.bool, device=x.device)
    if tuple(reset.shape) != (batch, num_steps) or reset.dtype != torch.bool:
        raise ValueError(
            f"reset must be a bool tensor of shape {[batch, num_steps]}, got {reset.dtype} {list(reset.shape)}"
        )
    state = module.zero_state((batch,), x.device) if state is None else state
    module._check_state(state, batch)
    storage_device = x.device if storage_device is None else torch.device(storage_device)
    kept = recorded_steps(num_steps, stride, window)

    def store(tensor):
        return tensor.detach().to(storage_device, copy=True)

    ssm, conv, outs, streams = [], [], [], []
    if kept[0] == 0:
        ssm.append(store(state.ssm))
        conv.append(store(state.conv))
    keep = set(kept)
    t = 0
    while t < num_steps:
        if path == "step":
            stop = t + 1
            out, stream, state = _layers_step(module, x[:, t], state, reset[:, t])
            out, stream = out.unsqueeze(1), stream.unsqueeze(1)
        else:
            next_kept = next(s for s in kept if s > t)
            stop = min(next_kept, t + max_chunk)
            out, stream, state = _layers_sequence(module, x[:, t:stop], state, reset[:, t:stop])
        # [T_chunk, B, ...]
        outs.append(store(out.transpose(0, 1)))
        streams.append(store(stream.transpose(0, 1)))
        if stop in keep:
            ssm.append(store(state.ssm))
            conv.append(store(state.conv))
        t = stop
    return StateTrace(
        steps=torch.tensor(kept, dtype=torch.int64, device=storage_device),
        ssm=torch.stack(ssm),
        conv=torch.stack(conv),
        out=torch.cat(outs),
        layer_out=torch.cat(streams),
        reset=reset.transpose(0, 1).to(storage_device, copy=True),
    )
