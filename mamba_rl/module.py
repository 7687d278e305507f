"""``MambaModule``: a stack of Mamba mixers as a TorchRL recurrent module, used like ``GRUModule``."""

from __future__ import annotations

from typing import NamedTuple

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase, dispatch
from tensordict.utils import NestedKey
from torch import nn
from torchrl.modules.tensordict_module.rnn import recurrent_mode as _recurrent_mode

from mamba_rl.mixer import MambaMixer, MixerState

__all__ = ["MambaModule", "MambaState"]


class MambaState(NamedTuple):
    """The recurrent state of every layer, stacked.

    Attributes:
        ssm: ``[*, num_layers, d_inner, d_state]`` float32.
        conv: ``[*, num_layers, d_inner, d_conv - 1]`` in the parameters' dtype.
    """

    ssm: torch.Tensor
    conv: torch.Tensor


class _Block(nn.Module):
    """Pre-norm residual block: ``h + mixer(norm(h))``."""

    def __init__(self, d_model: int, norm: str, mixer_kwargs: dict, factory: dict) -> None:
        super().__init__()
        self.norm = _make_norm(norm, d_model, factory)
        self.mixer = MambaMixer(d_model, **mixer_kwargs, **factory)


def _make_norm(norm: str, d_model: int, factory: dict) -> nn.Module:
    if norm == "rmsnorm":
        return nn.RMSNorm(d_model, eps=1e-5, **factory)
    if norm == "layernorm":
        return nn.LayerNorm(d_model, eps=1e-5, **factory)
    raise ValueError(f"norm must be 'rmsnorm' or 'layernorm', got {norm!r}")


class MambaModule(TensorDictModuleBase):
    """A Mamba-1 stack as a recurrent TorchRL module, a drop-in for :class:`~torchrl.modules.GRUModule`.

    Layers: ``Linear(input_size, d_model)``, then ``num_layers`` x (norm, :class:`MambaMixer`,
    residual), then a final norm. Every environment's SSM and conv state live in the TensorDict.

    Args:
        input_size: feature size of ``in_key``.
        d_model: model width (output feature size).
        num_layers: number of mixer blocks (default 1).
        d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init, dt_scale, dt_init_floor,
            conv_bias, bias: mixer options, see :class:`MambaMixer` (mamba-ssm's defaults).
        norm: ``"rmsnorm"`` (default) or ``"layernorm"``.
        in_key / in_keys: the input key, or all four in-keys
            ``[in_key, ssm_key, conv_key, is_init_key]``.
        out_key / out_keys: the output key, or all three out-keys
            ``[out_key, ("next", ssm_key), ("next", conv_key)]``.
        backend: ``"auto" | "torch" | "triton"`` for the scan and conv kernels.
        device, dtype: of the parameters (the SSM state is float32 whatever the dtype).

    Keys (defaults):
        in: ``in_key`` ``[*, input_size]``; ``"recurrent_state_ssm"`` ``[*, num_layers, d_inner,
        d_state]``; ``"recurrent_state_conv"`` ``[*, num_layers, d_inner, d_conv - 1]``;
        ``"is_init"`` ``[*, 1]`` bool. A missing state entry means a zero state; ``is_init`` is
        required (add ``InitTracker`` to the env or ``auto_register_policy_transforms=True``).

        out: ``out_key`` ``[*, d_model]``; ``("next", "recurrent_state_ssm")`` and
        ``("next", "recurrent_state_conv")``.

    Modes:
        - Outside recurrent mode (rollouts): every element of the TensorDict, whatever its batch
          shape, is one step of one environment. The state is zeroed where ``is_init`` and the
          state after the step is written under ``"next"``.
        - Inside ``torchrl.modules.set_recurrent_mode(True)`` (training): the TensorDict is
          ``[*, T]`` (a 1-d TensorDict is one trajectory). The state entering ``t = 0`` is read
          from ``[..., 0]`` (zero where ``is_init``); inside each row the state resets to zero at
          every ``is_init``; rows are never split or padded. Only ``out_key`` ``[*, T, d_model]``
          is written: nothing is written under ``"next"`` in this mode, because per-step SSM
          states would be ``d_state`` times the activations. Use :meth:`sequence` to get the
          state after the last step.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.modules import set_recurrent_mode
        >>> from mamba_rl import MambaModule
        >>> module = MambaModule(input_size=3, d_model=8, in_key="observation", out_key="embed")
        >>> td = TensorDict({"observation": torch.randn(4, 3),
        ...                  "is_init": torch.ones(4, 1, dtype=torch.bool)}, batch_size=[4])
        >>> module(td)["embed"].shape, td["next", "recurrent_state_ssm"].shape
        (torch.Size([4, 8]), torch.Size([4, 1, 16, 16]))
        >>> seq = TensorDict({"observation": torch.randn(4, 10, 3),
        ...                   "is_init": torch.zeros(4, 10, 1, dtype=torch.bool)}, batch_size=[4, 10])
        >>> with set_recurrent_mode(True):
        ...     module(seq)["embed"].shape
        torch.Size([4, 10, 8])
    """

    def __init__(
        self,
        input_size: int,
        d_model: int,
        num_layers: int = 1,
        *,
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
        norm: str = "rmsnorm",
        in_key: NestedKey | None = None,
        in_keys: list[NestedKey] | None = None,
        out_key: NestedKey | None = None,
        out_keys: list[NestedKey] | None = None,
        backend: str = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("d_model", d_model), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_keys, self.out_keys = _resolve_keys(in_key, in_keys, out_key, out_keys)
        factory = {"device": device, "dtype": dtype}
        mixer_kwargs = dict(
            d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank, dt_min=dt_min,
            dt_max=dt_max, dt_init=dt_init, dt_scale=dt_scale, dt_init_floor=dt_init_floor,
            conv_bias=conv_bias, bias=bias, backend=backend,
        )
        self.input_size = input_size
        self.d_model = d_model
        self.num_layers = num_layers
        self.input_proj = nn.Linear(input_size, d_model, **factory)
        self.layers = nn.ModuleList(_Block(d_model, norm, mixer_kwargs, factory) for _ in range(num_layers))
        self.norm_f = _make_norm(norm, d_model, factory)
        mixer = self.layers[0].mixer
        self.d_inner, self.d_state, self.d_conv = mixer.d_inner, mixer.d_state, mixer.d_conv

    # --- configuration -----------------------------------------------------------------------

    @property
    def backend(self) -> str:
        return self.layers[0].mixer.backend

    @backend.setter
    def backend(self, value: str) -> None:
        value = _validated_backend(value)
        for block in self.layers:
            block.mixer.backend = value

    @property
    def ssm_key(self) -> NestedKey:
        return self.in_keys[1]

    @property
    def conv_key(self) -> NestedKey:
        return self.in_keys[2]

    @property
    def state_shapes(self) -> dict[NestedKey, torch.Size]:
        """Per-environment shape of each state entry."""
        return {
            self.ssm_key: torch.Size([self.num_layers, self.d_inner, self.d_state]),
            self.conv_key: torch.Size([self.num_layers, self.d_inner, self.d_conv - 1]),
        }

    def zero_state(self, batch_shape=(), device=None) -> MambaState:
        """Zero state for ``batch_shape`` environments."""
        param = self.input_proj.weight
        device = param.device if device is None else device
        batch_shape = torch.Size(batch_shape)
        ssm = torch.zeros(*batch_shape, *self.state_shapes[self.ssm_key], device=device)
        conv = torch.zeros(*batch_shape, *self.state_shapes[self.conv_key], device=device, dtype=param.dtype)
        return MambaState(ssm, conv)

    def make_tensordict_primer(self):
        """A ``TensorDictPrimer`` that registers both state entries in the env's specs (zeros)."""
        from torchrl.data import Unbounded
        from torchrl.envs import TensorDictPrimer

        dtype = self.input_proj.weight.dtype
        return TensorDictPrimer(
            {
                self.ssm_key: Unbounded(shape=self.state_shapes[self.ssm_key], dtype=torch.float32),
                self.conv_key: Unbounded(shape=self.state_shapes[self.conv_key], dtype=dtype),
            },
            expand_specs=True,
        )

    # --- tensor-level API ----------------------------------------------------------------------

    def _check_x(self, x: torch.Tensor, ndim: int) -> None:
        if not x.is_floating_point():
            raise TypeError(f"{self.in_keys[0]!r} must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != ndim or x.shape[-1] != self.input_size:
            layout = "[B, input_size]" if ndim == 2 else "[B, T, input_size]"
            raise ValueError(
                f"{self.in_keys[0]!r} must have shape {layout} with input_size={self.input_size}, "
                f"got {list(x.shape)}"
            )

    def _check_state(self, state: MambaState, batch: int) -> None:
        for key, tensor in ((self.ssm_key, state.ssm), (self.conv_key, state.conv)):
            expected = (batch, *self.state_shapes[key])
            if tuple(tensor.shape) != expected:
                raise ValueError(f"{key!r} must have shape {list(expected)}, got {list(tensor.shape)}")
            if not tensor.is_floating_point():
                raise TypeError(f"{key!r} must be a floating-point tensor, got dtype {tensor.dtype}")

    def step(
        self,
        x: torch.Tensor,
        state: MambaState | None = None,
        reset: torch.Tensor | None = None,
        out_state: MambaState | None = None,
    ) -> tuple[torch.Tensor, MambaState]:
        """One step for ``B`` environments, pure by default (``state`` is not written).

        ``x`` ``[B, input_size]``, ``reset`` ``[B]`` bool (True: state taken as zero).
        ``out_state``: where to write the state after the step (shaped as ``state``); it may be
        ``state`` itself, which then steps in place (no gradient through it then). Without a
        gradient to compute, each layer's step on the Triton backend is two fused kernels
        (:meth:`MambaMixer.step`). Returns ``(out [B, d_model], state after the step)``.
        """
        self._check_x(x, 2)
        state = self.zero_state((x.shape[0],), x.device) if state is None else state
        self._check_state(state, x.shape[0])
        if out_state is not None:
            self._check_state(out_state, x.shape[0])
        h = self.input_proj(x)
        ssm, conv = [], []
        for i, block in enumerate(self.layers):
            # out_state only when asked for, so that MambaMixer.step(x, state, reset) overrides still work
            layer_out = {} if out_state is None else {"out_state": MixerState(out_state.conv[:, i], out_state.ssm[:, i])}
            y, layer_state = block.mixer.step(block.norm(h), MixerState(state.conv[:, i], state.ssm[:, i]), reset,
                                              **layer_out)
            h = h + y
            ssm.append(layer_state.ssm)
            conv.append(layer_state.conv)
        if out_state is None:
            # one layer: a view, not a copy
            out_state = MambaState(*(t[0].unsqueeze(1) if len(t) == 1 else torch.stack(t, 1) for t in (ssm, conv)))
        return self.norm_f(h), out_state

    def sequence(
        self, x: torch.Tensor, state: MambaState | None = None, reset: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, MambaState]:
        """A whole sequence: ``x`` ``[B, T, input_size]``, ``reset`` ``[B, T]`` bool.

        ``state`` enters ``t = 0`` (zero when None); ``reset[:, t]`` zeroes the state entering
        ``t``. Returns ``(out [B, T, d_model], state after step T - 1)``; differentiable in
        ``state``.
        """
        self._check_x(x, 3)
        if state is not None:
            self._check_state(state, x.shape[0])
        h = self.input_proj(x)
        ssm, conv = [], []
        for i, block in enumerate(self.layers):
            layer_state = None if state is None else MixerState(state.conv[:, i], state.ssm[:, i])
            y, layer_state = block.mixer(block.norm(h), layer_state, reset)
            h = h + y
            ssm.append(layer_state.ssm)
            conv.append(layer_state.conv)
        return self.norm_f(h), MambaState(torch.stack(ssm, 1), torch.stack(conv, 1))

    # --- TensorDict API ------------------------------------------------------------------------

    @property
    def recurrent_mode(self) -> bool:
        return bool(_recurrent_mode())

    def _read_state(self, td: TensorDictBase, batch: int, device) -> MambaState | None:
        ssm = td.get(self.ssm_key, None)
        conv = td.get(self.conv_key, None)
        if ssm is None and conv is None:
            return None
        zero = self.zero_state((batch,), device)
        ssm = zero.ssm if ssm is None else ssm.reshape(batch, *ssm.shape[td.batch_dims:])
        conv = zero.conv if conv is None else conv.reshape(batch, *conv.shape[td.batch_dims:])
        state = MambaState(ssm, conv)
        self._check_state(state, batch)
        return state

    def _read_is_init(self, td: TensorDictBase) -> torch.Tensor:
        key = self.in_keys[3]
        is_init = td.get(key, None)
        if is_init is None:
            raise KeyError(
                f"{key!r} is missing from the input TensorDict: wrap the env with "
                "torchrl.envs.InitTracker() or build the Collector with auto_register_policy_transforms=True"
            )
        if is_init.dtype != torch.bool:
            raise TypeError(f"{key!r} must be a bool tensor, got dtype {is_init.dtype}")
        if is_init.shape != (*td.batch_size, 1):
            raise ValueError(f"{key!r} must have shape {[*td.batch_size, 1]}, got {list(is_init.shape)}")
        return is_init.squeeze(-1)

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self.recurrent_mode:
            return self._forward_sequence(tensordict)
        return self._forward_step(tensordict)

    def _forward_step(self, td: TensorDictBase) -> TensorDictBase:
        shape = td.batch_size
        x = td.get(self.in_keys[0])
        flat = td.reshape(-1) if td.batch_dims != 1 else td
        batch = flat.batch_size[0]
        if x.shape[: td.batch_dims] != shape:
            raise ValueError(f"{self.in_keys[0]!r} must start with the batch shape {list(shape)}, got {list(x.shape)}")
        x = x.reshape(batch, *x.shape[td.batch_dims:])
        reset = self._read_is_init(td).reshape(batch)
        state = self._read_state(td, batch, x.device)
        out, new_state = self.step(x, state, reset)
        td.set(self.out_keys[0], out.reshape(*shape, self.d_model))
        td.set(self.out_keys[1], new_state.ssm.reshape(*shape, *new_state.ssm.shape[1:]))
        td.set(self.out_keys[2], new_state.conv.reshape(*shape, *new_state.conv.shape[1:]))
        return td

    def _forward_sequence(self, td: TensorDictBase) -> TensorDictBase:
        if td.batch_dims == 0:
            raise ValueError("in recurrent mode the TensorDict needs a time dimension, got batch_size=[]")
        shape = td.batch_size
        rows = td.unsqueeze(0) if td.batch_dims == 1 else td.reshape(-1, shape[-1])
        batch, steps = rows.batch_size
        x = rows.get(self.in_keys[0])
        reset = self._read_is_init(rows)
        state = self._read_state(rows[:, 0], batch, x.device)
        out, _ = self.sequence(x, state, reset)
        td.set(self.out_keys[0], out.reshape(*shape, self.d_model))
        return td


def _validated_backend(value: str) -> str:
    from mamba_rl.kernels.ops import BACKENDS

    if value not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {value!r}")
    return value


def _resolve_keys(in_key, in_keys, out_key, out_keys):
    if in_key is not None and in_keys is not None:
        raise ValueError("pass in_key or in_keys, not both")
    if out_key is not None and out_keys is not None:
        raise ValueError("pass out_key or out_keys, not both")
    if in_keys is None:
        in_keys = [in_key if in_key is not None else "embed", "recurrent_state_ssm", "recurrent_state_conv", "is_init"]
    if out_keys is None:
        out_keys = [out_key if out_key is not None else "features", ("next", in_keys[1]), ("next", in_keys[2])]
    in_keys, out_keys = list(in_keys), list(out_keys)
    if len(in_keys) != 4:
        raise ValueError(f"in_keys must be [in_key, ssm_key, conv_key, is_init_key], got {in_keys}")
    if len(out_keys) != 3:
        raise ValueError(f"out_keys must be [out_key, ('next', ssm_key), ('next', conv_key)], got {out_keys}")

    def as_tuple(key):
        return key if isinstance(key, tuple) else (key,)

    for state_key, next_key in zip(in_keys[1:3], out_keys[1:3]):
        if as_tuple(next_key) != ("next", *as_tuple(state_key)):
            raise ValueError(
                f"out_keys must name the state entries as ('next', <in state key>): expected "
                f"{('next', *as_tuple(state_key))}, got {next_key!r}"
            )
    return in_keys, out_keys
