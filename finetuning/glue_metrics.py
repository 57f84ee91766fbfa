"""GLUE metrics, written out in plain Python (no scikit-learn / scipy needed).

All take equal-length sequences of predictions and gold labels and return a float in the usual
0..1 range (correlations: -1..1). ``task_metrics(name, preds, labels)`` gives the dict a GLUE
task reports (MRPC: accuracy, f1, acc_and_f1).
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence


def _check(preds: Sequence, labels: Sequence) -> None:
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    if not preds:
        raise ValueError("no predictions to score")


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    _check(preds, labels)
    return sum(int(p == y) for p, y in zip(preds, labels)) / len(labels)


def f1(preds: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """Binary F1 of the positive class: 2 TP / (2 TP + FP + FN); 0.0 when there is no positive at all."""
    _check(preds, labels)
    tp = sum(1 for p, y in zip(preds, labels) if p == positive and y == positive)
    fp = sum(1 for p, y in zip(preds, labels) if p == positive and y != positive)
    fn = sum(1 for p, y in zip(preds, labels) if p != positive and y == positive)
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def acc_and_f1(preds: Sequence[int], labels: Sequence[int]) -> Dict[str, float]:
    acc, f = accuracy(preds, labels), f1(preds, labels)
    return {"accuracy": acc, "f1": f, "acc_and_f1": (acc + f) / 2}


def matthews(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation for binary labels (CoLA): (TP TN - FP FN) / sqrt of the four margins; 0 if undefined."""
    _check(preds, labels)
    tp = sum(1 for p, y in zip(preds, labels) if p == 1 and y == 1)
    tn = sum(1 for p, y in zip(preds, labels) if p != 1 and y != 1)
    fp = sum(1 for p, y in zip(preds, labels) if p == 1 and y != 1)
    fn = sum(1 for p, y in zip(preds, labels) if p != 1 and y == 1)
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denominator == 0 else (tp * tn - fp * fn) / denominator


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    _check(x, y)
    n = len(x)
    mean_x, mean_y = sum(x) / n, sum(y) / n
    cov = sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y))
    var_x = sum((a - mean_x) ** 2 for a in x)
    var_y = sum((b - mean_y) ** 2 for b in y)
    return 0.0 if var_x == 0 or var_y == 0 else cov / math.sqrt(var_x * var_y)


def _ranks(values: Sequence[float]) -> List[float]:
    """1-based ranks; tied values share the mean of the ranks they span (as Spearman requires)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        shared = (start + end) / 2 + 1
        for k in range(start, end + 1):
            ranks[order[k]] = shared
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    _check(x, y)
    return pearson(_ranks(x), _ranks(y))


def pearson_and_spearman(preds: Sequence[float], labels: Sequence[float]) -> Dict[str, float]:
    p, s = pearson(preds, labels), spearman(preds, labels)
    return {"pearson": p, "spearmanr": s, "corr": (p + s) / 2}


def task_metrics(metric: str, preds: Sequence, labels: Sequence) -> Dict[str, float]:
    """The metrics dict for a processor's ``metric`` name (see glue_data.GlueProcessor.metric)."""
    if metric == "acc_and_f1":
        return acc_and_f1(preds, labels)
    if metric == "matthews":
        return {"mcc": matthews(preds, labels), "accuracy": accuracy(preds, labels)}
    if metric == "pearson_and_spearman":
        return pearson_and_spearman(preds, labels)
    if metric == "accuracy":
        return {"accuracy": accuracy(preds, labels)}
    raise ValueError(f"unknown GLUE metric {metric!r}")
