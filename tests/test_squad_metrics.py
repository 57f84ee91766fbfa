"""SQuAD v1.1 scoring (finetuning/squad_metrics.py) against hand-computed values and the real dev set."""
import pytest

from finetuning.squad_data import gold_answers, read_squad
from finetuning.squad_metrics import evaluate, exact_match_score, f1_score, normalize_answer


def test_normalisation_follows_the_official_steps():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a day") == "apple day"
    assert normalize_answer("Theatre\tand\nanthems") == "theatre and anthems"  # only whole-word articles go
    assert normalize_answer("U.S.-based") == "usbased"  # punctuation is removed, not replaced by a space
    assert normalize_answer("café «déjà»") == "café «déjà»"  # non-ASCII punctuation stays, as in the original


def test_token_f1_and_exact_match_by_hand():
    assert f1_score("Santa Clara", "Santa Clara, California") == pytest.approx(0.8)   # P 1, R 2/3
    assert f1_score("cat cat cat", "the cat the cat sat") == pytest.approx(2 / 3)     # bag: 2 shared of 3 / 3
    assert f1_score("red", "blue") == 0.0
    assert exact_match_score("the", "a") and f1_score("the", "a") == 0.0   # both empty: EM 1 but F1 0 (official)
    assert exact_match_score("Denver Broncos.", "denver  broncos")


def test_crafted_predictions_give_hand_computed_scores():
    golds = {"q1": ["Denver Broncos"], "q2": ["Santa Clara, California", "Levi's Stadium"],
             "q3": ["an apple a day"], "q4": ["blue"], "q5": ["1990"]}
    predictions = {"q1": "the Denver Broncos!", "q2": "Santa Clara", "q3": "apple", "q4": "red",
                   "unknown": "ignored"}  # q5 unanswered: scores 0 but counts
    scores = evaluate(golds, predictions)
    assert scores["exact_match"] == pytest.approx(100 * 1 / 5)                  # only q1 matches
    assert scores["f1"] == pytest.approx(100 * (1 + 0.8 + 2 / 3 + 0 + 0) / 5)  # 49.333...
    # the best gold counts: "Levi's Stadium" exactly -> EM for q2 too
    assert evaluate(golds, dict(predictions, q2="Levis Stadium"))["exact_match"] == pytest.approx(40.0)


def test_gold_answers_score_100(shared_data):
    examples = read_squad(shared_data / "squad" / "dev-v1.1.json")
    golds = gold_answers(examples)
    assert len(golds) == 10570
    assert evaluate(golds, {qid: answers[0] for qid, answers in golds.items()}) == {"exact_match": 100.0, "f1": 100.0}
    # The last gold answers too, except one whose last gold is "." (normalises to nothing): the official
    # rule gives EM 1 but F1 0 there, so F1 is 100 x 10569 / 10570.
    last = evaluate(golds, {qid: answers[-1] for qid, answers in golds.items()})
    assert last["exact_match"] == 100.0 and last["f1"] == pytest.approx(100 * 10569 / 10570)
