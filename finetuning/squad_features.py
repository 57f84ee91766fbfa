"""SQuAD examples -> model features: [CLS] question [SEP] context-window [SEP], with answer token spans.

Tokenisation uses the fast (Rust) tokenizer once per distinct context and once per question, in
batches, keeping each context token's character offsets into the original context. A context longer
than the room left after the question is cut into overlapping windows whose starts are ``doc_stride``
tokens apart (the original BERT meaning of doc_stride; the step never exceeds the window, so no token
is skipped). The question keeps at most ``max_query_length`` tokens.

Training labels: the gold answer's characters [start, start + len(text)) map to the first context
token ending after ``start`` and the last token beginning before the end; a window that does not hold
the whole span labels [CLS] (position 0) for both start and end. Each feature also records, for
post-processing, which tokens have their *maximum context* in this window (the window where the token
is furthest from an edge; the original BERT rule), so a start position is scored in one window only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from central.errors import BadInputError

from finetuning.squad_data import SquadExample

SPECIAL_TOKENS_IN_PAIR = 3  # [CLS] question [SEP] context [SEP]


class SquadFeatureError(BadInputError):
    """Sequence-length settings that cannot hold a question plus any context (one line for the user)."""


def check_lengths(max_seq_length: int, doc_stride: int, max_query_length: int) -> None:
    """The same rules as the reference scripts, checked before any data is read."""
    if max_query_length < 1:
        raise SquadFeatureError(f"--max_query_length {max_query_length}: must be at least 1")
    if max_seq_length <= max_query_length + SPECIAL_TOKENS_IN_PAIR:
        raise SquadFeatureError(
            f"--max_seq_length {max_seq_length} is too small for the query: it must exceed --max_query_length "
            f"({max_query_length}) + {SPECIAL_TOKENS_IN_PAIR} special tokens to leave room for the context")
    if doc_stride < 1:
        raise SquadFeatureError(f"--doc_stride {doc_stride}: must be at least 1")
    if doc_stride >= max_seq_length:
        raise SquadFeatureError(f"--doc_stride {doc_stride} must be smaller than --max_seq_length {max_seq_length} "
                                f"(windows would not overlap and context would be lost)")


@dataclass
class Window:
    """Where a feature's context tokens come from; positions are token indices."""
    example_index: int
    context_index: int      # into SquadFeatures.context_offsets
    doc_offset: int         # position of the first context token in the feature (= question tokens + 2)
    doc_start: int          # index of that token in the whole context's tokens
    doc_length: int
    max_context: np.ndarray  # [doc_length] bool: this window is the token's best window


@dataclass
class SquadFeatures:
    inputs: List[Dict[str, object]]      # per feature: input_ids [L] int32, token_type_ids [L] int8, (+ labels)
    windows: List[Window]
    context_offsets: List[np.ndarray]    # per distinct context: [n_tokens, 2] int32 character spans
    skipped: int = 0                     # training examples whose answer covers no token (dropped)
    example_features: Dict[int, List[int]] = field(default_factory=dict)  # example index -> feature indices

    def __len__(self) -> int:
        return len(self.inputs)


def window_starts(n_tokens: int, room: int, doc_stride: int) -> List[Tuple[int, int]]:
    """(start, length) of each window over ``n_tokens`` context tokens, ``room`` tokens per window."""
    spans, start = [], 0
    while True:
        length = min(n_tokens - start, room)
        spans.append((start, length))
        if start + length >= n_tokens:
            return spans
        start += min(length, doc_stride)


def max_context_masks(spans: Sequence[Tuple[int, int]], n_tokens: int) -> List[np.ndarray]:
    """For each window, which of its tokens see the most context there (score: min distance to an
    edge + 0.01 x window length; the first window wins a tie)."""
    if len(spans) == 1:
        return [np.ones(spans[0][1], dtype=bool)]
    positions = np.arange(n_tokens)
    scores = np.full((len(spans), n_tokens), -np.inf)
    for w, (start, length) in enumerate(spans):
        inside = positions[start:start + length]
        scores[w, start:start + length] = np.minimum(inside - start, start + length - 1 - inside) + 0.01 * length
    best = scores.argmax(axis=0)  # [n_tokens]: the first maximal window
    return [best[start:start + length] == w for w, (start, length) in enumerate(spans)]


def answer_token_span(offsets: np.ndarray, start_char: int, end_char: int) -> Optional[Tuple[int, int]]:
    """First and last token (inclusive) overlapping characters [start_char, end_char), or None."""
    if len(offsets) == 0:
        return None
    first = int(np.searchsorted(offsets[:, 1], start_char, side="right"))  # first token ending after start
    last = int(np.searchsorted(offsets[:, 0], end_char, side="left")) - 1  # last token beginning before end
    if first >= len(offsets) or last < first:
        return None
    return first, last


def span_text(context: str, offsets: np.ndarray, first: int, last: int) -> str:
    """The original context characters covered by tokens first..last (inclusive)."""
    return context[int(offsets[first, 0]):int(offsets[last, 1])]


def tokenize_contexts(examples: Sequence[SquadExample], tokenizer, batch_size: int = 1000
                      ) -> Tuple[List[int], List[List[int]], List[np.ndarray]]:
    """(context index per example, token ids per distinct context, [n, 2] offsets per distinct context)."""
    index_of: Dict[str, int] = {}
    per_example = [index_of.setdefault(ex.context, len(index_of)) for ex in examples]
    contexts = list(index_of)
    ids, offsets = [], []
    for start in range(0, len(contexts), batch_size):
        encoded = tokenizer(contexts[start:start + batch_size], add_special_tokens=False,
                            return_offsets_mapping=True, return_attention_mask=False, return_token_type_ids=False)
        ids.extend(encoded["input_ids"])
        offsets.extend(np.asarray(o, dtype=np.int32).reshape(-1, 2) for o in encoded["offset_mapping"])
    return per_example, ids, offsets


def tokenize_questions(examples: Sequence[SquadExample], tokenizer, max_query_length: int,
                       batch_size: int = 2000) -> List[List[int]]:
    ids = []
    for start in range(0, len(examples), batch_size):
        questions = [ex.question for ex in examples[start:start + batch_size]]
        ids.extend(tokenizer(questions, add_special_tokens=False, truncation=True, max_length=max_query_length,
                             return_attention_mask=False, return_token_type_ids=False)["input_ids"])
    return ids


def build_features(examples: Sequence[SquadExample], tokenizer, max_seq_length: int = 384, doc_stride: int = 128,
                   max_query_length: int = 64, training: bool = False) -> SquadFeatures:
    """Features for every example (training: with start/end positions of the first gold answer)."""
    check_lengths(max_seq_length, doc_stride, max_query_length)
    context_of, context_ids, context_offsets = tokenize_contexts(examples, tokenizer)
    question_ids = tokenize_questions(examples, tokenizer, max_query_length)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    features = SquadFeatures([], [], context_offsets)
    for e, example in enumerate(examples):
        c = context_of[e]
        doc, offsets, question = context_ids[c], context_offsets[c], question_ids[e]
        answer_span = None
        if training:
            text, start_char = example.answers[0]
            answer_span = answer_token_span(offsets, start_char, start_char + len(text))
            if answer_span is None:
                features.skipped += 1
                continue
        room = max_seq_length - len(question) - SPECIAL_TOKENS_IN_PAIR
        spans = window_starts(len(doc), room, doc_stride)
        masks = max_context_masks(spans, len(doc))
        head = [cls, *question, sep]
        for (start, length), mask in zip(spans, masks):
            input_ids = np.asarray(head + doc[start:start + length] + [sep], dtype=np.int32)  # [L]
            token_type_ids = np.zeros(len(input_ids), dtype=np.int8)
            token_type_ids[len(head):] = 1
            item = {"input_ids": input_ids, "token_type_ids": token_type_ids}
            if training:
                first, last = answer_span
                inside = start <= first and last < start + length
                item["start_positions"] = first - start + len(head) if inside else 0  # outside: [CLS]
                item["end_positions"] = last - start + len(head) if inside else 0
            features.example_features.setdefault(e, []).append(len(features.inputs))
            features.inputs.append(item)
            features.windows.append(Window(e, c, len(head), start, length, mask))
    return features
