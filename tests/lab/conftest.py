"""Shared pieces of the state lab's tests: the small trained policy saved beside them."""

from pathlib import Path

import pytest

from mamba_rl.lab import load_policy

FIXTURE = Path(__file__).parent / "data" / "memory_policy.pt"


@pytest.fixture(scope="session")
def memory_policy():
    """``(policy, params)``: 1 layer, d_model 32, d_state 8, 3 bits, delay 10, accuracy 1.0
    (rebuilt by ``python tests/lab/make_fixtures.py``)."""
    policy, params, _ = load_policy(FIXTURE)
    return policy, params
