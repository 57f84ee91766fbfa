"""Read and validate SQuAD v1.1 JSON files (the official format).

    {"version": "1.1", "data": [{"title": ..., "paragraphs": [{"context": ...,
        "qas": [{"id": ..., "question": ..., "answers": [{"text": ..., "answer_start": int}]}]}]}]}

``read_squad(path)`` returns one ``SquadExample`` per question; anything malformed raises
``SquadDataError`` with a single line naming the file and the first problem found (its JSON path).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple, Union

from central.errors import BadInputError

SUPPORTED_VERSION = "1.1"


class SquadDataError(BadInputError):
    """A SQuAD file is missing or malformed; the message is one line for the user."""


@dataclass
class SquadExample:
    qid: str
    question: str
    context: str
    answers: List[Tuple[str, int]] = field(default_factory=list)  # (text, start character in context)
    title: str = ""


def resolve_data_file(name: str, data_dir: Optional[str], flag: str) -> Path:
    """``--train_file``/``--predict_file``: a name inside --data_dir, or a path of its own."""
    path = Path(name).expanduser()
    if not path.is_absolute() and data_dir is not None and not path.exists():
        path = Path(data_dir).expanduser() / name
    if not path.is_file():
        where = f" (looked in --data_dir {data_dir})" if data_dir is not None and not Path(name).is_absolute() else ""
        raise SquadDataError(f"{flag} {name}: no such file{where}")
    return path


def _require(value, kind, where: str, path: Path):
    if not isinstance(value, kind):
        expected = {list: "a list", dict: "an object", str: "a string", int: "an integer"}.get(kind, str(kind))
        found = "missing" if value is None else f"a {type(value).__name__}"
        raise SquadDataError(f"SQuAD file {path}: {where} must be {expected}, found {found}")
    return value


def read_squad(path: Union[str, Path], require_answers: bool = True) -> List[SquadExample]:
    """All questions of a SQuAD v1.1 file, in file order. Answers are checked against their context."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError:
        raise SquadDataError(f"SQuAD file {path}: no such file")
    except UnicodeDecodeError as err:
        raise SquadDataError(f"SQuAD file {path}: not UTF-8 text ({err.reason} at byte {err.start})")
    except json.JSONDecodeError as err:
        raise SquadDataError(f"SQuAD file {path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})")
    except OSError as err:
        raise SquadDataError(f"SQuAD file {path}: cannot be read ({err.strerror or err})")

    _require(document, dict, "the top level", path)
    version = document.get("version")
    if version is not None and str(version) != SUPPORTED_VERSION:
        raise SquadDataError(f"SQuAD file {path}: version {version!r} is not supported (this reads SQuAD v1.1; "
                             f"v2.0 files with unanswerable questions are a different task)")
    articles = _require(document.get("data"), list, '"data"', path)
    examples, seen = [], set()
    for a, article in enumerate(articles):
        where = f"data[{a}]"
        _require(article, dict, where, path)
        title = article.get("title", "")
        for p, paragraph in enumerate(_require(article.get("paragraphs"), list, f"{where}.paragraphs", path)):
            pwhere = f"{where}.paragraphs[{p}]"
            _require(paragraph, dict, pwhere, path)
            context = _require(paragraph.get("context"), str, f"{pwhere}.context", path)
            for q, qa in enumerate(_require(paragraph.get("qas"), list, f"{pwhere}.qas", path)):
                qwhere = f"{pwhere}.qas[{q}]"
                _require(qa, dict, qwhere, path)
                qid = _require(qa.get("id"), str, f"{qwhere}.id", path)
                question = _require(qa.get("question"), str, f"{qwhere}.question", path)
                if qid in seen:
                    raise SquadDataError(f"SQuAD file {path}: question id {qid!r} appears twice ({qwhere})")
                seen.add(qid)
                if qa.get("is_impossible"):
                    raise SquadDataError(f"SQuAD file {path}: {qwhere} is marked is_impossible (a SQuAD v2.0 "
                                         f"question); this task reads SQuAD v1.1")
                answers = _read_answers(qa.get("answers"), context, f"{qwhere}.answers", path, require_answers)
                examples.append(SquadExample(qid, question, context, answers, title))
    if not examples:
        raise SquadDataError(f"SQuAD file {path}: holds no questions")
    return examples


def _read_answers(raw, context: str, where: str, path: Path, required: bool) -> List[Tuple[str, int]]:
    if raw is None and not required:
        return []
    _require(raw, list, where, path)
    if required and not raw:
        raise SquadDataError(f"SQuAD file {path}: {where} is empty (every v1.1 question has an answer)")
    answers = []
    for i, answer in enumerate(raw):
        _require(answer, dict, f"{where}[{i}]", path)
        text = _require(answer.get("text"), str, f"{where}[{i}].text", path)
        start = answer.get("answer_start")
        if isinstance(start, bool) or not isinstance(start, int):
            found = "missing" if start is None else f"a {type(start).__name__}"
            raise SquadDataError(f"SQuAD file {path}: {where}[{i}].answer_start must be an integer, found {found}")
        if not 0 <= start <= len(context) - len(text):
            raise SquadDataError(f"SQuAD file {path}: {where}[{i}].answer_start {start} lies outside the context "
                                 f"({len(context)} characters)")
        answers.append((text, start))
    return answers


def answer_matches_context(example: SquadExample, index: int = 0) -> bool:
    """Whether answer ``index`` is found in the context at its answer_start (training needs that)."""
    text, start = example.answers[index]
    return example.context[start:start + len(text)] == text


def gold_answers(examples: List[SquadExample]) -> dict:
    """{question id: [gold answer texts]} (what the official evaluation scores against)."""
    return {ex.qid: [text for text, _ in ex.answers] for ex in examples}
