#!/usr/bin/env bash
# Create .venv (if missing) and install mamba-rl with its dev extra into it.
# On a machine without CUDA, install PyTorch's CPU build first (TORCH_SPEC, default torch==2.13.0),
# so that pip does not pull the multi-GB CUDA build as a dependency.
# GPU users: install the CUDA build of torch into the venv first; this script keeps it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${MAMBA_RL_VENV:-.venv}
py=${PYTHON:-python3}
stamp="$venv/.mamba_rl_installed"
if [ -f "$stamp" ] && [ "$stamp" -nt setup.cfg ]; then
    exit 0
fi
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip="$venv/bin/python -m pip"
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    # shellcheck disable=SC2086  # TORCH_SPEC may carry pip options such as --index-url
    $pip install -q ${TORCH_SPEC:-torch==2.13.0} 2>&1 | grep -v "is ignored: it is neither" >&2 || true
    "$venv/bin/python" -c "import torch"
fi
# pip's notes about the local wheel mirror are noise here
$pip install -q -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
"$venv/bin/python" -c "import mamba_rl" 
touch "$stamp"
