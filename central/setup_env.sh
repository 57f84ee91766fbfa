#!/usr/bin/env bash
# Create .venv (if missing) in the repository root and install the requirements into it.
# Where no NVIDIA GPU is present, the CPU build of PyTorch is installed first so that the
# requirements' torch range is already satisfied (no multi-GB CUDA packages); a machine with a
# GPU keeps, or gets, its own CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
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
