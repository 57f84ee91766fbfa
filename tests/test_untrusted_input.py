"""No code runs from a file or a user string: an AST scan of every .py file of the repository, and the
launcher's handling of an output path full of shell syntax (dry run: the printed lines are shell-safe).

The real runs (a pre-training run under such a path, the exported safetensors) are in
test_reliability_runs.py; the refusal of a checkpoint carrying a pickled callable is in
test_pretraining_faults.py and in the bad-input cases (tests/bad_input_cases.yaml, *-ckpt-pickle).
"""
import ast
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "build", "dist", "node_modules"}

# A path no shell may ever see unquoted: spaces, ;, $(...), backticks, &, quotes, a glob.
SHELL_BAIT = "run dir; $(touch PWNED1) `touch PWNED2` & touch PWNED3 'x\" *"


def python_files() -> List[Path]:
    found = []
    for folder, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        found += [Path(folder) / f for f in files if f.endswith(".py")]
    return sorted(found)


def _dotted(node: ast.AST) -> str:
    """'torch.serialization.load' for that attribute chain; '' for anything that is not a plain name chain."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id] + parts[::-1])
    return ""


def _aliases(tree: ast.AST) -> dict:
    """local name -> full dotted name, from the file's imports (``import torch as th``, ``from torch import load``)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def calls(tree: ast.AST) -> Iterator[Tuple[str, ast.Call]]:
    """(full dotted name of the callee, call) for every call whose callee is a name chain."""
    aliases = _aliases(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name:
                head, _, rest = name.partition(".")
                full = aliases.get(head, head)
                yield (f"{full}.{rest}" if rest else full), node


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


TORCH_LOADS = {"torch.load", "torch.serialization.load"}
UNPICKLERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "dill.load",
              "dill.loads", "cloudpickle.load", "cloudpickle.loads", "marshal.load", "marshal.loads", "shelve.open",
              "pandas.read_pickle", "joblib.load", "yaml.load", "yaml.unsafe_load", "yaml.full_load"}
SHELLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput", "pty.spawn",
          "commands.getoutput"}
SUBPROCESS = {"subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call",
              "subprocess.check_output"}


def problems(source: str, filename: str) -> List[str]:
    """Every unsafe load or shell use in one file, as 'file:line: what'."""
    found = []
    for name, call in calls(ast.parse(source, filename)):
        where = f"{filename}:{call.lineno}"
        if name in TORCH_LOADS and not _is_true(_keyword(call, "weights_only")):
            found.append(f"{where}: {name} without weights_only=True")
        elif name in UNPICKLERS:
            found.append(f"{where}: {name} can run code from the file")
        elif name == "numpy.load" and not (_keyword(call, "allow_pickle") is None
                                           or isinstance(_keyword(call, "allow_pickle"), ast.Constant)
                                           and _keyword(call, "allow_pickle").value is False):
            found.append(f"{where}: numpy.load with allow_pickle")
        elif name in SHELLS:
            found.append(f"{where}: {name} runs a shell")
        elif name in SUBPROCESS and _keyword(call, "shell") is not None and not (
                isinstance(_keyword(call, "shell"), ast.Constant) and _keyword(call, "shell").value is False):
            found.append(f"{where}: {name} with shell=")
        elif name.endswith(".save_pretrained") and _keyword(call, "safe_serialization") is not None and not _is_true(
                _keyword(call, "safe_serialization")):
            found.append(f"{where}: save_pretrained without safetensors")
        elif name in ("eval", "exec") and call.args and not isinstance(call.args[0], ast.Constant):
            found.append(f"{where}: {name} of a computed string")
        remote = _keyword(call, "trust_remote_code")
        if remote is not None and not (isinstance(remote, ast.Constant) and remote.value is False):
            found.append(f"{where}: trust_remote_code runs code from the hub")
    return found


def test_the_scanner_finds_what_it_looks_for():
    bad = """
import torch, torch as th, pickle, subprocess, os, numpy as np
from torch import load as tload
torch.load(p)
th.load(p, weights_only=False)
tload(p)
torch.serialization.load(p, map_location="cpu")
pickle.loads(blob)
np.load(p, allow_pickle=True)
subprocess.run("ls " + p, shell=True)
os.system(cmd)
model.save_pretrained(d, safe_serialization=False)
eval(text)
AutoModel.from_pretrained(name, trust_remote_code=True)
"""
    flagged = [int(line.split(":")[1]) for line in problems(bad, "bad.py")]
    assert flagged == list(range(4, 15)), problems(bad, "bad.py")  # every line after the imports
    good = """
import torch, subprocess, numpy as np
torch.load(p, weights_only=True, map_location="cpu")
np.load(p)
subprocess.run([exe, "-m", module, *argv])
model.save_pretrained(d)
"""
    assert problems(good, "good.py") == []


def test_no_file_in_the_repository_unpickles_or_runs_a_shell():
    files = python_files()
    assert REPO_ROOT / "demo_bert.py" in files and REPO_ROOT / "central" / "checkpoint.py" in files
    found, torch_loads = [], 0
    for path in files:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, str(path))
        torch_loads += sum(name in TORCH_LOADS for name, _ in calls(tree))
        found += problems(source, str(path.relative_to(REPO_ROOT)))
    assert not found, "\n".join(found)
    assert torch_loads >= 1  # central/checkpoint.safe_load at least: the scan saw real calls


# ------------------------------------------------------------------------------ the launcher and a shell
@pytest.fixture
def shards(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "wiki_training_0.hdf5").write_bytes(b"")
    return folder


def _demo(child_env, cwd, *argv):
    return subprocess.run([sys.executable, str(REPO_ROOT / "demo_bert.py"), *argv], capture_output=True, text=True,
                          env=child_env, cwd=cwd, timeout=120)


def test_dry_run_keeps_a_shell_hostile_output_dir_literal_and_prints_shell_safe_lines(shards, tmp_path, child_env):
    out = tmp_path / SHELL_BAIT
    for command, extra in (("pretraining", ["-p", str(shards), str(shards)]),
                           ("finetuning", ["-p", str(shards), "--task_name", "squad"])):
        result = _demo(child_env, tmp_path, command, "--model_name_or_path", "tiny", "--data_type", "fp32",
                       "-d", "cpu", "-o", str(out), "--dry_run", "--world_size", "2", "--dist", *extra)
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if line and not line.startswith("export ")]
        for line in lines:
            argv = shlex.split(line)
            outputs = [a for a in argv if a.startswith("--output_dir")]
            assert len(outputs) == 1 and str(out) in outputs[0], argv
            # Let bash parse the printed line as the user would by pasting it, but print the words instead
            # of running them: any unquoted $(...), `...`, ; or & would run `touch` here.
            parsed = subprocess.run(["bash", "-c", "printf '%s\\0' " + line], capture_output=True, cwd=tmp_path,
                                    timeout=30)
            assert parsed.returncode == 0, parsed.stderr
            assert parsed.stdout.decode().split("\0")[:-1] == argv
    assert not list(tmp_path.rglob("PWNED*")), "a shell ran part of the output path"
    assert not out.exists()  # a dry run writes nothing
