"""Summarise Nsight Compute's per-instruction warp-stall samples (its source page, SASS, as CSV).

For each kernel: the share of samples per stall reason, then the instructions with the most
samples (address, share of all, share waiting on the long scoreboard, the instruction)::

    ncu --import scan.ncu-rep --page source --csv --print-source sass > scan_source.csv
    python benchmarks/ncu_stalls.py scan_source.csv [--top 12] [--kernel _scan_bwd_kernel]
"""

from __future__ import annotations

import argparse
import collections
import csv
import io
import re

SAMPLES = "Warp Stall Sampling (All Samples)"


def kernels(text: str):
    """``(kernel name, header, rows)`` per kernel block of ncu's source-page CSV."""
    for block in re.split(r'^"Kernel Name",', text, flags=re.M)[1:]:
        first, _, body = block.partition("\n")
        rows = list(csv.reader(io.StringIO(body)))
        if not rows:
            continue
        header = rows[0]
        yield first.strip().strip(",").strip('"'), header, [r for r in rows[1:] if len(r) >= len(header)]


def summarise(name: str, header: list[str], rows: list[list[str]], top: int) -> str:
    col = {h: i for i, h in enumerate(header)}
    missing = [h for h in (SAMPLES, "Source", "Address") if h not in col]
    if missing:
        raise SystemExit(f"{name}: the CSV lacks the columns {missing}; expected ncu's source page with SASS")

    def value(row, key):
        try:
            return float(row[col[key]] or 0)
        except ValueError:
            return 0.0

    reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
    per_reason = collections.Counter({h[len("stall_") :]: sum(value(r, h) for r in rows) for h in reasons})
    total = sum(value(r, SAMPLES) for r in rows) or 1.0
    lines = [
        f"{name}: {int(total)} samples, {len(rows)} instructions",
        "  " + " ".join(f"{k}={v / total:.1%}" for k, v in per_reason.most_common(10) if v),
    ]
    for r in sorted(rows, key=lambda r: -value(r, SAMPLES))[:top]:
        long_sb = value(r, "stall_long_sb") / total if "stall_long_sb" in col else 0.0
        lines.append(
            f"  {r[col['Address']]}  {value(r, SAMPLES) / total:6.2%}  long_sb {long_sb:6.2%}  "
            f"{r[col['Source']].strip()}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", help="ncu --page source --csv --print-source sass output")
    parser.add_argument("--top", type=int, default=12, help="instructions listed per kernel")
    parser.add_argument("--kernel", default=None, help="only kernels whose name contains this")
    args = parser.parse_args()
    with open(args.csv) as f:
        text = f.read()
    found = False
    for name, header, rows in kernels(text):
        if args.kernel and args.kernel not in name:
            continue
        found = True
        print(summarise(name, header, rows, args.top))
    if not found:
        raise SystemExit(f"no kernel{' matching ' + repr(args.kernel) if args.kernel else ''} in {args.csv}")


if __name__ == "__main__":
    main()
