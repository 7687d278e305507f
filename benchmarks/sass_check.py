"""Compile every Triton kernel the default configuration launches for sm_90, without a GPU.

The kernels' host code runs on CPU tensors with Triton's driver replaced by one that reports an
sm_90 target and launches nothing: each ``kernel[grid](...)`` goes through Triton's own binding
and specialisation (the same signature, constexprs and 16-byte divisibility as on the GPU, given
the same strides) and compiles to PTX and a cubin with the ptxas that Triton bundles. Outputs are
garbage (nothing runs), so only the compiled code is recorded: for each launch, in launch order,
the kernel's name, its constexprs, the SASS instruction count (``nvdisasm``) and hashes of the PTX
and the SASS with the kernel's name, the line information and the comments removed.

Two trees compile to the same machine code when their JSON files list the same hashes::

    PYTHONPATH=/path/to/tree-a python benchmarks/sass_check.py --out /tmp/a.json
    PYTHONPATH=/path/to/tree-b python benchmarks/sass_check.py --out /tmp/b.json
    python benchmarks/sass_check.py --compare /tmp/a.json /tmp/b.json

Kernels are matched by their position in a case's launches, so renamed kernels still compare.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import torch


class _CompileOnlyDriver:
    """Enough of a Triton driver for compilation: an sm_90 target, device 0, no stream."""

    def __init__(self, capability: int, warp_size: int = 32) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", capability, warp_size)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


def _normalise(text: str, name: str) -> str:
    """PTX or SASS without line information, comments, blank lines and the kernel's own name."""
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        # .loc / .file and the $L__tmp labels that delimit inlined functions are debug information
        if stripped.startswith((".loc", ".file", "//", "$L__info", "$L__debug", "$L__tmp")) or not stripped:
            continue
        line = re.sub(r"//.*$", "", line).rstrip()
        lines.append(line.replace(name, "KERNEL"))
    text = "\n".join(lines)
    # the debug sections at the end of the PTX carry names and line tables only
    return text.split(".section\t.debug")[0].split(".section .debug")[0]


def _sass(cubin: bytes, nvdisasm: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([nvdisasm, "-c", f.name], check=True, capture_output=True, text=True).stdout


def _record_launches(records: list):
    """Patch ``JITFunction.run`` to compile without launching; each compile appends to ``records``."""
    from triton.runtime import jit

    original = jit.JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        compiled = original(self, *args, grid=grid, warmup=True, **kwargs)
        names = self.arg_names
        constexprs = {names[i]: repr(v) for i, v in enumerate(args) if i in self.constexprs}
        constexprs.update({k: repr(v) for k, v in kwargs.items() if k in names})
        options = {k: repr(v) for k, v in kwargs.items() if k not in names}
        records.append((self.fn.__name__, constexprs, options, compiled))
        return compiled

    jit.JITFunction.run = run


def _scan_inputs(b, d, n, L, dtype, *, channels_last=True, reset=True, reset_state=False):
    g = torch.Generator().manual_seed(0)

    def seq(rows):  # [b, rows, L], channels (or states) innermost when channels_last
        t = torch.randn(b, L, rows, generator=g).to(dtype).transpose(1, 2)
        return t if channels_last else t.contiguous()

    inputs = dict(
        u=seq(d),
        delta=seq(d),
        A=-torch.rand(d, n, generator=g) - 0.5,
        B=seq(n),
        C=seq(n),
        D=torch.randn(d, generator=g),
        z=seq(d),
        delta_bias=torch.randn(d, generator=g),
        h0=torch.randn(b, d, n, generator=g),
    )
    mask = None
    if reset:
        mask = torch.zeros(b, L, dtype=torch.bool)
        mask[:, 0] = True
        mask[0, L // 2] = True
    if reset_state:
        inputs["reset_state"] = torch.randn(int(mask.sum()), d, n, generator=g)
    leaves = {k: v.requires_grad_(True) for k, v in inputs.items()}
    return leaves, mask


def case_scan(dtype, channels_last, reset, reset_state, d=256, n=16):
    from mamba_rl.kernels.triton_scan import selective_scan_triton

    def run():
        inputs, mask = _scan_inputs(
            2, d, n, 1024, dtype, channels_last=channels_last, reset=reset, reset_state=reset_state
        )
        y, h = selective_scan_triton(**inputs, delta_softplus=True, reset=mask)
        torch.autograd.backward((y, h), (torch.ones_like(y), torch.ones_like(h)))

    return run


def case_conv(dtype, reset, reset_state):
    from mamba_rl.kernels.triton_conv import causal_conv1d_triton

    def run():
        b, d, L, w = 2, 256, 1024, 4
        g = torch.Generator().manual_seed(0)
        x = torch.randn(b, L, d, generator=g).to(dtype).transpose(1, 2).requires_grad_(True)
        weight = torch.randn(d, w, generator=g).requires_grad_(True)
        bias = torch.randn(d, generator=g).requires_grad_(True)
        init = torch.randn(b, d, w - 1, generator=g).requires_grad_(True)
        mask = torch.zeros(b, L, dtype=torch.bool) if reset else None
        if reset:
            mask[:, 0] = mask[0, 500] = True
        rs = torch.randn(3, d, w - 1, generator=g).requires_grad_(True) if reset_state else None
        y, fin = causal_conv1d_triton(x, weight, bias, init, mask, "silu", rs)
        torch.autograd.backward((y, fin), (torch.ones_like(y), torch.ones_like(fin)))

    return run


def case_step():
    from mamba_rl.kernels import triton_step

    def run():
        envs, d, n, w, R = 64, 256, 16, 4, 8
        g = torch.Generator().manual_seed(0)
        r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
        reset = torch.zeros(envs, dtype=torch.bool)
        reset[3] = True
        conv_state, h = r(envs, d, w - 1), r(envs, d, n)
        x, delta, z, B, C = r(envs, d), r(envs, d), r(envs, d), r(envs, n), r(envs, n)
        weight, A = r(d, w), -torch.rand(d, n, generator=g)
        triton_step.causal_conv1d_step_inplace(x, conv_state, weight, r(d), "silu", reset)
        triton_step.selective_state_step_inplace(h, x, delta, A, B, C, r(d), z, r(d), True, reset)
        xz = r(envs, 2 * d)
        triton_step.mamba_mixer_step(
            xz, conv_state, h, weight, r(d), r(R + 2 * n, d), r(d, R), r(d), A, r(d), reset, torch.empty(envs, d)
        )

    return run


CASES = {
    "scan-fp32-channels_last-reset": case_scan(torch.float32, True, True, False),
    "scan-fp32-channels_last-reset_state": case_scan(torch.float32, True, True, True),
    "scan-bf16-time_major-no_reset": case_scan(torch.bfloat16, False, False, False),
    # channels that do not fill the last program, padded states
    "scan-fp32-channels_last-reset-D80-N6": case_scan(torch.float32, True, True, False, d=80, n=6),
    "conv-fp32-channels_last-reset": case_conv(torch.float32, True, False),
    "conv-bf16-channels_last-reset_state": case_conv(torch.bfloat16, True, True),
    "step-fp32": case_step(),
}


def compile_all(capability: int, only: list[str] | None, dump: str | None = None) -> dict:
    from triton.runtime import driver

    from mamba_rl.kernels import triton_launch

    triton_launch.launch_config["direct"] = False
    driver.set_active(_CompileOnlyDriver(capability))
    nvdisasm = os.path.join(os.path.dirname(__import__("triton").__file__), "backends", "nvidia", "bin", "nvdisasm")
    records: list = []
    _record_launches(records)
    out = {}
    for case, run in CASES.items():
        if only and case not in only:
            continue
        records.clear()
        start = time.time()
        run()
        launches, seen = [], set()
        for name, constexprs, options, compiled in records:
            key = (name, json.dumps(constexprs, sort_keys=True), json.dumps(options, sort_keys=True))
            if key in seen:
                continue
            seen.add(key)
            ptx = _normalise(compiled.asm["ptx"], compiled.metadata.name)
            sass = _normalise(_sass(compiled.asm["cubin"], nvdisasm), compiled.metadata.name)
            if dump:
                stem = os.path.join(dump, f"{case}.{len(launches)}.{name}")
                for ext, text in (("ptx", ptx), ("sass", sass)):
                    with open(f"{stem}.{ext}", "w") as f:
                        f.write(text)
            instructions = [line for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/|\s+[A-Z@]", line)]
            launches.append(
                dict(
                    kernel=name,
                    constexprs=constexprs,
                    options=options,
                    registers=compiled.n_regs if hasattr(compiled, "n_regs") else None,
                    sass_instructions=len(instructions),
                    ptx_sha=hashlib.sha256(ptx.encode()).hexdigest()[:16],
                    sass_sha=hashlib.sha256(sass.encode()).hexdigest()[:16],
                )
            )
        out[case] = launches
        print(f"{case}: {len(launches)} kernels in {time.time() - start:.0f} s", file=sys.stderr)
        for launch in launches:
            print(
                f"  {launch['kernel']:32s} sass {launch['sass_instructions']:6d}  ptx {launch['ptx_sha']}  "
                f"sass {launch['sass_sha']}",
                file=sys.stderr,
            )
    return out


def compare(path_a: str, path_b: str) -> int:
    """Print each launch side by side; exit status 1 when any PTX or SASS hash differs."""
    with open(path_a) as f:
        a = json.load(f)["cases"]
    with open(path_b) as f:
        b = json.load(f)["cases"]
    differ = 0
    for case in sorted(set(a) ^ set(b)):
        print(f"{case}: only in {path_a if case in a else path_b}")
    for case in sorted(set(a) & set(b)):
        la, lb = a[case], b[case]
        print(f"{case}: {len(la)} / {len(lb)} kernels")
        for i in range(max(len(la), len(lb))):
            x = la[i] if i < len(la) else None
            y = lb[i] if i < len(lb) else None
            same_ptx = x is not None and y is not None and x["ptx_sha"] == y["ptx_sha"]
            same_sass = x is not None and y is not None and x["sass_sha"] == y["sass_sha"]
            differ += not (same_ptx and same_sass)
            name_a = x["kernel"] if x else "-"
            name_b = y["kernel"] if y else "-"
            count_a = x["sass_instructions"] if x else "-"
            count_b = y["sass_instructions"] if y else "-"
            verdict = "same" if same_ptx and same_sass else ("same SASS, PTX differs" if same_sass else "DIFFERS")
            print(f"  {name_a:28s} {name_b:28s} sass {count_a} / {count_b}  {verdict}")
    print(f"{differ} launch(es) differ")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="JSON path for the compiled kernels' hashes and counts")
    parser.add_argument("--capability", type=int, default=90, help="CUDA compute capability to compile for")
    parser.add_argument("--cases", nargs="*", choices=list(CASES), help="only these cases (default all)")
    parser.add_argument("--dump", help="folder to write each launch's normalised PTX and SASS into (for diff)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two JSON files and exit")
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("TRITON_INTERPRET=1 runs kernels in the interpreter: unset it to compile them")
    import mamba_rl

    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
    cases = compile_all(args.capability, args.cases, args.dump)
    payload = dict(
        tree=os.path.dirname(os.path.dirname(os.path.abspath(mamba_rl.__file__))),
        capability=args.capability,
        triton=__import__("triton").__version__,
        cases=cases,
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
