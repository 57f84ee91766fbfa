"""How users start things: documented scripts by path and as modules from any folder (the project installed
editable, as tools/setup_env.sh does), the console commands of pyproject.toml, and the interpreter that the
repository's shell scripts pick and check (tools/python_env.sh, tools/check_requirements.py)."""
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10: the backport, which import-linter (requirements.txt) brings
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parent.parent

# Every script the README and docs/ tell users to run: (module, path). Each answers --help with its usage.
DOCUMENTED = [
    ("demo_bert", "demo_bert.py"),
    ("pretraining.run_pretraining", "pretraining/run_pretraining.py"),
    ("finetuning.run_squad", "finetuning/run_squad.py"),
    ("finetuning.run_glue", "finetuning/run_glue.py"),
    ("data.create_pretraining_data", "data/create_pretraining_data.py"),
    ("data.prepare", "data/prepare.py"),
    ("data.pack_pretraining_data", "data/pack_pretraining_data.py"),
    ("data.vocab", "data/vocab.py"),
    ("data.builtin.generate", "data/builtin/generate.py"),
    ("data.quickstart", "data/quickstart.py"),
    ("data.pack_pretraining_data", "data/pack_pretraining_data.py"),
    ("data.packing_plan", "data/packing_plan.py"),
    ("tools.report", "tools/report.py"),
    ("tools.predict", "tools/predict.py"),
    ("tools.habana_model_runner", "tools/habana_model_runner.py"),
]
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CONSOLE_COMMANDS = PYPROJECT["project"]["scripts"]


def bare_env() -> dict:
    """The environment a user has: no PYTHONPATH pointing at the checkout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture(scope="module")
def installed_here(tmp_path_factory) -> None:
    """Skip (fail under CI) unless this interpreter has this checkout installed (pip install -e .)."""
    probe = subprocess.run([sys.executable, "-c", "import central, demo_bert; print(central.__file__)"],
                           cwd=tmp_path_factory.mktemp("elsewhere"), env=bare_env(), capture_output=True, text=True)
    where = Path(probe.stdout.strip()).resolve().parent.parent if probe.returncode == 0 else None
    if where != REPO_ROOT.resolve():
        reason = (f"{sys.executable} has not installed this checkout ({REPO_ROOT}) editable: "
                  f"{'it imports ' + str(where) if where else probe.stderr.strip().splitlines()[-1]}; "
                  "run bash tools/setup_env.sh")
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.mark.parametrize("module, path", DOCUMENTED, ids=[path for _, path in DOCUMENTED])
def test_documented_script_runs_by_path_and_as_module_from_any_folder(module, path, installed_here, tmp_path):
    for argv in ([sys.executable, str(REPO_ROOT / path), "--help"], [sys.executable, "-m", module, "--help"]):
        done = subprocess.run(argv, cwd=tmp_path, env=bare_env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (argv, done.stderr[-2000:])
        assert done.stdout.startswith("usage:"), (argv, done.stdout[:300])


def test_every_documented_script_is_listed():
    """The list above covers every `python -m X` / `python X.py` of the README and docs/ outside benchmarks/."""
    import re

    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    text = "\n".join(page.read_text(encoding="utf-8") for page in pages)
    named = set(re.findall(r"python -m ((?:data|pretraining|finetuning|tools)\.[\w.]+)", text))
    named |= {p[:-3].replace("/", ".") for p in re.findall(r"python ((?:tools|data|pretraining|finetuning)/[\w/]+\.py)",
                                                          text)}
    assert named, "no script found in README.md"
    assert named <= {module for module, _ in DOCUMENTED}, named - {module for module, _ in DOCUMENTED}


@pytest.mark.parametrize("command", sorted(CONSOLE_COMMANDS))
def test_console_command_answers_help(command, installed_here, tmp_path):
    executable = Path(sys.executable).parent / command
    assert executable.is_file(), f"{executable}: not installed (pip install -e . installs the console commands)"
    done = subprocess.run([str(executable), "--help"], cwd=tmp_path, env=bare_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:"), done.stdout[:300]


def test_console_commands_name_functions_that_exist():
    """Without installing: each [project.scripts] target is a callable of the checkout."""
    import importlib

    assert {"demo-bert", "bert-run-pretraining", "bert-run-squad", "bert-run-glue"} <= set(CONSOLE_COMMANDS)
    for command, target in CONSOLE_COMMANDS.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), command


def test_package_discovery_covers_every_project_package():
    """pyproject.toml's include patterns find each package of the checkout, and nothing test-only."""
    from fnmatch import fnmatch

    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {str(p.parent.relative_to(REPO_ROOT)).replace("/", ".") for p in REPO_ROOT.glob("*/**/__init__.py")
                if not any(part.startswith(".") for part in p.parts)}
    found = {p for p in packages if any(fnmatch(p, pattern) for pattern in patterns)}
    assert found >= {"central", "pretraining", "finetuning", "data", "data.builtin", "tools"}
    assert packages - found <= {"benchmarks"}, packages - found


# ---------------------------------------------------------------- the shell scripts' interpreter
def run_bash(script: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_interpreter_choice_is_python_then_dot_venv_then_python3(tmp_path):
    """$PYTHON if set, else <repo>/.venv/bin/python when it exists, else python3."""
    fake_repo = tmp_path / "repo"
    (fake_repo / "tools").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "tools" / "python_env.sh", fake_repo / "tools")
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    script = (f"source {fake_repo}/tools/python_env.sh && project_python"
              " && import_this_checkout && echo \"$PYTHONPATH\"")
    assert run_bash(script, tmp_path, env).stdout.split("\n")[0] == "python3"
    venv_python = fake_repo / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("#!/bin/sh\n")
    venv_python.chmod(venv_python.stat().st_mode | stat.S_IXUSR)
    first, pythonpath = run_bash(script, tmp_path, env).stdout.split("\n")[:2]
    assert first == str(venv_python)
    assert pythonpath.split(":")[0] == str(fake_repo)  # the script's own checkout is imported first
    assert run_bash(script, tmp_path, dict(env, PYTHON="/opt/other/python")).stdout.split("\n")[0] == \
        "/opt/other/python"


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    """A virtual environment without any package (not even pip): python3 as a fresh machine has it."""
    folder = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    return folder / "bin" / "python"


def test_script_refuses_an_interpreter_without_the_requirements(bare_python, tmp_path, child_env):
    env = dict(child_env, PYTHON=str(bare_python), BERT_PREP_WORKING_DIR=str(tmp_path))
    done = subprocess.run(["bash", str(REPO_ROOT / "data" / "create_datasets_from_start.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"create_datasets_from_start.sh: error: {bare_python} ")
    assert "cannot import torch (requirements.txt: torch>=" in done.stderr  # the first requirement it lacks
    assert "tools/setup_env.sh" in done.stderr
    assert not any(tmp_path.iterdir())  # stopped before any real work


def test_script_refuses_an_interpreter_that_does_not_exist(tmp_path, child_env):
    env = dict(child_env, PYTHON=str(tmp_path / "no-such-python"), BERT_PREP_WORKING_DIR=str(tmp_path))
    done = subprocess.run(["bash", str(REPO_ROOT / "data" / "create_datasets_from_start.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"'{tmp_path / 'no-such-python'}' not found" in done.stderr


def test_setup_refuses_a_missing_base_interpreter(tmp_path):
    """tools/setup_env.sh makes .venv with $PYTHON (else python3): a wrong one is one line, exit 2, no .venv."""
    fake_repo = tmp_path / "repo"
    (fake_repo / "tools").mkdir(parents=True)
    for name in ("setup_env.sh", "python_env.sh"):
        shutil.copy(REPO_ROOT / "tools" / name, fake_repo / "tools")
    env = dict(os.environ, PYTHON=str(tmp_path / "no-such-python"))
    done = subprocess.run(["bash", str(fake_repo / "tools" / "setup_env.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"setup_env.sh: error: Python interpreter '{tmp_path / 'no-such-python'}' not found: " \
                          "install Python 3.10+ or set PYTHON\n"
    assert not (fake_repo / ".venv").exists()


def test_requirements_check_names_the_first_missing_package(tmp_path, capsys):
    from tools import check_requirements

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\npytest>=7  # inline comment\n"
                            "surely-not-installed-pkg>=1; platform_system == 'NoSuchSystem'\n"
                            "another-missing_pkg==0.1\nthird-missing\n")
    assert check_requirements.main([str(requirements), "--interpreter", "py", "--prog", "x.sh"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"x.sh: error: py ({sys.executable}) cannot import another-missing_pkg "
                          "(requirements.txt: another-missing_pkg==0.1): run 'bash tools/setup_env.sh'")
    assert err.count("\n") == 1  # the marker excluded the first missing one; only the first is named
    requirements.write_text("pytest\nPyYAML>=1\n")  # names as pip spells them (PyYAML imports as yaml)
    assert check_requirements.main([str(requirements)]) == 0
