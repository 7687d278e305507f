"""One ``results.md`` / ``results.csv`` per env from the single-cell sweeps of ``popgym_campaign.sh``.

    python scripts/popgym_table.py runs/popgym

Reads ``<root>/<env>/<controller>_<seed>/results.csv`` and writes ``<root>/<env>/results.md``
with :func:`mamba_rl.training.env_sweep.write_env_tables`: every run, then the MMER (POPGym's max
over training of the mean episode return) mean +- std over seeds per controller. Then
``<root>/learning.md``: per env and controller, each seed's env-steps to the first update whose
training mean episode return reaches a mark (``MARKS``), from the runs' ``progress.csv``: the
MMER says how high a run got, this says how fast.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from mamba_rl.training.env_sweep import write_env_tables
from mamba_rl.training.sweep import read_rows

FINISHED = ("completed", "target_reached")
# Marks of the training mean episode return (POPGym returns lie in [-1, 1]; random play is about
# -0.5 on the card games); CountRecall's policies stay far below 0.9, so it gets a lower mark.
MARKS = {"CountRecall": -0.5}
DEFAULT_MARK = 0.9


def steps_to(progress: Path, mark: float) -> int | None:
    """The ``global_step`` of the first update whose ``train/episode_return`` is >= ``mark``."""
    with open(progress, newline="") as handle:
        for row in csv.DictReader(handle):
            value = row.get("train/episode_return")
            if value not in (None, "") and float(value) >= mark:
                return int(row["global_step"])
    return None


def learning_table(root: Path) -> str:
    """``learning.md``'s markdown: env-steps to the mark per env, controller and seed."""
    lines = [
        "| env | controller | mark | env-steps to the mark, per seed |",
        "|---|---|---:|---|",
    ]
    for env_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for controller in sorted({cell.name.rsplit("_", 1)[0] for cell in env_dir.iterdir() if cell.is_dir()}):
            env_name = ""
            steps = []
            for cell in sorted(env_dir.glob(f"{controller}_*")):
                for progress in sorted(cell.glob("*/progress.csv")):
                    env_name = next(iter(read_rows(cell / "results.csv")), {}).get("env", env_dir.name)
                    mark = next((m for key, m in MARKS.items() if key in env_name), DEFAULT_MARK)
                    found = steps_to(progress, mark)
                    steps.append("never" if found is None else f"{found:,}")
            if steps:
                lines.append(f"| {env_name} | {controller} | {mark} | {' / '.join(steps)} |")
    return "\n".join(lines) + "\n"


def main(root: Path) -> None:
    total = unfinished = 0
    for env_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        rows = [row for csv in sorted(env_dir.glob("*/results.csv")) for row in read_rows(csv)]
        if rows:
            write_env_tables(rows, env_dir)
            print((env_dir / "results.md").read_text())
            total += len(rows)
            unfinished += sum(row["status"] not in FINISHED for row in rows)
    learning = learning_table(root)
    (root / "learning.md").write_text(learning)
    print(learning)
    print(f"{total - unfinished} of {total} cells finished", end="")
    print(f"; {unfinished} stopped early (time_limit, interrupted): run the campaign again" if unfinished else "")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/popgym_table.py RUNS_ROOT")
    main(Path(sys.argv[1]))
