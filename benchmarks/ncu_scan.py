"""Run the Triton scan forward+backward a few times at the issue's shapes, for Nsight Compute.

Meant to be run under ``ncu``; the last call is the one to profile (the first ones compile and
warm up)::

    ncu --clock-control none -k regex:_scan_ -s 12 -c 6 --set full --import-source yes \\
        -o scan python benchmarks/ncu_scan.py --T 4096
    ncu --import scan.ncu-rep --page source --csv --print-source sass > scan_source.csv
    python benchmarks/ncu_stalls.py scan_source.csv     # stall reasons per loop and per opcode

``--T`` defaults to 4096: the kernels' time per step does not depend on T once each of the two
backward ranges spans many checkpoint segments, and ncu saves and restores every buffer a kernel
writes for each of its replay passes (B=64, d_inner=256, d_state=16, fp32, channels-last, resets
at 0.5% of steps, h0 given, as in ``bench_scan.py``).
"""

from __future__ import annotations

import argparse
import json

# bench_scan.py sits beside this script (its folder is on sys.path when run as a script)
import bench_scan
import torch

from mamba_rl.kernels import triton_scan
from mamba_rl.kernels.triton_scan import selective_scan_triton


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--T", type=int, default=4096, help="sequence length")
    parser.add_argument("--calls", type=int, default=3, help="forward+backward calls (the last is profiled)")
    parser.add_argument("--config", default="{}", help="SCAN_CONFIG overrides as JSON, e.g. '{\"ck_steps\": 16}'")
    args = parser.parse_args()
    overrides = json.loads(args.config)
    unknown = sorted(set(overrides) - set(triton_scan.SCAN_CONFIG))
    if unknown:
        raise SystemExit(
            f"--config: unknown SCAN_CONFIG keys {unknown}; expected some of {sorted(triton_scan.SCAN_CONFIG)}"
        )
    triton_scan.SCAN_CONFIG.update(overrides)
    if args.T < 1 or args.calls < 1:
        raise SystemExit(f"--T and --calls must be >= 1, got {args.T} and {args.calls}")
    if not torch.cuda.is_available():
        raise SystemExit("ncu_scan.py needs a CUDA device")
    b, d, n = 64, 256, 16
    inputs, reset = bench_scan.scan_inputs(b, d, n, args.T, torch.float32)
    dy = torch.randn(b, args.T, d, device="cuda").transpose(1, 2)
    dh = torch.randn(b, d, n, device="cuda")
    for _ in range(args.calls):
        for t in inputs.values():
            t.grad = None
        bench_scan.scan_fwd_bwd(selective_scan_triton, inputs, reset, dy, dh)
    torch.cuda.synchronize()
    print(f"ran {args.calls} scan fwd+bwd calls at B={b} d={d} n={n} T={args.T}, SCAN_CONFIG {triton_scan.SCAN_CONFIG}")


if __name__ == "__main__":
    main()
