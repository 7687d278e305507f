"""Run the Triton kernels on CPU tensors through Triton's interpreter (``TRITON_INTERPRET=1``).

For tests and dry runs without a GPU. Call :func:`enable_cpu_interpreter` before the first import
of a ``mamba_rl.kernels.triton_*`` kernel module (``triton.jit`` reads ``TRITON_INTERPRET`` when it
decorates a kernel). It does three things:

1. sets ``TRITON_INTERPRET=1``;
2. if Triton itself was imported earlier without it (TorchRL imports Triton, so any import of
   ``mamba_rl`` does), Triton's own ``@jit`` library functions (``tl.sum``, ``tl.zeros``,
   ``tl.sigmoid``...) were built for compilation and refuse to be called from an interpreted kernel;
   :func:`_interpret_compiled_library_calls` lets such a call run the function's Python body, which is
   what the interpreter does when it is on from the start;
3. replaces the interpreter's element-by-element ``tl.associative_scan`` (one Python call per
   element: the scan kernels would take minutes even at tiny shapes) by one combine call per
   position along the scanned axis on whole slices: the same arithmetic in the same order.

Every step checks the Triton internals it touches and does nothing when they differ.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["enable_cpu_interpreter"]


def _interpret_compiled_library_calls() -> None:
    try:
        from triton.runtime import interpreter, jit
    except ImportError:
        return
    function_class = getattr(jit, "JITFunction", None)
    interpreted_class = getattr(interpreter, "InterpretedFunction", None)
    if function_class is None or interpreted_class is None or getattr(function_class, "_mamba_rl_interpreted", False):
        return

    def call(self, *args, **kwargs):
        # kept on the instance: hashing a JITFunction would parse it against the patched language
        fn = self.__dict__.get("_mamba_rl_interpreted_fn")
        if fn is None:
            fn = self.__dict__["_mamba_rl_interpreted_fn"] = interpreted_class(self.fn)
        return fn(*args, **kwargs)

    function_class.__call__ = call
    function_class._mamba_rl_interpreted = True


def _vectorize_interpreter_scan() -> None:
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    scan_ops = getattr(interpreter, "ScanOps", None)
    if scan_ops is None or not hasattr(scan_ops, "generic_scan") or not hasattr(scan_ops, "to_tensor"):
        return
    if getattr(scan_ops, "_mamba_rl_vectorized", False):
        return

    def generic_scan(self, input):
        data = [arg.handle.data for arg in input]
        axis = self.axis
        outs = [np.empty_like(x) for x in data]
        acc = None
        for i in range(data[0].shape[axis]):
            cur = tuple(self.to_tensor(np.take(x, i, axis=axis), arg.dtype) for x, arg in zip(data, input))
            if acc is None:
                acc = cur
            else:
                ret = self.combine_fn.fn(*acc, *cur)
                acc = ret if isinstance(ret, tuple) else (ret,)
            index = [slice(None)] * data[0].ndim
            index[axis] = i
            for out, value in zip(outs, acc):
                out[tuple(index)] = np.reshape(value.handle.data, out[tuple(index)].shape)
        return [self.to_tensor(out, arg.dtype) for out, arg in zip(outs, input)]

    scan_ops.generic_scan = generic_scan
    scan_ops._mamba_rl_vectorized = True


def enable_cpu_interpreter() -> None:
    """Make the Triton kernels run on CPU tensors (see the module docstring)."""
    os.environ["TRITON_INTERPRET"] = "1"
    _interpret_compiled_library_calls()
    _vectorize_interpreter_scan()
