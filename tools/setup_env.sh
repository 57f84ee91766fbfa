#!/usr/bin/env bash
# Create .venv (if missing) in the repository root, install the requirements into it, then the project
# itself in editable mode (its packages importable from any folder, its console commands on .venv/bin).
#
#   bash tools/setup_env.sh            # then: .venv/bin/python demo_bert.py quickstart
#
# .venv is made with $PYTHON if set, else python3; an existing .venv is kept and completed. Where no
# NVIDIA GPU is present, the CPU build of PyTorch is installed first so that the requirements' torch
# range is already satisfied (no multi-GB CUDA packages); a machine with a GPU keeps, or gets, its own
# CUDA build. The last step checks .venv the way every script checks its interpreter (tools/python_env.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source tools/python_env.sh
base_python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  if ! command -v "$base_python" >/dev/null 2>&1; then
    echo "setup_env.sh: error: Python interpreter '$base_python' not found: install Python 3.10+ or set PYTHON" >&2
    exit 2
  fi
  if ! "$base_python" -m venv .venv; then
    rm -rf .venv
    echo "setup_env.sh: error: '$base_python -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 2
  fi
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" torch
  else
    "${pip[@]}" "torch==2.13.0" || "${pip[@]}" torch --index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
  fi
fi
"${pip[@]}" -r requirements.txt
# The dependencies are in already (one list: requirements.txt, which pyproject.toml reads too).
"${pip[@]}" --no-deps -e .
require_project_packages "$root/.venv/bin/python" setup_env.sh
