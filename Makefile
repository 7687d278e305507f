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

test: setup
	$(PY) -m pytest -q

test-gpu: setup
	$(PY) -m pytest -q -m gpu
