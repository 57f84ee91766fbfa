"""Start/end logits of every window -> the n best answer texts per question, and the output files.

For each question: in every window of its context, take the ``n_best`` highest start logits among the
context tokens whose maximum context is that window, and the ``n_best`` highest end logits among its
context tokens; every pair with start <= end and at most ``max_answer_length`` tokens is a candidate
scored by start + end logit. Candidates from all windows are ranked together, their text is cut from
the original context by character offsets (so spacing, case and accents are those of the passage),
equal texts are kept once, and the best ``n_best`` get probabilities (softmax over their scores).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from central.checkpoint import atomic_write_text
from finetuning.squad_data import SquadExample
from finetuning.squad_features import SquadFeatures


def _top(values: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` largest values, largest first."""
    if len(values) <= count:
        return np.argsort(-values, kind="stable")
    part = np.argpartition(-values, count - 1)[:count]
    return part[np.argsort(-values[part], kind="stable")]


def window_candidates(start_logits: np.ndarray, end_logits: np.ndarray, doc_offset: int, doc_length: int,
                      max_context: np.ndarray, n_best: int, max_answer_length: int) -> List[Tuple[float, int, int, float, float]]:
    """(score, first, last, start logit, end logit) with first/last as indices into the window's context tokens.

    start_logits / end_logits: [L] over the feature's positions (context at doc_offset..+doc_length).
    """
    start = start_logits[doc_offset:doc_offset + doc_length]
    end = end_logits[doc_offset:doc_offset + doc_length]
    allowed = np.flatnonzero(max_context)  # starts only where this window is the token's best context
    starts = allowed[_top(start[allowed], n_best)] if len(allowed) else allowed
    ends = _top(end, n_best)
    first, last = starts[:, None], ends[None, :]  # [n_starts, 1], [1, n_ends]: all pairs at once
    valid = (first <= last) & (last < first + max_answer_length)
    first, last = np.broadcast_to(first, valid.shape)[valid], np.broadcast_to(last, valid.shape)[valid]
    return [(float(start[s] + end[e]), int(s), int(e), float(start[s]), float(end[e])) for s, e in zip(first, last)]


def _softmax(scores: Sequence[float]) -> List[float]:
    values = np.asarray(scores, dtype=np.float64)
    exp = np.exp(values - values.max())
    return (exp / exp.sum()).tolist()


def best_answers(examples: Sequence[SquadExample], features: SquadFeatures, start_logits: Sequence[np.ndarray],
                 end_logits: Sequence[np.ndarray], n_best: int = 20, max_answer_length: int = 30
                 ) -> Tuple[Dict[str, str], Dict[str, List[dict]]]:
    """(predictions {qid: text}, n-best {qid: [{text, probability, start_logit, end_logit}]}) for every example."""
    predictions, nbest = {}, {}
    for e, example in enumerate(examples):
        candidates = []
        for f in features.example_features.get(e, []):
            window = features.windows[f]
            for score, first, last, s_logit, e_logit in window_candidates(
                    start_logits[f], end_logits[f], window.doc_offset, window.doc_length, window.max_context,
                    n_best, max_answer_length):
                candidates.append((score, window.context_index, window.doc_start + first,
                                   window.doc_start + last, s_logit, e_logit))
        candidates.sort(key=lambda c: -c[0])
        kept, seen = [], set()
        for score, context_index, first, last, s_logit, e_logit in candidates:
            offsets = features.context_offsets[context_index]
            text = example.context[int(offsets[first, 0]):int(offsets[last, 1])]
            if text in seen:
                continue
            seen.add(text)
            kept.append({"text": text, "start_logit": s_logit, "end_logit": e_logit, "score": score})
            if len(kept) == n_best:
                break
        if not kept:  # no valid span anywhere (e.g. an empty context): answer nothing rather than crash
            kept = [{"text": "", "start_logit": 0.0, "end_logit": 0.0, "score": 0.0}]
        for entry, probability in zip(kept, _softmax([k.pop("score") for k in kept])):
            entry["probability"] = probability
        predictions[example.qid] = kept[0]["text"]
        nbest[example.qid] = [{"text": k["text"], "probability": k["probability"], "start_logit": k["start_logit"],
                               "end_logit": k["end_logit"]} for k in kept]
    return predictions, nbest


def write_json(path: Path, value) -> None:
    """Atomic write: a crash mid-write leaves any previous file intact."""
    atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")
