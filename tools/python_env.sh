# Sourced (not run) by every shell script of the repository that starts Python:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/../tools/python_env.sh"
#   python_bin="$(project_python)"
#   require_project_packages "$python_bin" "$(basename "$0")"
#   import_this_checkout      # before running the project's modules
#
# The interpreter is $PYTHON if set, else the repository's .venv/bin/python when it exists (what
# tools/setup_env.sh makes), else python3: never whichever python3 happens to be first on PATH when the
# project has its own. require_project_packages checks, before any real work, that the interpreter has
# every package in requirements.txt; if not it prints one line naming the interpreter and the missing
# package, and the script exits with status 2 (bad input, as everywhere in the project). Sourcing sets
# project_root and defines these functions; the environment changes only when the caller calls one.

project_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

project_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    echo "$PYTHON"
  elif [[ -x "$project_root/.venv/bin/python" ]]; then
    echo "$project_root/.venv/bin/python"
  else
    echo python3
  fi
}

require_project_packages() {
  local python_bin="$1" prog="${2:-$(basename "$0")}"
  if ! command -v "$python_bin" >/dev/null 2>&1; then
    echo "$prog: error: Python interpreter '$python_bin' not found: run 'bash tools/setup_env.sh' or set PYTHON" >&2
    exit 2
  fi
  "$python_bin" "$project_root/tools/check_requirements.py" "$project_root/requirements.txt" \
      --interpreter "$python_bin" --prog "$prog" || exit 2
}

# The scripts run the modules of their own checkout, even where another checkout is installed.
import_this_checkout() {
  export PYTHONPATH="$project_root${PYTHONPATH:+:$PYTHONPATH}"
}
