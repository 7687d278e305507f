"""Recurrent trunks: a :class:`~mamba_rl.MambaModule` or a TorchRL ``GRUModule`` behind one tensor API.

Both trunks hold their TorchRL module as ``.core`` (the object a Collector or a loss module
steps) and add the tensor-level calls the fast trainer uses:

- ``zero_state(batch_size) -> state``: every tensor ``[B, ...]``;
- ``step(x [B, F], state, reset [B], out_state=None) -> (features [B, D], state)``: pure, or
  writing the new state into ``out_state`` (which may be ``state``: a step in place);
- ``sequence(x [B, T, F], state, reset [B, T]) -> (features [B, T, D], final state)``:
  ``state`` enters ``t = 0``, ``reset[:, t]`` zeroes the state entering ``t``; differentiable in
  ``state``.

The state is a NamedTuple of ``[B, ...]`` tensors, the trunk's ``state_type``:
:class:`~mamba_rl.state.MambaState` ``(ssm, conv)`` for Mamba, :class:`GRUState` ``(hidden)``
for the GRU; ``state._asdict()`` and ``trunk.state_type(**tensors)`` convert it to and from
named tensors, which is how :class:`~mamba_rl.policies.ActorCritic` keeps the states of its
trunks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from tensordict import TensorDict
from torch import nn
from torchrl.modules import GRUModule, set_recurrent_mode

from mamba_rl.mixer import MambaConfig
from mamba_rl.module import MambaModule
from mamba_rl.policies.gru_replay import gru_replay
from mamba_rl.state import MambaState

__all__ = ["MambaTrunk", "GRUTrunk", "GRUState", "GRU_BACKENDS"]

GRU_BACKENDS = ("packed", "pad", "scan", "triton", "auto")


def _key(prefix: str, name: str) -> str:
    return f"{prefix}{name}"


class GRUState(NamedTuple):
    """The recurrent state of a :class:`GRUTrunk`.

    Attributes:
        hidden: ``[B, num_layers, hidden_size]``, GRUModule's layout of the hidden state in a TensorDict.
    """

    hidden: torch.Tensor


class MambaTrunk(nn.Module):
    """A :class:`~mamba_rl.MambaModule` trunk.

    Args:
        input_size: observation features.
        config: the Mamba stack (:class:`~mamba_rl.mixer.MambaConfig`); ``config.d_model`` is the
            size of the features out.
        in_key, out_key: TensorDict keys of the TorchRL face (``.core``).
        state_prefix: prefix of the state keys in TensorDicts (``"recurrent_state_"`` gives
            ``"recurrent_state_ssm"`` / ``"recurrent_state_conv"``); separate actor and critic
            trunks need different prefixes.
        device: of the parameters.
    """

    kind = "mamba"
    state_type = MambaState

    def __init__(
        self,
        input_size: int,
        config: MambaConfig,
        *,
        in_key: str = "observation",
        out_key: str = "features",
        state_prefix: str = "recurrent_state_",
        device=None,
    ) -> None:
        super().__init__()
        ssm_key, conv_key = _key(state_prefix, "ssm"), _key(state_prefix, "conv")
        self.core = MambaModule(
            input_size,
            config=config,
            in_keys=[in_key, ssm_key, conv_key, "is_init"],
            out_keys=[out_key, ("next", ssm_key), ("next", conv_key)],
            device=device,
        )
        self.out_features = config.d_model

    def zero_state(self, batch_size: int, device=None) -> MambaState:
        return self.core.zero_state((batch_size,), device)

    def step(self, x, state: MambaState, reset, out_state: MambaState | None = None):
        return self.core.step(x, state, reset, out_state)

    def sequence(self, x, state: MambaState, reset):
        return self.core.sequence(x, state, reset)

    @staticmethod
    def state_norms(state: MambaState) -> dict[str, torch.Tensor]:
        """Mean over environments of the L2 norm of each environment's SSM state (0-d tensors)."""
        ssm = state.ssm.flatten(1)
        return {"ssm_norm": ssm.norm(dim=1).mean(), "ssm_max_abs": ssm.abs().amax()}


class GRUTrunk(nn.Module):
    """A ``torchrl.modules.GRUModule`` trunk (the baseline).

    ``step`` runs the GRU cell from the module's own weights (two matrix products and the
    gates, the exact ``nn.GRU`` equations): unlike a cuDNN call it can be captured in a CUDA
    graph. ``sequence`` with ``recurrent_backend="packed"`` (default) replays the rows through
    :func:`~mamba_rl.policies.gru_replay.gru_replay` on the module's own ``nn.GRU``: a fused
    Triton recurrence per layer on CUDA (float32, ``H <= 128``; else one cuDNN call over the
    episodes packed by length), the GRU equations stepped over the rows on the CPU
    (benchmarks/NOTES_gru.md); the other backends call the ``GRUModule`` itself in
    recurrent mode. Every backend gives the same numbers (tests/policies/test_gru_replay.py).

    Args:
        input_size: observation features.
        hidden_size: GRU width, the size of the features out.
        num_layers: stacked GRU layers.
        recurrent_backend: ``"packed"``, or one of ``GRUModule``'s: ``"pad" | "scan" | "triton" |
            "auto"`` (the TorchRL face ``.core`` uses ``"pad"`` when this is ``"packed"``).
        in_key, out_key, state_prefix: TensorDict keys of the TorchRL face; the hidden state is
            ``state_prefix + "hidden"``.
    """

    kind = "gru"
    state_type = GRUState

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        recurrent_backend: str = "packed",
        in_key: str = "observation",
        out_key: str = "features",
        state_prefix: str = "recurrent_state_",
        device=None,
    ) -> None:
        super().__init__()
        if recurrent_backend not in GRU_BACKENDS:
            raise ValueError(f"recurrent_backend must be one of {GRU_BACKENDS}, got {recurrent_backend!r}")
        hidden_key = _key(state_prefix, "hidden")
        self.core = GRUModule(
            input_size=input_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            in_keys=[in_key, hidden_key, "is_init"],
            out_keys=[out_key, ("next", hidden_key)],
            recurrent_backend="pad" if recurrent_backend == "packed" else recurrent_backend,
            device=device,
        )
        self.recurrent_backend = recurrent_backend
        self.in_key, self.out_key, self.hidden_key = in_key, out_key, hidden_key
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.out_features = hidden_size

    def zero_state(self, batch_size: int, device=None) -> GRUState:
        weight = self.core.gru.weight_hh_l0
        device = weight.device if device is None else device
        return GRUState(torch.zeros(batch_size, self.num_layers, self.hidden_size, device=device, dtype=weight.dtype))

    def step(self, x, state, reset, out_state=None):
        hidden = torch.where(reset[:, None, None], 0.0, state.hidden)
        gru = self.core.gru
        layer_in, new_hidden = x, []
        for layer in range(self.num_layers):
            h = hidden[:, layer]
            gi = nn.functional.linear(
                layer_in, getattr(gru, f"weight_ih_l{layer}"), getattr(gru, f"bias_ih_l{layer}", None)
            )
            gh = nn.functional.linear(h, getattr(gru, f"weight_hh_l{layer}"), getattr(gru, f"bias_hh_l{layer}", None))
            i_r, i_z, i_n = gi.chunk(3, dim=-1)
            h_r, h_z, h_n = gh.chunk(3, dim=-1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            h = (1 - z) * n + z * h
            new_hidden.append(h)
            layer_in = h
        new_hidden = torch.stack(new_hidden, 1)
        if out_state is not None:
            new_hidden = out_state.hidden.copy_(new_hidden)
        return layer_in, GRUState(new_hidden)

    def sequence(self, x, state, reset):
        if self.recurrent_backend == "packed":
            out, hidden = gru_replay(self.core.gru, x, state.hidden, reset)
            return out, GRUState(hidden)
        batch, steps = reset.shape
        h0 = torch.where(reset[:, 0, None, None], 0.0, state.hidden)
        # GRUModule reads the state entering each trajectory at its first step; every later
        # trajectory of a row starts at a reset, from zero.
        hidden_in = torch.cat([h0[:, None], h0.new_zeros(batch, steps - 1, *h0.shape[1:])], 1)
        td = TensorDict(
            {self.in_key: x, self.hidden_key: hidden_in, "is_init": reset[..., None]},
            batch_size=[batch, steps],
            device=x.device,
        )
        with set_recurrent_mode(True):
            td = self.core(td)
        # [B, T, num_layers, H], non-zero at each trajectory's end, so at t = T - 1
        hidden_out = td.get(("next", self.hidden_key))
        return td.get(self.out_key), GRUState(hidden_out[:, -1])

    @staticmethod
    def state_norms(state: GRUState) -> dict[str, torch.Tensor]:
        """Mean over environments of the L2 norm of each environment's hidden state."""
        hidden = state.hidden.flatten(1)
        return {"hidden_norm": hidden.norm(dim=1).mean(), "hidden_max_abs": hidden.abs().amax()}
