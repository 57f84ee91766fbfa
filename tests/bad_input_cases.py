"""The bad-input cases (tests/bad_input_cases.yaml): loaded for the test, rendered for people.

One source of truth: ``tests/bad_input_cases.yaml`` lists every case; ``tests/test_bad_input_matrix.py``
runs them, and ``docs/bad-input.md`` shows them. The document's legend and table sit between two marker
lines and are generated from the YAML file; its prose around them is written by hand. A test fails when
the generated part differs from what the YAML file gives, so after editing the cases run

    python tests/bad_input_cases.py --write      # rewrite docs/bad-input.md's generated part
    python tests/bad_input_cases.py --check      # exit 1 if it is out of date
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CASES_FILE = Path(__file__).with_name("bad_input_cases.yaml")
DOC_FILE = REPO_ROOT / "docs" / "bad-input.md"
BEGIN = "<!-- begin: generated from tests/bad_input_cases.yaml by python tests/bad_input_cases.py --write -->"
END = "<!-- end: generated -->"
FIELDS = {"id", "what", "command", "message", "also_tested_in"}


@dataclass(frozen=True)
class Case:
    id: str
    what: str                      # the bad input, in words (Markdown)
    command: str                   # the command line, with {macros} and {inputs}
    message: str                   # what the one stderr line contains
    also_tested_in: str = ""       # other tests of the same check


@dataclass(frozen=True)
class CaseTable:
    macros: Dict[str, str]         # {name} -> the words it stands for
    inputs: Dict[str, str]         # {name} -> what the test builds there, in words
    cases: List[Case]


def load(path: Path = CASES_FILE) -> CaseTable:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    cases = []
    for entry in data["cases"]:
        unknown = set(entry) - FIELDS
        assert not unknown, f"{path}: case {entry.get('id')}: unknown fields {sorted(unknown)}"
        cases.append(Case(**{key: str(value) for key, value in entry.items()}))
    return CaseTable(dict(data["macros"]), dict(data["inputs"]), cases)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{_cell(text)}`"


def render(table: CaseTable) -> str:
    """The legend and the table, in Markdown (the generated part of docs/bad-input.md)."""
    lines = ["In the commands, `demo_bert.py` is `python demo_bert.py`, and these stand for:", ""]
    lines += [f"- `{{{name}}}` = `{words}`" for name, words in table.macros.items()]
    lines += [f"- `{{{name}}}`: {what}" for name, what in table.inputs.items()]
    lines += ["", "| id | bad input | command | message (the stderr line contains) | also tested in |",
              "|---|---|---|---|---|"]
    for case in table.cases:
        cells = [_code(case.id), _cell(case.what), _code(case.command), _code(case.message),
                 _cell(case.also_tested_in)]
        lines.append("|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|")
    return "\n".join(lines) + "\n"


def generated_part(doc_text: str) -> Optional[str]:
    """The text between the marker lines of docs/bad-input.md (None when a marker is missing)."""
    if BEGIN not in doc_text or END not in doc_text:
        return None
    return doc_text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def with_generated_part(doc_text: str, part: str) -> str:
    head, rest = doc_text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    return f"{head}{BEGIN}\n{part}{END}{tail}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Render tests/bad_input_cases.yaml into docs/bad-input.md.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="rewrite the generated part of the document")
    action.add_argument("--check", action="store_true", help="exit 1 if the document is out of date")
    args = parser.parse_args(argv)
    doc = DOC_FILE.read_text(encoding="utf-8")
    if generated_part(doc) is None:
        print(f"{DOC_FILE}: error: the marker lines are missing:\n{BEGIN}\n{END}", file=sys.stderr)
        return 2
    part = render(load())
    if args.check:
        if generated_part(doc) != part:
            print(f"{DOC_FILE}: out of date; run python tests/bad_input_cases.py --write", file=sys.stderr)
            return 1
        return 0
    DOC_FILE.write_text(with_generated_part(doc, part), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
