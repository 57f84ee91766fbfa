"""GLUE metrics against values worked out by hand (and, where installed, scikit-learn / scipy)."""
import math
import random

import pytest

from finetuning import glue_metrics as gm

# TP at 0,3,6; FP at 1,7; FN at 4; TN at 2,5
PREDS = [1, 1, 0, 1, 0, 0, 1, 1]
LABELS = [1, 0, 0, 1, 1, 0, 1, 0]


def test_accuracy_f1_acc_and_f1_by_hand():
    assert gm.accuracy(PREDS, LABELS) == pytest.approx(5 / 8)
    assert gm.f1(PREDS, LABELS) == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    out = gm.acc_and_f1(PREDS, LABELS)
    assert out == pytest.approx({"accuracy": 0.625, "f1": 2 / 3, "acc_and_f1": (0.625 + 2 / 3) / 2})
    assert gm.task_metrics("acc_and_f1", PREDS, LABELS) == out


def test_f1_and_matthews_degenerate_cases():
    assert gm.f1([0, 0, 0], [1, 0, 1]) == 0.0          # nothing predicted positive
    assert gm.f1([1, 1], [1, 1]) == 1.0
    assert gm.matthews([1, 1, 1], [1, 0, 1]) == 0.0    # constant prediction: undefined -> 0
    assert gm.matthews([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert gm.matthews([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)


def test_matthews_by_hand():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (3*2 - 2*1) / sqrt(5*4*4*3)
    assert gm.matthews(PREDS, LABELS) == pytest.approx(4 / math.sqrt(240))


def test_pearson_and_spearman_by_hand_with_ties():
    x, y = [1, 2, 3, 4, 5], [2, 4, 5, 4, 5]
    assert gm.pearson(x, y) == pytest.approx(6 / math.sqrt(60))
    # y ranks with ties averaged: [1, 2.5, 4.5, 2.5, 4.5]
    assert gm._ranks(y) == [1, 2.5, 4.5, 2.5, 4.5]
    assert gm.spearman(x, y) == pytest.approx(7 / math.sqrt(90))
    out = gm.task_metrics("pearson_and_spearman", x, y)
    assert out["corr"] == pytest.approx((6 / math.sqrt(60) + 7 / math.sqrt(90)) / 2)


def test_bad_lengths_raise():
    with pytest.raises(ValueError):
        gm.accuracy([1, 0], [1])
    with pytest.raises(ValueError):
        gm.f1([], [])
    with pytest.raises(ValueError):
        gm.task_metrics("bleu", [1], [1])


def test_agrees_with_sklearn_and_scipy_on_random_data():
    metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    preds = [rng.randint(0, 1) for _ in range(200)]
    labels = [rng.randint(0, 1) for _ in range(200)]
    assert gm.f1(preds, labels) == pytest.approx(metrics.f1_score(labels, preds))
    assert gm.matthews(preds, labels) == pytest.approx(metrics.matthews_corrcoef(labels, preds))
    x = [rng.choice([0.0, 1.0, 2.5, 3.0, 4.2, 5.0]) for _ in range(100)]  # many ties
    y = [v + rng.gauss(0, 1) for v in x]
    assert gm.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert gm.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
