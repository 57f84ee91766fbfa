#!/usr/bin/env bash
# The one-command GPU check (issue 22): tests, pre-training and fine-tuning throughput against transformers,
# every line into $OUT/device_check.log (or ./device_check.log). See benchmarks/device_check.py.
#
#   bash benchmarks/device_check.sh             # on a CUDA machine, <= 8 minutes on one H200
#   bash benchmarks/device_check.sh --dry_run   # the same parts on the CPU, tiny (also DEVICE_CHECK_DRY=1)
#
# It runs with the machine's own interpreter ($PYTHON, else this checkout's .venv, else python3) and the
# repository alone: nothing is installed. requirements.txt is deliberately not checked here (a GPU
# machine's python3 lacks the data-preparation packages); each part says in one line what it misses.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../tools/python_env.sh"
python_bin="$(project_python)"
if ! command -v "$python_bin" >/dev/null 2>&1; then
  echo "device_check.sh: error: Python interpreter '$python_bin' not found (set PYTHON)" >&2
  exit 2
fi
import_this_checkout
cd "$project_root" || exit 2
exec "$python_bin" -m benchmarks.device_check "$@"
