"""Shared helpers of the launcher tests: fake datasets and reading back what a dry run printed."""
import shlex
from pathlib import Path
from typing import Dict, List, Tuple

from launcher.options import SCRIPT_MODULES

SHARD_NAME = "books_wiki_en_corpus_training_0.hdf5"


def make_shard_dirs(root: Path) -> Tuple[Path, Path]:
    """Two pre-training dataset folders, each holding one (empty) file named like a training shard."""
    dirs = []
    for phase in (1, 2):
        folder = root / f"phase{phase}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SHARD_NAME).write_bytes(b"")
        dirs.append(folder)
    return dirs[0], dirs[1]


def parse_dry_run(text: str) -> Tuple[Dict[str, str], List[List[str]]]:
    """(environment from the export lines, argv of each command line) of a --dry_run output."""
    env, commands = {}, []
    for line in text.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            env[name] = shlex.split(value)[0] if value else ""
        elif line and not line.startswith("#"):
            commands.append(shlex.split(line))
    return env, commands


def split_script(argv: List[str]) -> Tuple[List[str], str, List[str]]:
    """(launcher part, script module, script flags) of one command's argv."""
    for i in range(len(argv) - 1):
        if argv[i] == "-m" and argv[i + 1] in SCRIPT_MODULES:
            return argv[:i], argv[i + 1], argv[i + 2:]
    raise AssertionError(f"no training script module in {argv}")


def script_parser(module: str):
    """The target script's own argument parser (the one source of truth for its flags)."""
    import importlib

    return importlib.import_module(module).build_parser()
