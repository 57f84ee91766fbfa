"""Check that a Python interpreter has every package that requirements.txt lists; one line and exit 2 if not.

    python tools/check_requirements.py requirements.txt [--interpreter NAME] [--prog PROG]

The repository's shell scripts run this (through tools/python_env.sh) with the interpreter they are about
to use, before any real work, so that a wrong interpreter ends with one line naming it and the first
missing package instead of a traceback from deep inside a later step. It runs by path with the standard
library only: the interpreter under test may have nothing installed. requirements.txt stays the one list
of what the project needs.
"""
from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import List, Optional, Tuple

MIN_PYTHON = (3, 10)
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_lines(path: Path) -> List[Tuple[str, str]]:
    """(distribution name, the requirement as written) for each line of a requirements file."""
    found = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        match = NAME.match(line)
        if match is None:
            raise ValueError(f"{path}: cannot read the requirement {line!r}")
        found.append((match.group(1), line))
    return found


def applies_here(requirement: str) -> bool:
    """Whether the requirement's environment marker (after ';') holds for this interpreter.

    Markers are evaluated with `packaging` when the interpreter has it; without it (a bare interpreter)
    every requirement counts, which at worst names another missing package first.
    """
    if ";" not in requirement:
        return True
    try:
        from packaging.markers import Marker
    except ImportError:
        return True
    return Marker(requirement.split(";", 1)[1].strip()).evaluate()


def first_missing(path: Path) -> Optional[Tuple[str, str]]:
    """(name, requirement as written) of the first package this interpreter lacks, or None."""
    for name, requirement in requirement_lines(path):
        if not applies_here(requirement):
            continue
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            return name, requirement
    return None


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("requirements", type=Path, help="the requirements file (requirements.txt)")
    parser.add_argument("--interpreter", default=sys.executable, help="the name the caller used for this Python")
    parser.add_argument("--prog", default="check_requirements", help="the script to name in the message")
    args = parser.parse_args(argv)
    who = args.interpreter if args.interpreter == sys.executable else f"{args.interpreter} ({sys.executable})"
    fix = "run 'bash tools/setup_env.sh' (it makes .venv, which the scripts then use) or set PYTHON to an " \
          "interpreter that has the requirements"
    if sys.version_info < MIN_PYTHON:
        version = ".".join(map(str, sys.version_info[:2]))
        need = ".".join(map(str, MIN_PYTHON))
        print(f"{args.prog}: error: {who} is Python {version}; this project needs {need} or newer: {fix}",
              file=sys.stderr)
        return 2
    missing = first_missing(args.requirements)
    if missing is not None:
        name, requirement = missing
        print(f"{args.prog}: error: {who} cannot import {name} ({args.requirements.name}: {requirement}): {fix}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
