"""Check that every way of running a :class:`~mamba_rl.MambaModule` computes the same thing.

A rollout steps the module (:meth:`~mamba_rl.MambaModule.step`, or the TensorDict step mode), PPO
replays the rollout as sequences with a stored initial state (:meth:`~mamba_rl.MambaModule.sequence`,
or recurrent mode), and each can run on the PyTorch or the Triton kernels. If these paths
disagree, a policy trained on one behaves differently on the other. This module runs random
inputs, with resets inside the rows and a random initial state, through

- ``sequence``: one :meth:`~mamba_rl.MambaModule.sequence` call (on the ``"torch"`` backend: the
  reference every other row is compared with);
- ``chunked``: :meth:`~mamba_rl.MambaModule.sequence` over chunks of ``chunk_size`` steps, the
  state carried from chunk to chunk;
- ``step``: :meth:`~mamba_rl.MambaModule.step` at every step;
- ``td-step`` / ``td-recurrent``: the TensorDict faces, step mode and recurrent mode (outputs only:
  recurrent mode writes no state);

on every available backend, and reports the largest difference of the outputs, of the final SSM
and conv states, and of the gradient of the outputs with respect to the initial state (gradients
through an injected state are what steering and chunked training need).

    >>> from mamba_rl import MambaModule
    >>> from mamba_rl.lab import check_equivalence
    >>> report = check_equivalence(MambaModule(input_size=4, hidden_size=16, num_layers=2, in_key="obs",
    ...                                       out_key="features"), steps=20, backends=["torch"])
    >>> report.ok
    True

Command line (a fresh random module, or the trunk of a checkpoint; exit status 1 if paths disagree)::

    python -m mamba_rl.lab equivalence [--checkpoint runs/<run>] [--steps 200] [--backends torch triton]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field

import torch
from tensordict import TensorDict
from torchrl.modules import set_recurrent_mode

from mamba_rl.kernels.ops import BACKENDS, resolve_backend
from mamba_rl.mixer import MambaConfig
from mamba_rl.module import MambaModule
from mamba_rl.state import MambaState

__all__ = ["EquivalenceRow", "EquivalenceReport", "TOLERANCE", "available_backends", "check_equivalence", "main"]

# largest difference allowed, relative to the reference's largest absolute value
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}

PATHS = ("sequence", "chunked", "step", "td-step", "td-recurrent")
QUANTITIES = ("out", "ssm", "conv", "grad")


@dataclass
class EquivalenceRow:
    """One path on one backend against the reference.

    Attributes:
        path: one of ``PATHS``.
        backend: ``"torch"`` or ``"triton"``.
        diffs: largest absolute difference per quantity (``"out"``, ``"ssm"``, ``"conv"``,
            ``"grad"``), None where the path does not produce it.
        error: the exception's text if the path failed.
    """

    path: str
    backend: str
    diffs: dict = field(default_factory=dict)
    error: str | None = None


@dataclass
class EquivalenceReport:
    """What :func:`check_equivalence` returns; ``str(report)`` is a table.

    Attributes:
        rows: one :class:`EquivalenceRow` per (path, backend).
        scales: the reference's largest absolute value per quantity.
        tolerance: the relative tolerance (per dtype, :data:`TOLERANCE`).
        setup: shapes, dtype, device, chunk size, number of resets.
    """

    rows: list
    scales: dict
    tolerance: float
    setup: dict

    def limit(self, quantity: str) -> float:
        """The largest absolute difference allowed for ``quantity``."""
        return self.tolerance * max(self.scales[quantity], 1e-6)

    def row_ok(self, row: EquivalenceRow) -> bool:
        if row.error is not None:
            return False
        return all(value is None or value <= self.limit(q) for q, value in row.diffs.items())

    @property
    def ok(self) -> bool:
        """Every path on every backend within tolerance, none failed."""
        return all(self.row_ok(row) for row in self.rows)

    @property
    def max_diff(self) -> dict:
        """Largest difference per quantity over all rows (``inf`` if a row failed)."""
        worst = {q: 0.0 for q in QUANTITIES}
        for row in self.rows:
            for q in QUANTITIES:
                value = math.inf if row.error is not None else row.diffs.get(q)
                if value is not None:
                    worst[q] = max(worst[q], value)
        return worst

    @property
    def max_relative_diff(self) -> float:
        """Largest difference over all rows and quantities, relative to the reference's scale."""
        return max(value / max(self.scales[q], 1e-6) for q, value in self.max_diff.items())

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "tolerance": self.tolerance,
            "scales": self.scales,
            "setup": self.setup,
            "max_diff": self.max_diff,
            "rows": [asdict(row) for row in self.rows],
        }

    def __str__(self) -> str:
        s = self.setup
        lines = [
            f"MambaModule equivalence: B={s['batch']} T={s['steps']} chunk={s['chunk_size']} resets={s['resets']} "
            f"{s['dtype']} on {s['device']}; reference: sequence/torch",
            "reference max |value|: " + ", ".join(f"{q} {self.scales[q]:.3g}" for q in QUANTITIES),
            f"tolerance: {self.tolerance:g} x that",
            "",
            f"| {'path':<12} | {'backend':<7} | "
            + " | ".join(f"max |d {q}|".ljust(11) for q in QUANTITIES)
            + " | ok |",
            "|" + "|".join(["-" * 14, "-" * 9] + ["-" * 13] * len(QUANTITIES) + ["----"]) + "|",
        ]
        width = 13 * len(QUANTITIES) + 3 * (len(QUANTITIES) - 1) - 2
        errors = []
        for row in self.rows:
            if row.error is not None:
                errors.append(f"{row.path}/{row.backend}: {row.error}")
                cells = [f"failed (error {len(errors)} below)".ljust(width)]
            else:
                cells = [("-" if row.diffs.get(q) is None else f"{row.diffs[q]:.2e}").ljust(11) for q in QUANTITIES]
            mark = "yes" if self.row_ok(row) else "NO"
            lines.append(f"| {row.path:<12} | {row.backend:<7} | " + " | ".join(cells) + f" | {mark:<3}|")
        lines.append("")
        lines += [f"error {i}: {text}" for i, text in enumerate(errors, 1)]
        lines.append("all paths agree" if self.ok else "PATHS DISAGREE: see the rows marked NO")
        return "\n".join(lines)


def available_backends(device) -> list[str]:
    """``"torch"``, and ``"triton"`` where its kernels run: on CUDA when Triton imports, on CPU
    only under Triton's interpreter (``TRITON_INTERPRET=1``)."""
    device = torch.device(device)
    backends = ["torch"]
    try:
        resolve_backend("triton", device)
    except RuntimeError:
        return backends
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        backends.append("triton")
    return backends


def _max_abs(tensor: torch.Tensor) -> float:
    return float(tensor.detach().abs().max()) if tensor.numel() else 0.0


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shape {list(a.shape)} != reference {list(b.shape)}")
    if not torch.isfinite(a).all():
        return math.inf
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def _run_sequence(module, x, state, reset):
    return module.sequence(x, state, reset)


def _run_chunked(module, x, state, reset, chunk_size):
    outs = []
    for start in range(0, x.shape[1], chunk_size):
        stop = start + chunk_size
        out, state = module.sequence(x[:, start:stop], state, reset[:, start:stop])
        outs.append(out)
    return torch.cat(outs, 1), state


def _run_step(module, x, state, reset):
    outs = []
    for t in range(x.shape[1]):
        out, state = module.step(x[:, t], state, reset[:, t])
        outs.append(out)
    return torch.stack(outs, 1), state


def _run_td_step(module, x, state, reset):
    batch = x.shape[0]
    outs = []
    for t in range(x.shape[1]):
        td = TensorDict(
            {
                module.in_keys[0]: x[:, t],
                module.ssm_key: state.ssm,
                module.conv_key: state.conv,
                module.in_keys[3]: reset[:, t, None],
            },
            batch_size=[batch],
            device=x.device,
        )
        td = module(td)
        outs.append(td.get(module.out_keys[0]))
        state = MambaState(td.get(module.out_keys[1]), td.get(module.out_keys[2]))
    return torch.stack(outs, 1), state


def _run_td_recurrent(module, x, state, reset):
    batch, steps = x.shape[:2]
    # recurrent mode enters each row from the state stored at t = 0 and restarts at every reset
    # from the state stored there: zero where the tensor API restarts from zero
    ssm = torch.zeros(batch, steps, *state.ssm.shape[1:], dtype=state.ssm.dtype, device=x.device)
    conv = torch.zeros(batch, steps, *state.conv.shape[1:], dtype=state.conv.dtype, device=x.device)
    first = reset[:, 0, None, None, None]
    ssm[:, 0] = torch.where(first, torch.zeros_like(state.ssm), state.ssm)
    conv[:, 0] = torch.where(first, torch.zeros_like(state.conv), state.conv)
    td = TensorDict(
        {module.in_keys[0]: x, module.ssm_key: ssm, module.conv_key: conv, module.in_keys[3]: reset[..., None]},
        batch_size=[batch, steps],
        device=x.device,
    )
    with set_recurrent_mode(True):
        td = module(td)
    return td.get(module.out_keys[0]), None


def _random_inputs(
    module: MambaModule, batch: int, steps: int, reset_prob: float, state_scale: float, seed: int, device, dtype
):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, module.input_size, generator=generator, dtype=torch.float64)
    reset = torch.rand(batch, steps, generator=generator) < reset_prob
    # row 0 resets at both ends; row 1 (if any) never resets, so its random initial state is used
    reset[0, 0] = True
    reset[0, -1] = True
    if batch > 1:
        reset[1] = False
    zero = module.zero_state((batch,), device)
    ssm = state_scale * torch.randn(zero.ssm.shape, generator=generator, dtype=torch.float64)
    conv = torch.randn(zero.conv.shape, generator=generator, dtype=torch.float64)
    # the conv state holds past inputs; the SSM state is float32 whatever the parameters' dtype
    state = MambaState(ssm.to(device=device, dtype=zero.ssm.dtype), conv.to(device=device, dtype=zero.conv.dtype))
    weight = torch.randn(batch, steps, module.d_model, generator=generator, dtype=torch.float64)
    return x.to(device=device, dtype=dtype), reset.to(device), state, weight.to(device=device, dtype=dtype)


def _evaluate(module, path, x, state, reset, weight, chunk_size, grad):
    """``(out, final state or None, grad of <out, weight> wrt the initial state or None)``."""
    runners = {
        "sequence": _run_sequence,
        "chunked": lambda m, *a: _run_chunked(m, *a, chunk_size),
        "step": _run_step,
        "td-step": _run_td_step,
        "td-recurrent": _run_td_recurrent,
    }
    if not grad or path.startswith("td-"):
        with torch.no_grad():
            out, final = runners[path](module, x, state, reset)
        return out, final, None
    ssm0 = state.ssm.detach().clone().requires_grad_(True)
    conv0 = state.conv.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out, final = runners[path](module, x, MambaState(ssm0, conv0), reset)
        # a path that ignores part of the state has no gradient there: zero, which the comparison flags
        grad_ssm, grad_conv = torch.autograd.grad((out * weight).sum(), (ssm0, conv0), allow_unused=True)
    grad_ssm = torch.zeros_like(ssm0) if grad_ssm is None else grad_ssm
    grad_conv = torch.zeros_like(conv0) if grad_conv is None else grad_conv
    return (
        out.detach(),
        MambaState(final.ssm.detach(), final.conv.detach()),
        torch.cat([grad_ssm.flatten(1), grad_conv.flatten(1).to(grad_ssm.dtype)], 1),
    )


def check_equivalence(
    module,
    *,
    batch: int = 4,
    steps: int = 64,
    chunk_size: int = 7,
    reset_prob: float = 0.05,
    state_scale: float = 1.0,
    backends=None,
    paths=PATHS,
    grad: bool = True,
    seed: int = 0,
    tolerance: float | None = None,
) -> EquivalenceReport:
    """Run random inputs through every path and backend and compare them with ``sequence/torch``.

    Args:
        module: a :class:`~mamba_rl.MambaModule` (or anything :func:`~mamba_rl.lab.as_state_policy`
            accepts); it is run on its own device and dtype and is left as it was (its
            ``backend`` is restored).
        batch, steps: rows and steps of the random input (row 0 resets at ``t = 0`` and
            ``t = T - 1``, row 1 never, the others with probability ``reset_prob`` per step).
        chunk_size: chunk length of the ``chunked`` path (an awkward size by default).
        state_scale: standard deviation of the random initial SSM state.
        backends: backends to run (default :func:`available_backends` of the module's device).
        paths: which of ``PATHS`` to run.
        grad: also compare the gradient with respect to the initial state (not for the
            TensorDict paths).
        seed: seed of the random inputs.
        tolerance: relative tolerance (default :data:`TOLERANCE` of the parameters' dtype).
    """
    from mamba_rl.lab.policy import as_state_policy

    module = as_state_policy(module).module
    for name, value in (("batch", batch), ("steps", steps), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not 0.0 <= reset_prob <= 1.0:
        raise ValueError(f"reset_prob must be in [0, 1], got {reset_prob!r}")
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise ValueError(f"paths must be among {PATHS}, got {unknown}")
    param = module.input_proj.weight
    device, dtype = param.device, param.dtype
    backends = available_backends(device) if backends is None else list(backends)
    for backend in backends:
        if backend not in BACKENDS or backend == "auto":
            raise ValueError(f"backends must be among ('torch', 'triton'), got {backend!r}")
    tolerance = TOLERANCE.get(dtype, 1e-2) if tolerance is None else tolerance
    x, reset, state, weight = _random_inputs(module, batch, steps, reset_prob, state_scale, seed, device, dtype)

    saved_backend = module.backend
    try:
        module.backend = "torch"
        ref_out, ref_final, ref_grad = _evaluate(module, "sequence", x, state, reset, weight, chunk_size, grad)
        rows = []
        for backend in backends:
            module.backend = backend
            for path in paths:
                row = EquivalenceRow(path, backend)
                try:
                    out, final, g = _evaluate(module, path, x, state, reset, weight, chunk_size, grad)
                    row.diffs = {
                        "out": _diff(out, ref_out),
                        "ssm": None if final is None else _diff(final.ssm, ref_final.ssm),
                        "conv": None if final is None else _diff(final.conv, ref_final.conv),
                        "grad": None if g is None or ref_grad is None else _diff(g, ref_grad),
                    }
                except Exception as err:  # a failing path is a finding, reported in its row
                    row.error = f"{type(err).__name__}: {err}"
                rows.append(row)
    finally:
        module.backend = saved_backend
    scales = {
        "out": _max_abs(ref_out),
        "ssm": _max_abs(ref_final.ssm),
        "conv": _max_abs(ref_final.conv),
        "grad": 0.0 if ref_grad is None else _max_abs(ref_grad),
    }
    setup = {
        "batch": batch,
        "steps": steps,
        "chunk_size": chunk_size,
        "resets": int(reset.sum()),
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(device),
        "backends": backends,
        "num_layers": module.num_layers,
        "d_model": module.d_model,
        "d_state": module.d_state,
        "seed": seed,
    }
    return EquivalenceReport(rows, scales, tolerance, setup)


_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mamba_rl.lab equivalence",
        description="Check that step, sequence and chunked sequence (TensorDict faces included) agree on every "
        "backend, for a fresh random MambaModule or the trunk of a checkpoint. Exit status 1 if not.",
    )
    parser.add_argument("--checkpoint", default=None, help="trainer checkpoint (file or run dir) or lab policy file")
    parser.add_argument("--input-size", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=MambaConfig.d_model)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--d-state", type=int, default=MambaConfig.d_state)
    parser.add_argument("--d-conv", type=int, default=MambaConfig.d_conv)
    parser.add_argument("--expand", type=int, default=MambaConfig.expand)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=7, help="chunk length of the chunked path (default 7)")
    parser.add_argument("--reset-prob", type=float, default=0.05)
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=("torch", "triton"),
        default=None,
        help="default: every backend available on the device",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument(
        "--dtype",
        choices=tuple(_DTYPES),
        default=None,
        help="parameter dtype (default float32 for a random module, the checkpoint's otherwise)",
    )
    parser.add_argument("--no-grad", action="store_true", help="skip the gradients with respect to the initial state")
    parser.add_argument(
        "--interpret",
        action="store_true",
        help="on CPU, also run the Triton kernels through Triton's interpreter (slow: minutes)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if args.interpret and device.type == "cpu":
        from mamba_rl.kernels.triton_interpret import enable_cpu_interpreter

        enable_cpu_interpreter()
    if args.checkpoint:
        from mamba_rl.lab.policy import load_policy

        try:
            policy, _, _ = load_policy(args.checkpoint, device)
        except ValueError as err:
            print(f"equivalence: error: {err}", file=sys.stderr)
            return 2
        module = policy.module
        if args.dtype:
            module = module.to(_DTYPES[args.dtype])
        print(f"{args.checkpoint}: trunk with {module.num_layers} layer(s), d_model={module.d_model}")
    else:
        torch.manual_seed(args.seed)
        module = MambaModule(
            args.input_size,
            args.d_model,
            args.num_layers,
            d_state=args.d_state,
            d_conv=args.d_conv,
            expand=args.expand,
            in_key="observation",
            out_key="features",
            device=device,
            dtype=_DTYPES[args.dtype or "float32"],
        )
    try:
        report = check_equivalence(
            module,
            batch=args.batch,
            steps=args.steps,
            chunk_size=args.chunk,
            reset_prob=args.reset_prob,
            backends=args.backends,
            grad=not args.no_grad,
            seed=args.seed,
        )
    except ValueError as err:
        print(f"equivalence: error: {err}", file=sys.stderr)
        return 2
    print(report)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(report.to_dict(), handle, indent=2)
        print(f"wrote {args.json}")
    return 0 if report.ok else 1
