"""SQuAD features (finetuning/squad_features.py): windows, labels, max context, and the real dev set."""
import numpy as np
import pytest

from finetuning.model_loading import tokenizer_from_vocab
from finetuning.squad_data import SquadExample, read_squad
from finetuning.squad_features import (SquadFeatureError, answer_token_span, build_features, check_lengths,
                                       max_context_masks, span_text, window_starts)
from finetuning.squad_metrics import normalize_answer


@pytest.fixture(scope="module")
def tokenizer(shared_data):
    return tokenizer_from_vocab(shared_data / "vocab" / "bert-base-uncased-vocab.txt")


def test_windows_step_by_doc_stride_and_never_skip_tokens():
    assert window_starts(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
    assert window_starts(10, 4, 6) == [(0, 4), (4, 4), (8, 2)]  # the step is capped at the window
    assert window_starts(3, 4, 2) == [(0, 3)]
    assert window_starts(0, 4, 2) == [(0, 0)]


def test_each_token_has_exactly_one_max_context_window():
    masks = max_context_masks([(0, 4), (3, 4), (6, 4)], 10)
    assert [m.tolist() for m in masks] == [[True, True, True, True], [False, True, True, True],
                                           [False, True, True, True]]  # ties go to the earlier window
    coverage = np.zeros(10, dtype=int)
    for (start, length), mask in zip([(0, 4), (3, 4), (6, 4)], masks):
        coverage[start:start + length] += mask
    assert coverage.tolist() == [1] * 10


def test_length_rules():
    check_lengths(384, 128, 64)
    with pytest.raises(SquadFeatureError, match="--max_seq_length 60 is too small for the query"):
        check_lengths(60, 30, 64)
    with pytest.raises(SquadFeatureError, match="--max_seq_length 67 is too small"):
        check_lengths(67, 30, 64)  # 64 + 3 special tokens leave no room for context
    with pytest.raises(SquadFeatureError, match="--doc_stride 384 must be smaller than --max_seq_length 384"):
        check_lengths(384, 384, 64)
    with pytest.raises(SquadFeatureError, match="--doc_stride 0"):
        check_lengths(384, 0, 64)


def test_features_layout_labels_and_cls_for_windows_without_the_answer(tokenizer):
    context = " ".join(f"word{i}" for i in range(40)) + " The Denver Broncos won. " + \
        " ".join(f"tail{i}" for i in range(40))
    start = context.index("Denver Broncos")
    example = SquadExample("q", "Who won the game in the end?", context, [("Denver Broncos", start)])
    features = build_features([example], tokenizer, max_seq_length=64, doc_stride=24, max_query_length=4,
                              training=True)
    question = tokenizer("Who won the game in the end?", add_special_tokens=False)["input_ids"][:4]
    labelled = 0
    assert len(features) > 3
    for item, window in zip(features.inputs, features.windows):
        ids = item["input_ids"].tolist()
        assert len(ids) <= 64 and window.doc_offset == len(question) + 2
        assert ids[:window.doc_offset] == [tokenizer.cls_token_id, *question, tokenizer.sep_token_id]
        assert ids[-1] == tokenizer.sep_token_id and len(ids) == window.doc_offset + window.doc_length + 1
        assert item["token_type_ids"].tolist() == [0] * window.doc_offset + [1] * (window.doc_length + 1)
        s, e = item["start_positions"], item["end_positions"]
        if s == 0:
            assert e == 0  # [CLS] for both
            continue
        labelled += 1
        offsets = features.context_offsets[window.context_index]
        first, last = s - window.doc_offset + window.doc_start, e - window.doc_offset + window.doc_start
        assert span_text(context, offsets, first, last) == "Denver Broncos"
        assert tokenizer.decode(ids[s:e + 1]) == "denver broncos"
    assert 1 <= labelled < len(features)  # some windows hold the answer, the others point at [CLS]


def test_answer_token_span_by_offsets():
    offsets = np.array([[0, 3], [4, 9], [9, 12], [13, 17]])  # "The Denve|r B| ..." style sub-words
    assert answer_token_span(offsets, 4, 12) == (1, 2)
    assert answer_token_span(offsets, 5, 10) == (1, 2)  # partial overlap widens to whole tokens
    assert answer_token_span(offsets, 3, 4) is None     # only the space between tokens
    assert answer_token_span(offsets[:0], 0, 1) is None


def test_gold_answers_recovered_from_gold_token_spans_on_dev(shared_data, tokenizer):
    """>= 99.5% of all 34,726 dev answers normalise back to themselves from their token span, and the
    training features of the first answers label a window that yields it too."""
    examples = read_squad(shared_data / "squad" / "dev-v1.1.json")
    features = build_features(examples, tokenizer, 384, 128, 64, training=True)
    total = recovered = 0
    context_index = {}
    for window in features.windows:
        context_index.setdefault(window.example_index, window.context_index)
    for e, example in enumerate(examples):
        offsets = features.context_offsets[context_index[e]]
        for text, start in example.answers:
            total += 1
            span = answer_token_span(offsets, start, start + len(text))
            recovered += span is not None and \
                normalize_answer(span_text(example.context, offsets, *span)) == normalize_answer(text)
    assert total == 34726 and recovered / total >= 0.995

    first_ok = 0
    for e, example in enumerate(examples):
        for f in features.example_features.get(e, []):
            item, window = features.inputs[f], features.windows[f]
            if item["start_positions"]:
                offsets = features.context_offsets[window.context_index]
                shift = window.doc_start - window.doc_offset
                text = span_text(example.context, offsets, item["start_positions"] + shift,
                                 item["end_positions"] + shift)
                first_ok += normalize_answer(text) == normalize_answer(example.answers[0][0])
                break
    assert len(examples) == 10570 and first_ok / len(examples) >= 0.995
    assert len(features) > len(examples)  # long contexts produced several windows
