"""Rebuild the state lab's test fixture: ``tests/lab/data/memory_policy.pt``.

    python tests/lab/make_fixtures.py

A 1-layer ``MambaModule(d_model=32, d_state=8)`` and a linear head, trained by supervised learning
(:func:`mamba_rl.lab.toy.train_toy_policy`) on the delayed-memory task with 3 bits and a delay of
10 steps, to an accuracy of 1.0. About 30 s on 2 CPU cores; the file is about 60 kB.
"""

from pathlib import Path

import torch

from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.lab.policy import save_lab_policy
from mamba_rl.lab.toy import train_toy_policy

FIXTURE = Path(__file__).parent / "data" / "memory_policy.pt"
PARAMS = DelayedMemoryParams(num_bits=3, horizon=10)


def main() -> None:
    torch.set_num_threads(1)
    policy, info = train_toy_policy(PARAMS, d_model=32, d_state=8, iterations=400, seed=0, log_every=100)
    print(info)
    extra = {"trained_by": "tests/lab/make_fixtures.py", **info}
    save_lab_policy(FIXTURE, policy.module, policy.head, PARAMS, extra=extra)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
