"""From logits to answers (finetuning/squad_postprocess.py): n-best over windows, limits, character offsets."""
import numpy as np
import pytest

from finetuning.model_loading import tokenizer_from_vocab
from finetuning.squad_data import SquadExample
from finetuning.squad_features import build_features
from finetuning.squad_postprocess import best_answers, window_candidates


@pytest.fixture(scope="module")
def tokenizer(shared_data):
    return tokenizer_from_vocab(shared_data / "vocab" / "bert-base-uncased-vocab.txt")


def logits_for(features, hot):
    """Start/end logits (small noise) with chosen (feature, position) -> value overrides."""
    rng = np.random.default_rng(0)
    starts = [rng.normal(0, 0.01, len(item["input_ids"])) for item in features.inputs]
    ends = [rng.normal(0, 0.01, len(item["input_ids"])) for item in features.inputs]
    for (kind, f, position), value in hot.items():
        (starts if kind == "start" else ends)[f][position] = value
    return starts, ends


def position_of(features, f, tokenizer, word):
    ids = features.inputs[f]["input_ids"].tolist()
    target = tokenizer.convert_tokens_to_ids(word)
    return max(i for i, t in enumerate(ids) if t == target)  # the context occurrence (after the question)


def test_best_span_text_comes_from_the_original_context(tokenizer):
    context = "Super Bowl 50 was won by the DENVER Broncos, who beat Carolina."
    example = SquadExample("q1", "Who won?", context, [("DENVER Broncos", context.index("DENVER"))])
    features = build_features([example], tokenizer, 64, 32, 16)
    s, e = position_of(features, 0, tokenizer, "denver"), position_of(features, 0, tokenizer, "broncos")
    starts, ends = logits_for(features, {("start", 0, s): 5.0, ("end", 0, e): 4.0, ("end", 0, e + 1): 3.0})
    predictions, nbest = best_answers([example], features, starts, ends, n_best=5)
    assert predictions == {"q1": "DENVER Broncos"}  # case and spacing of the passage, not of the tokens
    assert [entry["text"] for entry in nbest["q1"][:2]] == ["DENVER Broncos", "DENVER Broncos,"]
    assert len(nbest["q1"]) == 5 and sum(entry["probability"] for entry in nbest["q1"]) == pytest.approx(1.0)
    probabilities = [entry["probability"] for entry in nbest["q1"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert nbest["q1"][0]["start_logit"] == pytest.approx(5.0) and nbest["q1"][0]["end_logit"] == pytest.approx(4.0)


def test_max_answer_length_and_order_limits():
    start = np.zeros(12)
    end = np.zeros(12)
    start[2], end[1], end[11] = 9.0, 8.0, 7.0  # end before start, and a span of 10 tokens
    spans = {(s, e) for _, s, e, _, _ in window_candidates(start, end, 1, 11, np.ones(11, bool), 3, 5)}
    assert all(s <= e < s + 5 for s, e in spans)
    assert (1, 0) not in spans and (1, 10) not in spans
    assert (1, 10) in {(s, e) for _, s, e, _, _ in window_candidates(start, end, 1, 11, np.ones(11, bool), 3, 30)}


def test_nbest_over_all_windows_uses_each_tokens_max_context_window(tokenizer):
    context = " ".join(f"filler{i}" for i in range(30)) + " Paris is the capital. " + \
        " ".join(f"more{i}" for i in range(30))
    example = SquadExample("q2", "What is the capital?", context, [("Paris", context.index("Paris"))])
    features = build_features([example], tokenizer, 48, 16, 8)
    holding = [f for f, item in enumerate(features.inputs)
               if tokenizer.convert_tokens_to_ids("paris") in item["input_ids"].tolist()]
    assert len(holding) >= 2  # several windows see "Paris"
    best_window = next(f for f in holding
                       if features.windows[f].max_context[position_of(features, f, tokenizer, "paris")
                                                          - features.windows[f].doc_offset])
    other = next(f for f in holding if f != best_window)
    # A huge score for "Paris" in a window that is not its max-context window is ignored ...
    hot = {("start", other, position_of(features, other, tokenizer, "paris")): 50.0,
           ("end", other, position_of(features, other, tokenizer, "paris")): 50.0}
    starts, ends = logits_for(features, hot)
    predictions, _ = best_answers([example], features, starts, ends)
    assert predictions["q2"] != "Paris"
    # ... and a smaller one in its max-context window wins over every window's noise.
    hot = {("start", best_window, position_of(features, best_window, tokenizer, "paris")): 5.0,
           ("end", best_window, position_of(features, best_window, tokenizer, "paris")): 5.0}
    starts, ends = logits_for(features, hot)
    predictions, nbest = best_answers([example], features, starts, ends, n_best=20)
    assert predictions["q2"] == "Paris" and len(nbest["q2"]) == 20
    assert len({entry["text"] for entry in nbest["q2"]}) == 20  # each text once


def test_every_question_gets_an_answer_even_without_candidates(tokenizer):
    example = SquadExample("q3", "Anything?", "", [])
    features = build_features([example], tokenizer, 32, 8, 8)
    starts, ends = logits_for(features, {})
    predictions, nbest = best_answers([example], features, starts, ends)
    assert predictions == {"q3": ""} and nbest["q3"][0]["probability"] == 1.0
