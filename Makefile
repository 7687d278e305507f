# Quickstart targets. Each one creates .venv and installs mamba-rl (CPU torch unless torch is
# already in the venv) on first use; see scripts/setup_env.sh.
PY := .venv/bin/python
.PHONY: setup demo train-quick lint test test-gpu

setup:
	@bash scripts/setup_env.sh

demo: setup
	$(PY) examples/demo_rollout.py

train-quick: setup
	$(PY) train.py --config configs/quick_cpu.yaml

# ruff's version is pinned in setup.cfg's dev extra, so every machine lints alike
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# CI's machine has 2 cores; most of the suite is single-threaded Python (the Triton interpreter),
# so one pytest worker per core (pytest-xdist) about halves the wall time
TEST_WORKERS ?= 2

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

test-gpu: setup
	$(PY) -m pytest -q -m gpu
