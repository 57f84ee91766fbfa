"""BERT pre-training instances (masked LM + next sentence) from a TokenizedCorpus.

The algorithm is Google's create_pretraining_data (as used by NVIDIA and the reference), written so
that Python only decides *where* each instance's two segments lie in the flat token array and numpy
does the rest:

1. ``pair_spans`` walks every document ``dupe_factor`` times. Per document a target length is drawn
   (``max_seq_length - 3``, or with probability ``short_seq_prob`` a random 2..max). Sentences are
   gathered until the chunk reaches the target; a random split point makes segment A; segment B is
   the rest of the chunk, or (50%, and always for one-sentence chunks) sentences from a random other
   document starting at a random sentence, in which case the chunk's unused sentences are put back.
   Each instance is four integers (start/length of A and of B) plus the "random next" label.
2. ``truncate_spans``: while A+B is too long the longer segment loses a token at its front or back
   (coin flip). The final lengths follow from the lengths alone and the number of front removals of
   each segment is Binomial(removed, 1/2), so this is drawn in one vectorised step.
3. ``pack_block`` gathers ``[CLS] A [SEP] B [SEP]`` + zero padding for a block of instances.
4. ``mask_block``: num_to_predict = min(max_predictions, max(1, round(len * masked_lm_prob))) of the
   non-special tokens, uniformly at random (or whole words with ``whole_word_masking``); 80% become
   [MASK], 10% stay, 10% become a random vocab id; positions sorted, zero padded.

Random state: a ``random.Random`` for the per-document walk (cheap scalar draws) and a numpy
``Generator`` for the vectorised steps, both from one seed, so a seed gives byte-identical shards.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from data.errors import DataPrepError
from data.tokenization import TokenizedCorpus

SPECIAL_TOKENS_PER_PAIR = 3  # [CLS] A [SEP] B [SEP]


@dataclass(frozen=True)
class InstanceOptions:
    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    dupe_factor: int = 10
    whole_word_masking: bool = False

    @property
    def max_num_tokens(self) -> int:
        return self.max_seq_length - SPECIAL_TOKENS_PER_PAIR

    def validate(self) -> None:
        if self.max_seq_length < SPECIAL_TOKENS_PER_PAIR + 2:
            raise DataPrepError(f"--max_seq_length {self.max_seq_length} is too short: a pair needs "
                                f"{SPECIAL_TOKENS_PER_PAIR + 2} positions ([CLS] a [SEP] b [SEP])")
        if not 1 <= self.max_predictions_per_seq <= self.max_num_tokens:
            raise DataPrepError(f"--max_predictions_per_seq {self.max_predictions_per_seq} does not fit "
                                f"--max_seq_length {self.max_seq_length}: it must be 1..{self.max_num_tokens} "
                                f"(the sequence holds {self.max_num_tokens} maskable tokens)")
        if not 0.0 < self.masked_lm_prob <= 1.0:
            raise DataPrepError(f"--masked_lm_prob {self.masked_lm_prob} must be in (0, 1]")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise DataPrepError(f"--short_seq_prob {self.short_seq_prob} must be in [0, 1]")
        if self.dupe_factor < 1:
            raise DataPrepError(f"--dupe_factor {self.dupe_factor} must be at least 1")


@dataclass
class PairSpans:
    """N instances as spans into the corpus' flat token array (int64 [N] each)."""

    a_start: np.ndarray
    a_length: np.ndarray
    b_start: np.ndarray
    b_length: np.ndarray
    is_random_next: np.ndarray  # int8 [N], 1 = B comes from another document

    def __len__(self) -> int:
        return len(self.a_start)

    def take(self, index: np.ndarray) -> "PairSpans":
        return PairSpans(self.a_start[index], self.a_length[index], self.b_start[index], self.b_length[index],
                         self.is_random_next[index])


def pair_spans(corpus: TokenizedCorpus, options: InstanceOptions, rng: random.Random) -> PairSpans:
    """Step 1: choose segment A and B of every instance (before truncation), documents in shuffled order."""
    sent = corpus.sentence_starts.tolist()      # token offset of each sentence (+ end)
    docs = corpus.document_starts.tolist()      # sentence offset of each document (+ end)
    n_docs = len(docs) - 1
    max_num_tokens = options.max_num_tokens
    uniform = rng.random
    out_a, out_a_len, out_b, out_b_len, out_random = [], [], [], [], []
    order = list(range(n_docs))
    rng.shuffle(order)
    for _ in range(options.dupe_factor):
        for doc in order:
            first, end = docs[doc], docs[doc + 1]
            target = max_num_tokens
            if uniform() < options.short_seq_prob:
                target = 2 + int(uniform() * (max_num_tokens - 1))  # uniform in 2..max_num_tokens
            chunk_first = first  # current chunk = sentences chunk_first..i
            i = first
            while i < end:
                if i == end - 1 or sent[i + 1] - sent[chunk_first] >= target:
                    n_segments = i - chunk_first + 1
                    a_end = chunk_first + (1 + int(uniform() * (n_segments - 1)) if n_segments >= 2 else 1)
                    a_start = sent[chunk_first]
                    a_length = sent[a_end] - a_start
                    if n_segments == 1 or uniform() < 0.5:
                        other = doc
                        for _ in range(10):  # another document, if there is one
                            other = int(uniform() * n_docs)
                            if other != doc:
                                break
                        o_first, o_end = docs[other], docs[other + 1]
                        j = o_first + int(uniform() * (o_end - o_first))
                        b_start = sent[j]
                        target_b = target - a_length
                        while j < o_end - 1 and sent[j + 1] - b_start < target_b:
                            j += 1
                        b_length = sent[j + 1] - b_start
                        out_random.append(1)
                        i = a_end - 1  # the chunk's sentences after A go back for the next chunk
                    else:
                        b_start = sent[a_end]
                        b_length = sent[i + 1] - b_start
                        out_random.append(0)
                    out_a.append(a_start)
                    out_a_len.append(a_length)
                    out_b.append(b_start)
                    out_b_len.append(b_length)
                    chunk_first = i + 1
                i += 1
    return PairSpans(np.array(out_a, dtype=np.int64), np.array(out_a_len, dtype=np.int64),
                     np.array(out_b, dtype=np.int64), np.array(out_b_len, dtype=np.int64),
                     np.array(out_random, dtype=np.int8))


def truncate_spans(spans: PairSpans, max_num_tokens: int, rng: np.random.Generator) -> PairSpans:
    """Step 2: the reference's token-by-token truncation, in closed form (see module docstring)."""
    a_len, b_len = spans.a_length, spans.b_length
    excess = np.maximum(a_len + b_len - max_num_tokens, 0)
    from_longer = np.minimum(excess, np.abs(a_len - b_len))  # the longer one shrinks to the other's length
    rest = excess - from_longer                              # then they alternate, B first (ties cut B)
    a_longer = a_len > b_len
    cut_a = np.where(a_longer, from_longer, 0) + rest // 2
    cut_b = np.where(a_longer, 0, from_longer) + (rest + 1) // 2
    front_a = rng.binomial(cut_a, 0.5)
    front_b = rng.binomial(cut_b, 0.5)
    return PairSpans(spans.a_start + front_a, a_len - cut_a, spans.b_start + front_b, b_len - cut_b,
                     spans.is_random_next)


@dataclass
class PackedBlock:
    """One block of B finished instances, in the HDF5 layout (see data.hdf5_shards)."""

    input_ids: np.ndarray             # int32 [B, L]
    input_mask: np.ndarray            # int8  [B, L]
    segment_ids: np.ndarray           # int8  [B, L]
    masked_lm_positions: np.ndarray   # int32 [B, P]
    masked_lm_ids: np.ndarray         # int32 [B, P]
    next_sentence_labels: np.ndarray  # int8  [B]


def pack_block(tokens: np.ndarray, spans: PairSpans, max_seq_length: int, cls_id: int, sep_id: int):
    """Step 3: ``[CLS] A [SEP] B [SEP] 0...`` -> (input_ids int32 [B,L], segment_ids int8, input_mask int8,
    maskable bool [B,L]: the A and B positions, never [CLS]/[SEP]/padding)."""
    col = np.arange(max_seq_length, dtype=np.int64)[None, :]          # [1, L]
    a_len = spans.a_length[:, None]                                    # [B, 1]
    b_len = spans.b_length[:, None]
    in_a = (col >= 1) & (col <= a_len)
    b_first = a_len + 2
    in_b = (col >= b_first) & (col < b_first + b_len)
    source = np.where(in_a, spans.a_start[:, None] + col - 1, spans.b_start[:, None] + col - b_first)
    maskable = in_a | in_b
    np.clip(source, 0, max(len(tokens) - 1, 0), out=source)
    input_ids = np.where(maskable, tokens[source], 0).astype(np.int32)
    rows = np.arange(len(spans))
    input_ids[:, 0] = cls_id
    input_ids[rows, spans.a_length + 1] = sep_id
    input_ids[rows, spans.a_length + spans.b_length + 2] = sep_id
    total = a_len + b_len + SPECIAL_TOKENS_PER_PAIR
    input_mask = (col < total).astype(np.int8)
    segment_ids = ((col >= b_first) & (col < total)).astype(np.int8)
    return input_ids, segment_ids, input_mask, maskable


def num_to_predict(lengths: np.ndarray, options: InstanceOptions, n_maskable: np.ndarray) -> np.ndarray:
    """min(max_predictions, max(1, round(len * prob))), never more than there are maskable tokens."""
    wanted = np.maximum(1, np.rint(lengths * options.masked_lm_prob).astype(np.int64))
    return np.minimum(np.minimum(wanted, options.max_predictions_per_seq), n_maskable)


def choose_positions(maskable: np.ndarray, count: np.ndarray, max_predictions: int,
                     rng: np.random.Generator) -> np.ndarray:
    """``count[r]`` distinct maskable positions per row, uniformly at random, sorted, 0-padded: int64 [B,P].

    The ``count`` smallest of independent uniform keys form a uniform random subset; argpartition
    finds the P smallest per row without sorting all L."""
    batch, width = maskable.shape
    keys = rng.random((batch, width), dtype=np.float32)
    keys[~maskable] = 2.0                                   # never chosen before a maskable position
    if max_predictions < width:
        smallest = np.argpartition(keys, max_predictions - 1, axis=1)[:, :max_predictions]
    else:
        smallest = np.broadcast_to(np.arange(width), (batch, width)).copy()
    order = np.argsort(np.take_along_axis(keys, smallest, axis=1), axis=1)
    ranked = np.take_along_axis(smallest, order, axis=1)    # [B, P] positions by ascending key
    keep = np.arange(ranked.shape[1])[None, :] < count[:, None]
    positions = np.where(keep, ranked, width)               # width sorts after every real position
    positions.sort(axis=1)
    positions[positions == width] = 0
    return positions[:, :max_predictions]


def choose_whole_words(input_ids: np.ndarray, maskable: np.ndarray, count: np.ndarray, max_predictions: int,
                       continuation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Whole-word masking: shuffle the words (a word = a token and its following ``##`` pieces, never
    across [SEP]), take each whole word while the total stays <= count (the reference's greedy rule)."""
    batch = len(input_ids)
    positions = np.zeros((batch, max_predictions), dtype=np.int64)
    starts_word = maskable & ~(continuation[input_ids] & np.roll(maskable, 1, axis=1))
    for row in range(batch):
        cand = np.flatnonzero(maskable[row])
        word_of = np.cumsum(starts_word[row, cand]) - 1          # word index of each candidate position
        n_words = int(word_of[-1]) + 1
        bounds = np.searchsorted(word_of, np.arange(n_words + 1))
        chosen = []
        need = int(count[row])
        for word in rng.permutation(n_words).tolist():
            size = bounds[word + 1] - bounds[word]
            if len(chosen) + size <= need:
                chosen.extend(cand[bounds[word]:bounds[word + 1]].tolist())
                if len(chosen) == need:
                    break
        chosen.sort()
        positions[row, :len(chosen)] = chosen
    return positions


def mask_block(input_ids: np.ndarray, maskable: np.ndarray, lengths: np.ndarray, options: InstanceOptions,
               vocab_size: int, mask_id: int, continuation: np.ndarray, rng: np.random.Generator):
    """Step 4, in place on ``input_ids``: returns (masked_lm_positions int32 [B,P], masked_lm_ids int32 [B,P])."""
    count = num_to_predict(lengths, options, maskable.sum(axis=1))
    if options.whole_word_masking:
        positions = choose_whole_words(input_ids, maskable, count, options.max_predictions_per_seq,
                                       continuation, rng)
    else:
        positions = choose_positions(maskable, count, options.max_predictions_per_seq, rng)
    chosen = positions > 0                                   # position 0 is [CLS]: padding
    labels = np.where(chosen, np.take_along_axis(input_ids, positions, axis=1), 0)
    draw = rng.random(positions.shape, dtype=np.float32)
    random_ids = rng.integers(0, vocab_size, size=positions.shape)
    replacement = np.where(draw < 0.8, mask_id, np.where(draw < 0.9, labels, random_ids))
    # padded slots point at [CLS] and write [CLS] back, so they change nothing
    replacement = np.where(chosen, replacement, input_ids[:, :1])
    np.put_along_axis(input_ids, positions, replacement.astype(input_ids.dtype), axis=1)
    return positions.astype(np.int32), labels.astype(np.int32)


def build_block(tokens: np.ndarray, spans: PairSpans, options: InstanceOptions, vocab_size: int, cls_id: int,
                sep_id: int, mask_id: int, continuation: np.ndarray, rng: np.random.Generator) -> PackedBlock:
    """Steps 3 and 4 for one block of (already truncated) spans."""
    input_ids, segment_ids, input_mask, maskable = pack_block(tokens, spans, options.max_seq_length, cls_id, sep_id)
    lengths = spans.a_length + spans.b_length + SPECIAL_TOKENS_PER_PAIR
    positions, labels = mask_block(input_ids, maskable, lengths, options, vocab_size, mask_id, continuation, rng)
    return PackedBlock(input_ids, input_mask, segment_ids, positions, labels, spans.is_random_next.astype(np.int8))
