"""SQuAD v1.1 scoring, behaving exactly like the official ``evaluate-v1.1.py``.

Normalisation: lower-case -> drop ASCII punctuation (``string.punctuation``) -> replace the whole
words a / an / the by a space -> collapse whitespace. Exact match compares normalised strings; F1
compares normalised whitespace tokens as bags (no shared token -> 0, even when both are empty).
Each question takes its best score over its gold answers; a question without a prediction scores 0
and still counts in the total; both scores are averaged over all questions and multiplied by 100.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Callable, Dict, Iterable, List, Mapping

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


def f1_score(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    shared = sum((Counter(predicted) & Counter(expected)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(expected)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(metric: Callable[[str, str], float], prediction: str, golds: Iterable[str]) -> float:
    return max(metric(prediction, gold) for gold in golds)


def evaluate(golds: Mapping[str, List[str]], predictions: Mapping[str, str]) -> Dict[str, float]:
    """{'exact_match': .., 'f1': ..} in percent over every question of ``golds`` ({qid: [texts]})."""
    exact = f1 = 0.0
    for qid, answers in golds.items():
        if qid not in predictions:
            continue  # unanswered: scores 0 but counts in the total, as the official script does
        exact += best_over_golds(exact_match_score, predictions[qid], answers)
        f1 += best_over_golds(f1_score, predictions[qid], answers)
    total = max(1, len(golds))
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}
