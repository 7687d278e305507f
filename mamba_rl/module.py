"""``MambaModule``: a stack of Mamba mixers as a TorchRL recurrent module, used like ``GRUModule``."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase, dispatch
from tensordict.utils import NestedKey, unravel_key_list
from torch import nn
from torchrl.modules.tensordict_module.rnn import recurrent_mode as _recurrent_mode

from mamba_rl.mixer import PRESETS, MambaConfig, MambaMixer, config_from
from mamba_rl.state import MambaState

__all__ = ["MambaModule", "MambaConfig", "MambaState", "PRESETS"]


class _Block(nn.Module):
    """Pre-norm residual block: ``h + mixer(norm(h))``."""

    def __init__(self, config: MambaConfig, factory: dict) -> None:
        super().__init__()
        self.norm = _make_norm(config.norm, config.d_model, factory)
        self.mixer = MambaMixer(config=config, **factory)


def _make_norm(norm: str, d_model: int, factory: dict) -> nn.Module:
    if norm == "rmsnorm":
        return nn.RMSNorm(d_model, eps=1e-5, **factory)
    return nn.LayerNorm(d_model, eps=1e-5, **factory)


# GRUModule arguments with no Mamba meaning, and what to use instead
_UNSUPPORTED = {
    "dropout": (0, "MambaModule has no dropout between layers; put a dropout module on its output key"),
    "bidirectional": (False, "a recurrent policy is causal: MambaModule runs forward in time only"),
    "python_based": (False, "MambaModule's plain-PyTorch path is backend='torch'"),
    "recurrent_backend": (
        None,
        "use backend='auto' | 'torch' | 'triton': MambaModule never splits or pads rows, resets run inside its scan",
    ),
    "batch_first": (
        True,
        "MambaModule's TensorDicts put time last in the batch shape, as GRUModule's with batch_first=True",
    ),
}


class MambaModule(TensorDictModuleBase):
    """A Mamba-1 stack as a recurrent TorchRL module, a drop-in for :class:`~torchrl.modules.GRUModule`.

    Layers: ``Linear(input_size, hidden_size)``, then ``num_layers`` x (norm, :class:`MambaMixer`,
    residual), then a final norm. Every environment's SSM and conv state live in the TensorDict.

    Args:
        input_size: feature size of ``in_key``.
        hidden_size: output feature size (the model width, ``d_model``; that name is accepted too).
        num_layers: number of mixer blocks (default 1).
        bias: biases in the mixers' in/out projections (default False, as mamba-ssm).
        config: a :class:`~mamba_rl.mixer.MambaConfig` with every Mamba option; then none of them
            is passed as an argument (``hidden_size``, when given, must equal ``config.d_model``).
        **options: instead of ``config``, any of its fields (``d_state``, ``expand``, ``dt_min``,
            ``norm``, ``backend``...: see :class:`~mamba_rl.mixer.MambaConfig`), with its defaults.
            ``preset`` (``"rl"``, the default, or ``"mamba_ssm"``) picks the values of
            ``dt_min``, ``dt_init_floor``, ``bc_init_scale`` and ``start_marker`` left unset:
            ``"mamba_ssm"`` is mamba-ssm's exact layout and init (for loading its weights and
            comparing); ``"rl"`` is what learns memory tasks from a policy gradient:
            ``start_marker=True``, ``bc_init_scale=30``, ``dt_min=dt_init_floor=1e-4``. The start
            marker is a learned offset on every conv input, absent from the history a restart
            begins from, so that the first steps of an episode look different to the SSM's gates.
        in_key / in_keys: as GRUModule, one of them is required. ``in_key`` gives
            ``[in_key, "recurrent_state_ssm", "recurrent_state_conv", "is_init"]``; ``in_keys`` is
            ``[in_key, ssm_key, conv_key]`` (``"is_init"`` appended) or with the is-init key last.
        out_key / out_keys: one of them is required. ``out_key`` gives ``[out_key, ("next",
            "recurrent_state_ssm"), ("next", "recurrent_state_conv")]``; ``out_keys`` names the
            states as ``("next", <in state key>)``.
        default_recurrent_mode: the mode outside any ``set_recurrent_mode`` context (default False).
        write_next_state: in recurrent mode also write ``("next", state)`` at every step (default
            False: per-step SSM states take ``d_state`` times the memory of the activations).
        device, dtype: of the parameters. The SSM state is kept in at least float32 (float64
            parameters, float64 state); the conv state is in the parameters' dtype.

    GRUModule's ``dropout``, ``bidirectional``, ``python_based``, ``recurrent_backend`` and
    ``batch_first=False`` raise an error that says what to use instead.

    Keys (with ``in_key``/``out_key``):
        in: ``in_key`` ``[*, input_size]``; ``"recurrent_state_ssm"`` ``[*, num_layers, d_inner,
        d_state]``; ``"recurrent_state_conv"`` ``[*, num_layers, d_inner, d_conv - 1]``;
        ``"is_init"`` ``[*, 1]`` bool. A missing state entry means a zero state; ``is_init`` is
        required (add ``InitTracker`` to the env or ``auto_register_policy_transforms=True``).

        out: ``out_key`` ``[*, hidden_size]``; ``("next", "recurrent_state_ssm")`` and
        ``("next", "recurrent_state_conv")``.

    Modes (as GRUModule):
        - Outside recurrent mode (rollouts): every element of the TensorDict, whatever its batch
          shape, is one step of one environment. The state is zeroed where ``is_init`` and the
          state after the step is written under ``"next"``.
        - Inside ``torchrl.modules.set_recurrent_mode(True)`` (training): the TensorDict is
          ``[*, T]`` (a 1-d TensorDict is one trajectory). The state entering ``t = 0`` is the one
          stored at ``[..., 0]``; at every later ``is_init`` step the state restarts from the one
          stored at that step (zero where the TensorDict holds none): for collected data that is
          the reset state, and TorchRL's GAE relies on it to evaluate the ``"next"`` TensorDict.
          Nothing from before such a step reaches the outputs after it. Rows are never split or
          padded. ``out_key`` ``[*, T, hidden_size]`` is written, and the per-step states under
          ``"next"`` only with ``write_next_state=True``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.modules import set_recurrent_mode
        >>> from mamba_rl import MambaModule
        >>> module = MambaModule(input_size=3, hidden_size=8, in_key="observation", out_key="embed")
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
        hidden_size: int | None = None,
        num_layers: int | None = None,
        bias: bool | None = None,
        batch_first: bool = True,
        dropout: float = 0,
        bidirectional: bool = False,
        python_based: bool = False,
        recurrent_backend: str | None = None,
        *,
        config: MambaConfig | None = None,
        in_key: NestedKey | None = None,
        in_keys: list[NestedKey] | None = None,
        out_key: NestedKey | None = None,
        out_keys: list[NestedKey] | None = None,
        default_recurrent_mode: bool | None = None,
        write_next_state: bool = False,
        device=None,
        dtype=None,
        **options,
    ) -> None:
        super().__init__()
        given = {
            "batch_first": batch_first,
            "dropout": dropout,
            "bidirectional": bidirectional,
            "python_based": python_based,
            "recurrent_backend": recurrent_backend,
        }
        for name, value in given.items():
            default, instead = _UNSUPPORTED[name]
            if value != default:
                raise ValueError(f"{name}={value!r} is a GRUModule option MambaModule does not have: {instead}")
        d_model = options.pop("d_model", None)
        if hidden_size is not None and d_model is not None:
            raise ValueError(f"pass hidden_size or d_model (the same width), not both: got {hidden_size} and {d_model}")
        hidden_size = d_model if hidden_size is None else hidden_size
        if config is not None and hidden_size is not None:
            if hidden_size != config.d_model:
                raise ValueError(f"hidden_size={hidden_size} differs from config.d_model={config.d_model}: pass one")
            hidden_size = None
        elif config is None and hidden_size is None:
            raise ValueError("hidden_size must be a positive int, got None (pass hidden_size, d_model or a config)")
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
            raise ValueError(f"input_size must be a positive int, got {input_size!r}")
        config = config_from(config, "MambaModule", d_model=hidden_size, num_layers=num_layers, bias=bias, **options)
        self.in_keys, self.out_keys = _resolve_keys(in_key, in_keys, out_key, out_keys)
        self.config = config
        self.write_next_state = bool(write_next_state)
        self._recurrent_mode = default_recurrent_mode
        factory = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.d_model = config.d_model
        self.num_layers = config.num_layers
        self.input_proj = nn.Linear(input_size, config.d_model, **factory)
        self.layers = nn.ModuleList(_Block(config, factory) for _ in range(config.num_layers))
        self.norm_f = _make_norm(config.norm, config.d_model, factory)
        self.d_inner, self.d_state, self.d_conv = config.d_inner, config.d_state, config.d_conv

    # --- configuration -----------------------------------------------------------------------

    @property
    def hidden_size(self) -> int:
        """The output width (GRUModule's name for it; ``d_model`` is the same number)."""
        return self.d_model

    @property
    def preset(self) -> str:
        return self.config.preset

    @property
    def backend(self) -> str:
        """The scan and conv kernels of every layer (``config.backend``); settable."""
        return self.config.backend

    @backend.setter
    def backend(self, value: str) -> None:
        for block in self.layers:
            block.mixer.backend = value
        self.config = self.layers[0].mixer.config

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

    @property
    def state_dtypes(self) -> dict[NestedKey, torch.dtype]:
        """dtype of each state entry: the SSM state in at least float32, the conv state in the
        parameters' dtype. Follows ``.to(dtype)``."""
        dtype = self.input_proj.weight.dtype
        return {self.ssm_key: torch.promote_types(dtype, torch.float32), self.conv_key: dtype}

    def zero_state(self, batch_shape=(), device=None) -> MambaState:
        """Zero state for ``batch_shape`` environments."""
        device = self.input_proj.weight.device if device is None else device
        batch_shape = torch.Size(batch_shape)
        shapes, dtypes = self.state_shapes, self.state_dtypes
        ssm = torch.zeros(*batch_shape, *shapes[self.ssm_key], device=device, dtype=dtypes[self.ssm_key])
        conv = torch.zeros(*batch_shape, *shapes[self.conv_key], device=device, dtype=dtypes[self.conv_key])
        return MambaState(ssm, conv)

    def make_tensordict_primer(self):
        """A ``TensorDictPrimer`` that registers both state entries in the env's specs (zeros),
        with the dtypes of :attr:`state_dtypes` at the time of the call."""
        from torchrl.data import Unbounded
        from torchrl.envs import TensorDictPrimer

        dtypes = self.state_dtypes
        return TensorDictPrimer(
            {key: Unbounded(shape=shape, dtype=dtypes[key]) for key, shape in self.state_shapes.items()},
            expand_specs=True,
        )

    @property
    def canonical_keys(self) -> list[NestedKey]:
        """The keys whose memory layout matters to this module (in- and out-keys), for
        :func:`torchrl.modules.canonicalize_rnn_subset`."""
        return list(self.in_keys) + list(self.out_keys)

    def canonicalize(self, data: TensorDictBase, *, inplace: bool = False) -> TensorDictBase:
        """``data`` with only :attr:`canonical_keys` made contiguous (as GRUModule's)."""
        from torchrl.modules import canonicalize_rnn_subset

        return canonicalize_rnn_subset(data, [self], inplace=inplace)

    # --- tensor-level API ----------------------------------------------------------------------

    def _check_x(self, x: torch.Tensor, ndim: int) -> None:
        if not x.is_floating_point():
            raise TypeError(f"{self.in_keys[0]!r} must be a floating-point tensor, got dtype {x.dtype}")
        dtype = self.input_proj.weight.dtype
        if x.dtype != dtype:
            raise TypeError(
                f"{self.in_keys[0]!r} must have the module's dtype {dtype}, got {x.dtype}; cast the "
                f"input (e.g. torchrl's DTypeCastTransform) or the module (module.to({x.dtype}))"
            )
        if x.dim() != ndim or x.shape[-1] != self.input_size:
            layout = "[B, input_size]" if ndim == 2 else "[B, T, input_size]"
            raise ValueError(
                f"{self.in_keys[0]!r} must have shape {layout} with input_size={self.input_size}, got {list(x.shape)}"
            )

    def _check_state(self, state: MambaState, batch: int, name: str = "") -> None:
        for key, tensor in ((self.ssm_key, state.ssm), (self.conv_key, state.conv)):
            expected = (batch, *self.state_shapes[key])
            label = f"{name} {key!r}" if name else repr(key)
            if tuple(tensor.shape) != expected:
                raise ValueError(f"{label} must have shape {list(expected)}, got {list(tensor.shape)}")
            if not tensor.is_floating_point():
                raise TypeError(f"{label} must be a floating-point tensor, got dtype {tensor.dtype}")

    def step(
        self,
        x: torch.Tensor,
        state: MambaState | None = None,
        reset: torch.Tensor | None = None,
        out_state: MambaState | None = None,
    ) -> tuple[torch.Tensor, MambaState]:
        """One step for ``B`` environments, pure by default (``state`` is not written).

        ``x`` ``[B, input_size]``, ``reset`` ``[B]`` bool (True: state taken as zero, whatever it
        holds). ``out_state``: where to write the state after the step (shaped as ``state``); it
        may be ``state`` itself, which then steps in place (no gradient through it then). Without
        a gradient to compute, each layer's step on the Triton backend is one fused kernel
        (:meth:`MambaMixer.step`). Returns ``(out [B, hidden_size], state after the step)``.
        """
        self._check_x(x, 2)
        state = self.zero_state((x.shape[0],), x.device) if state is None else state
        self._check_state(state, x.shape[0])
        if out_state is not None:
            self._check_state(out_state, x.shape[0])
        h = self.input_proj(x)
        layer_states = []
        for i, block in enumerate(self.layers):
            # out_state only when asked for, so that MambaMixer.step(x, state, reset) overrides still work
            layer_out = {} if out_state is None else {"out_state": out_state.layer(i)}
            y, layer_state = block.mixer.step(block.norm(h), state.layer(i), reset, **layer_out)
            h = h + y
            layer_states.append(layer_state)
        if out_state is None:
            # one layer: a view, not a copy
            single = len(layer_states) == 1
            out_state = layer_states[0].map(lambda t: t.unsqueeze(1)) if single else MambaState.stack(layer_states)
        return self.norm_f(h), out_state

    def sequence(
        self,
        x: torch.Tensor,
        state: MambaState | None = None,
        reset: torch.Tensor | None = None,
        reset_state: MambaState | None = None,
    ) -> tuple[torch.Tensor, MambaState]:
        """A whole sequence: ``x`` ``[B, T, input_size]``, ``reset`` ``[B, T]`` bool.

        ``state`` enters ``t = 0`` (zero when None). ``reset[:, t]`` makes the state entering
        ``t`` the restart state: zero, or with ``reset_state`` (ssm ``[R, num_layers, d_inner,
        d_state]``, conv ``[R, num_layers, d_inner, d_conv - 1]``, ``R = reset.sum()``, row ``k``
        for the ``k``-th True of ``reset`` in row-major order, i.e. ``stored[reset]`` for per-step
        states ``stored [B, T, ...]``) its row. Returns ``(out [B, T, hidden_size], state after
        step T - 1)``; differentiable in ``state`` and ``reset_state``.
        """
        self._check_x(x, 3)
        if state is not None:
            self._check_state(state, x.shape[0])
        if reset_state is not None:
            if reset is None:
                raise ValueError("reset_state needs reset: it holds the states entering the reset steps")
            self._check_state(reset_state, reset_state.ssm.shape[0], "reset_state")
        h = self.input_proj(x)
        final = []
        for i, block in enumerate(self.layers):
            layer_state = None if state is None else state.layer(i)
            restart = None if reset_state is None else reset_state.layer(i)
            y, layer_state = block.mixer(block.norm(h), layer_state, reset, restart)
            h = h + y
            final.append(layer_state)
        return self.norm_f(h), MambaState.stack(final)

    # --- TensorDict API ------------------------------------------------------------------------

    @property
    def recurrent_mode(self) -> bool:
        """``set_recurrent_mode``'s value where one is active, else ``default_recurrent_mode``."""
        mode = _recurrent_mode()
        return bool(self._recurrent_mode) if mode is None else bool(mode)

    @recurrent_mode.setter
    def recurrent_mode(self, value) -> None:
        raise RuntimeError(
            "recurrent_mode cannot be set on the module: use the torchrl.modules.set_recurrent_mode "
            "context manager, or default_recurrent_mode in the constructor"
        )

    def set_recurrent_mode(self, mode: bool = True):
        raise RuntimeError(
            "MambaModule.set_recurrent_mode() does not exist (nor does GRUModule's): use the "
            "torchrl.modules.set_recurrent_mode context manager, or default_recurrent_mode in the constructor"
        )

    def _read_states(self, td: TensorDictBase, batch_shape: torch.Size, device) -> MambaState | None:
        """The state entries of ``td`` as ``[*batch_shape, ...]``; zeros for a missing one; None
        when both are missing."""
        ssm = td.get(self.ssm_key, None)
        conv = td.get(self.conv_key, None)
        if ssm is None and conv is None:
            return None
        flat = (batch_shape.numel(),)
        # a zero state only for a missing entry: per-step [B * T, ...] states are megabytes
        zero = self.zero_state(flat, device) if ssm is None or conv is None else None
        ssm = zero.ssm if ssm is None else ssm.reshape(*flat, *ssm.shape[td.batch_dims :])
        conv = zero.conv if conv is None else conv.reshape(*flat, *conv.shape[td.batch_dims :])
        self._check_state(MambaState(ssm, conv), flat[0])
        return MambaState(ssm.reshape(*batch_shape, *ssm.shape[1:]), conv.reshape(*batch_shape, *conv.shape[1:]))

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
        x = x.reshape(batch, *x.shape[td.batch_dims :])
        reset = self._read_is_init(td).reshape(batch)
        state = self._read_states(td, torch.Size([batch]), x.device)
        out, new_state = self.step(x, state, reset)
        td.set(self.out_keys[0], out.reshape(*shape, self.d_model))
        td.set(self.out_keys[1], new_state.ssm.reshape(*shape, *new_state.ssm.shape[1:]))
        td.set(self.out_keys[2], new_state.conv.reshape(*shape, *new_state.conv.shape[1:]))
        return td

    def _forward_sequence(self, td: TensorDictBase) -> TensorDictBase:
        if td.batch_dims == 0:
            raise ValueError("in recurrent mode the TensorDict needs a time dimension, got batch_size=[]")
        shape = td.batch_size
        if 0 in shape:
            raise ValueError(
                f"in recurrent mode the TensorDict needs at least one row and one step, got batch_size={list(shape)}"
            )
        rows = td.unsqueeze(0) if td.batch_dims == 1 else td.reshape(-1, shape[-1])
        x = rows.get(self.in_keys[0])
        reset = self._read_is_init(rows)
        # [B, T, num_layers, ...] each, or None
        stored = self._read_states(rows, rows.batch_size, x.device)
        vmapped = _is_vmapped(x, reset, *(stored or ()))
        if self.write_next_state or vmapped:
            # stepping needs no data-dependent shapes, which torch.vmap (GAE's default) cannot batch;
            # under vmap the PyTorch kernels run, as Triton kernels cannot take batched tensors
            backend = self.backend
            if vmapped:
                self.backend = "torch"
            try:
                out, states = self._stepped(x, reset, stored)
            finally:
                self.backend = backend
            if self.write_next_state:
                td.set(self.out_keys[1], states.ssm.reshape(*shape, *states.ssm.shape[2:]))
                td.set(self.out_keys[2], states.conv.reshape(*shape, *states.conv.shape[2:]))
        else:
            state = reset_state = None
            if stored is not None:
                state = stored.map(lambda t: t[:, 0])
                # [R, num_layers, ...]: the states stored at the is_init steps, where each restarts
                reset_state = stored.map(lambda t: t[reset])
            out, _ = self.sequence(x, state, reset, reset_state)
        td.set(self.out_keys[0], out.reshape(*shape, self.d_model))
        return td

    def _stepped(self, x, reset, stored: MambaState | None) -> tuple[torch.Tensor, MambaState]:
        """Recurrent mode one step at a time: ``x`` ``[B, T, F]``, ``reset`` ``[B, T]``, ``stored``
        per-step states ``[B, T, ...]`` (None: zeros). Returns the outputs and the state after every
        step, ``[B, T, ...]`` each; equal to :meth:`sequence` with the states gathered at resets."""
        batch, steps = reset.shape
        state = self.zero_state((batch,), x.device) if stored is None else stored.map(lambda t: t[:, 0])
        outs, ssm, conv = [], [], []
        for t in range(steps):
            if stored is None:
                out, state = self.step(x[:, t], state, reset[:, t])
            else:
                # [B, 1, 1, 1]; a select, so that nothing from before the reset leaks past it
                here = reset[:, t, None, None, None]
                state = MambaState(
                    torch.where(here, stored.ssm[:, t], state.ssm), torch.where(here, stored.conv[:, t], state.conv)
                )
                out, state = self.step(x[:, t], state, None)
            outs.append(out)
            ssm.append(state.ssm)
            conv.append(state.conv)
        return torch.stack(outs, 1), MambaState(torch.stack(ssm, 1), torch.stack(conv, 1))


def _is_vmapped(*tensors: torch.Tensor) -> bool:
    """Whether any tensor is batched by an enclosing ``torch.vmap``."""
    return any(torch._C._functorch.is_batchedtensor(t) for t in tensors)


def _resolve_keys(in_key, in_keys, out_key, out_keys):
    """GRUModule's key rules, with two state entries instead of one."""
    if (in_key is None) == (in_keys is None):
        raise ValueError(
            f"pass exactly one of in_key and in_keys (as GRUModule), got in_key={in_key!r} and in_keys={in_keys!r}"
        )
    if (out_key is None) == (out_keys is None):
        raise ValueError(
            f"pass exactly one of out_key and out_keys (as GRUModule), got out_key={out_key!r} and "
            f"out_keys={out_keys!r}"
        )
    if in_keys is None:
        in_keys = [in_key, "recurrent_state_ssm", "recurrent_state_conv"]
    in_keys = list(unravel_key_list(list(in_keys)))
    if len(in_keys) == 3:
        in_keys.append("is_init")
    if len(in_keys) != 4:
        raise ValueError(
            f"in_keys must be [in_key, ssm_key, conv_key] or [in_key, ssm_key, conv_key, is_init_key], got {in_keys}"
        )
    if out_keys is None:
        out_keys = [out_key, ("next", *_as_tuple(in_keys[1])), ("next", *_as_tuple(in_keys[2]))]
    out_keys = list(unravel_key_list(list(out_keys)))
    if len(out_keys) != 3:
        raise ValueError(f"out_keys must be [out_key, ('next', ssm_key), ('next', conv_key)], got {out_keys}")
    for state_key, next_key in zip(in_keys[1:3], out_keys[1:3]):
        if _as_tuple(next_key) != ("next", *_as_tuple(state_key)):
            raise ValueError(
                f"out_keys must name the state entries as ('next', <in state key>): expected "
                f"{('next', *_as_tuple(state_key))}, got {next_key!r}"
            )
    return in_keys, out_keys


def _as_tuple(key: NestedKey) -> tuple:
    return key if isinstance(key, tuple) else (key,)
