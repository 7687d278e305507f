"""The recurrent state of Mamba: one type, :class:`MambaState` ``(ssm, conv)``, and its TensorDict face.

:class:`MambaState` is what the mixer, :class:`~mamba_rl.MambaModule` and the policy trunks take
and return: one layer's state ``ssm [*, d_inner, d_state]``, ``conv [*, d_inner, d_conv - 1]``
in the mixer, every layer's stacked on a ``num_layers`` dimension in the module
(``[*, num_layers, d_inner, ...]``).

In a TensorDict (the module's in and out keys) the state of every layer lives in two entries
(default keys), with batch shape = the environments' batch shape::

    "recurrent_state_ssm"   [*batch, num_layers, d_inner, d_state]   float32
    "recurrent_state_conv"  [*batch, num_layers, d_inner, d_conv - 1]

:func:`to_tensors` and :func:`from_tensors` convert between the two. Most operations on the
TensorDict are TensorDict's own and are used directly: ``state.clone()``, ``state.to("cuda")``,
``state.to(torch.float64)``, ``state[mask]``, ``state.unbind(0)``, ``torch.stack``/``torch.cat``
of states. This module adds what TensorDict does not know: which keys form the state, masked
zeroing, per-layer views, and atomic save/load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from tensordict import TensorDict, TensorDictBase

from mamba_rl.io import atomic_save

if TYPE_CHECKING:
    from mamba_rl.module import MambaModule

__all__ = [
    "MambaState",
    "zero_state",
    "get_state",
    "set_state",
    "zero_where",
    "layer_state",
    "to_tensors",
    "from_tensors",
    "atomic_save",
    "save_state",
    "load_state",
]


class MambaState(NamedTuple):
    """The recurrent state of a Mamba layer, or of a stack of them.

    Attributes:
        ssm: the SSM state, ``[*, d_inner, d_state]`` for one layer, ``[*, num_layers, d_inner,
            d_state]`` for a stack; in at least float32.
        conv: the last ``d_conv - 1`` conv inputs, ``[*, d_inner, d_conv - 1]`` or ``[*,
            num_layers, d_inner, d_conv - 1]``; in the parameters' dtype.
    """

    ssm: torch.Tensor
    conv: torch.Tensor

    def map(self, fn) -> MambaState:
        """``fn`` applied to both tensors (``state.map(torch.clone)``, ``state.map(lambda t: t[mask])``)."""
        return MambaState(fn(self.ssm), fn(self.conv))

    def layer(self, index: int) -> MambaState:
        """Layer ``index`` of a stacked state ``[B, num_layers, ...]``: views ``[B, ...]``."""
        return MambaState(self.ssm[:, index], self.conv[:, index])

    @staticmethod
    def stack(layers) -> MambaState:
        """Per-layer states ``[B, ...]`` stacked into ``[B, num_layers, ...]``."""
        layers = list(layers)
        return MambaState(torch.stack([s.ssm for s in layers], 1), torch.stack([s.conv for s in layers], 1))


def zero_state(module: MambaModule, batch_size=(), device=None) -> TensorDict:
    """A zero state TensorDict for ``batch_size`` environments."""
    return from_tensors(module, module.zero_state(batch_size, device), batch_size)


def get_state(module: MambaModule, td: TensorDictBase, next_: bool = False) -> TensorDict:
    """The state entries of ``td`` (those under ``"next"`` when ``next_``), zeros where missing."""
    source = td.get("next") if next_ else td
    zero = zero_state(module, td.batch_size, device=td.device)
    for key in (module.ssm_key, module.conv_key):
        value = source.get(key, None)
        if value is not None:
            zero.set(key, value)
    return zero


def set_state(module: MambaModule, td: TensorDictBase, state: TensorDictBase) -> TensorDictBase:
    """Write ``state`` into ``td`` (in place, returned) as the state the next call will read."""
    missing = [key for key in (module.ssm_key, module.conv_key) if state.get(key, None) is None]
    if missing:
        raise KeyError(f"state must hold {[module.ssm_key, module.conv_key]}, missing {missing}")
    for key in (module.ssm_key, module.conv_key):
        td.set(key, state.get(key))
    return td


def zero_where(state: TensorDictBase, mask: torch.Tensor | None = None) -> TensorDictBase:
    """A copy of ``state`` with the environments in ``mask`` (bool, ``state.batch_size``) zeroed;
    everything zeroed when ``mask`` is None."""
    if mask is None:
        return state.apply(torch.zeros_like)
    if mask.dtype != torch.bool or mask.shape != state.batch_size:
        raise ValueError(
            f"mask must be a bool tensor of shape {list(state.batch_size)}, got {mask.dtype} {list(mask.shape)}"
        )

    def zero(tensor):
        expanded = mask.reshape(*mask.shape, *([1] * (tensor.dim() - mask.dim())))
        return torch.where(expanded, torch.zeros_like(tensor), tensor)

    return state.apply(zero)


def layer_state(module: MambaModule, state: TensorDictBase, layer: int) -> TensorDict:
    """Views of one layer's ``ssm [*batch, d_inner, d_state]`` and ``conv [*batch, d_inner, d_conv-1]``."""
    if not 0 <= layer < module.num_layers:
        raise ValueError(f"layer must be in 0..{module.num_layers - 1}, got {layer}")
    batch_dims = state.batch_dims
    return TensorDict(
        {
            "ssm": state.get(module.ssm_key).select(batch_dims, layer),
            "conv": state.get(module.conv_key).select(batch_dims, layer),
        },
        batch_size=state.batch_size,
    )


def to_tensors(module: MambaModule, state: TensorDictBase) -> MambaState:
    """The state flattened to ``[B, ...]`` tensors for :meth:`MambaModule.step`/``sequence``."""
    flat = state.reshape(-1)
    return MambaState(flat.get(module.ssm_key), flat.get(module.conv_key))


def from_tensors(module: MambaModule, state: MambaState, batch_size=None) -> TensorDict:
    """Wrap :class:`MambaState` tensors as a state TensorDict of ``batch_size`` (default ``[B]``)."""
    batch_size = torch.Size(state.ssm.shape[:1] if batch_size is None else batch_size)
    per_env = module.state_shapes
    for name, tensor, key in (("ssm", state.ssm, module.ssm_key), ("conv", state.conv, module.conv_key)):
        # [B, ...] or already [*batch_size, ...]
        per = tuple(per_env[key])
        fits = tensor.numel() == batch_size.numel() * per_env[key].numel()
        if tuple(tensor.shape[tensor.dim() - len(per) :]) != per or not fits:
            raise ValueError(
                f"state.{name} must have shape [B={batch_size.numel()} (batch_size "
                f"{list(batch_size)}), {', '.join(map(str, per))}], got {list(tensor.shape)}"
            )
    return TensorDict(
        {
            module.ssm_key: state.ssm.reshape(*batch_size, *per_env[module.ssm_key]),
            module.conv_key: state.conv.reshape(*batch_size, *per_env[module.conv_key]),
        },
        batch_size=batch_size,
    )


def save_state(state: TensorDictBase, path: str | os.PathLike) -> Path:
    """Save a state TensorDict atomically (tensors and batch size, bit-exact)."""
    return atomic_save({"state": state.to_dict(), "batch_size": list(state.batch_size)}, path)


def load_state(path: str | os.PathLike, map_location=None) -> TensorDict:
    """Load a state saved by :func:`save_state` (onto ``map_location`` if given)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no state file at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
        return TensorDict(payload["state"], batch_size=payload["batch_size"])
    except Exception as err:
        raise ValueError(f"{path} is not a state file written by mamba_rl.state.save_state: {err}") from err
