"""Launch a Triton kernel's compiled binary directly once it exists.

``kernel[grid](*args)`` binds and specialises every argument on every call before it looks up the
compiled binary; with the ~60 arguments of a scan kernel that is most of a launch's host time, and
at T=1024 the scan's forward+backward is bound by the host (``bench_scan.py scan --host-profile``).
:class:`DirectLauncher` keys the binary itself on what Triton specialises on, so a call with other
shapes, strides, alignments or dtypes still gets (or compiles) the right one:

- a tensor: its dtype and whether its address is a multiple of 16 bytes;
- an int: whether it is 1, whether it is a multiple of 16, whether it fits in 32 bits;
- every keyword: constexpr values and launch options (``num_warps``, ``maxnreg``), by value;
- the device.

The first call of each key goes through ``kernel[grid](...)`` (which compiles when needed); later
ones through the binary's launcher (``compiled[grid](*all_args)``). Runtime arguments are passed
positionally, constexprs by keyword (so the binary's argument list is ``args`` then the constexprs
in signature order). Under ``TRITON_INTERPRET=1``, or with ``launch_config["direct"]`` off, every
call is a plain ``kernel[grid](...)``.
"""

from __future__ import annotations

import os

import torch

__all__ = ["DirectLauncher", "interpreted", "launch_config"]

# set to False to launch every kernel through the JIT (benchmarks compare the two)
launch_config = {"direct": True}

_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1


def interpreted() -> bool:
    """Whether Triton kernels run through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _specialisation(args: tuple) -> tuple:
    """What Triton's JIT specialises a call on, for the runtime arguments ``args``."""
    key = []
    for a in args:
        cls = a.__class__
        if cls is int:
            key.append((a == 1, a % 16 == 0, _I32_MIN <= a <= _I32_MAX))
        elif cls is tuple:
            key.append(_specialisation(a))
        elif isinstance(a, torch.Tensor):
            key.append((a.dtype, a.data_ptr() % 16 == 0))
        elif a is None or cls is bool or cls is float:
            key.append((cls, a) if cls is not float else cls)
        else:
            raise TypeError(
                f"DirectLauncher: runtime argument of type {cls.__name__} not supported "
                f"(expected a tensor, int, float, bool, None or a tuple of them)"
            )
    return tuple(key)


class DirectLauncher:
    """``DirectLauncher(kernel)[grid](*runtime_args, **constexprs_and_options)``; see the module."""

    def __init__(self, kernel):
        self.kernel = kernel
        self._binaries: dict = {}

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self._launch(grid, args, kwargs)

    def _launch(self, grid, args, kwargs):
        if not launch_config["direct"] or interpreted():
            return self.kernel[grid](*args, **kwargs)
        first = args[0]
        device = first.device.index if isinstance(first, torch.Tensor) else None
        key = (device, _specialisation(args), tuple(kwargs.items()))
        hit = self._binaries.get(key)
        if hit is None:
            names = self.kernel.arg_names
            missing = [name for name in names[len(args) :] if name not in kwargs]
            if missing:
                raise TypeError(f"{self.kernel.__name__}: constexpr arguments {missing} must be passed by keyword")
            binary = self.kernel[grid](*args, **kwargs)
            self._binaries[key] = (binary, [kwargs[name] for name in names[len(args) :]])
            return binary
        binary, constexprs = hit
        grid = tuple(grid) + (1,) * (3 - len(grid))
        binary[grid](*args, *constexprs)
        return binary
