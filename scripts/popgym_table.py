"""One ``results.md`` / ``results.csv`` per env from the single-cell sweeps of ``popgym_campaign.sh``.

    python scripts/popgym_table.py runs/popgym

Reads ``<root>/<env>/<controller>_<seed>/results.csv`` and writes ``<root>/<env>/results.md``
with :func:`mamba_rl.training.env_sweep.write_env_tables`: every run, then the MMER (POPGym's max
over training of the mean episode return) mean +- std over seeds per controller.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mamba_rl.training.env_sweep import write_env_tables
from mamba_rl.training.sweep import read_rows

FINISHED = ("completed", "target_reached")


def main(root: Path) -> None:
    total = unfinished = 0
    for env_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        rows = [row for csv in sorted(env_dir.glob("*/results.csv")) for row in read_rows(csv)]
        if rows:
            write_env_tables(rows, env_dir)
            print((env_dir / "results.md").read_text())
            total += len(rows)
            unfinished += sum(row["status"] not in FINISHED for row in rows)
    print(f"{total - unfinished} of {total} cells finished", end="")
    print(f"; {unfinished} stopped early (time_limit, interrupted): run the campaign again" if unfinished else "")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/popgym_table.py RUNS_ROOT")
    main(Path(sys.argv[1]))
