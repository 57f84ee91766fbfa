"""The named alternative for benchmarks/data_prep.py: the reference's way of building instances.

A straightforward implementation of the same Google/NVIDIA algorithm, structured like the reference
create_pretraining_data.py: pure-Python WordPiece (``transformers``' BertTokenizerLegacy, the port of
BERT's original tokenization.py), documents as Python lists of token lists, one instance at a time with ``random.Random``, features
collected in Python lists and written with h5py's default gzip level. It is also the yardstick the
tests use to check that the fast implementation (data.instances) has the same statistics.
"""
from __future__ import annotations

import random
from typing import List

import h5py
import numpy as np


def read_documents(path: str, tokenizer) -> List[List[List[int]]]:
    """One sentence per line, blank line between documents -> [document][sentence][token id]."""
    documents: List[List[List[int]]] = [[]]
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                documents.append([])
                continue
            ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(line))
            if ids:
                documents[-1].append(ids)
    return [doc for doc in documents if doc]


def _truncate_pair(tokens_a: list, tokens_b: list, max_num_tokens: int, rng: random.Random) -> None:
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def _mask(tokens: list, special: set, vocab_size: int, mask_id: int, masked_lm_prob: float,
          max_predictions: int, rng: random.Random):
    candidates = [i for i, tok in enumerate(tokens) if tok not in special]
    rng.shuffle(candidates)
    num_to_predict = min(max_predictions, max(1, int(round(len(tokens) * masked_lm_prob))))
    output = list(tokens)
    chosen = sorted(candidates[:num_to_predict])
    for index in chosen:
        if rng.random() < 0.8:
            output[index] = mask_id
        elif rng.random() >= 0.5:
            output[index] = rng.randint(0, vocab_size - 1)
    return output, chosen, [tokens[i] for i in chosen]


def create_instances(documents, max_seq_length: int, max_predictions: int, masked_lm_prob: float,
                     short_seq_prob: float, dupe_factor: int, vocab_size: int, cls_id: int, sep_id: int,
                     mask_id: int, rng: random.Random) -> list:
    """[(input_ids, segment_ids, masked_positions, masked_ids, is_random_next)] in shuffled order."""
    max_num_tokens = max_seq_length - 3
    special = {cls_id, sep_id}
    instances = []
    rng.shuffle(documents)
    for _ in range(dupe_factor):
        for doc_index, document in enumerate(documents):
            target = max_num_tokens
            if rng.random() < short_seq_prob:
                target = rng.randint(2, max_num_tokens)
            chunk, length, i = [], 0, 0
            while i < len(document):
                chunk.append(document[i])
                length += len(document[i])
                if i == len(document) - 1 or length >= target:
                    a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                    tokens_a = [t for segment in chunk[:a_end] for t in segment]
                    tokens_b = []
                    if len(chunk) == 1 or rng.random() < 0.5:
                        is_random_next = 1
                        for _ in range(10):
                            other = rng.randint(0, len(documents) - 1)
                            if other != doc_index:
                                break
                        other_doc = documents[other]
                        for j in range(rng.randint(0, len(other_doc) - 1), len(other_doc)):
                            tokens_b.extend(other_doc[j])
                            if len(tokens_b) >= target - len(tokens_a):
                                break
                        i -= len(chunk) - a_end
                    else:
                        is_random_next = 0
                        tokens_b = [t for segment in chunk[a_end:] for t in segment]
                    _truncate_pair(tokens_a, tokens_b, max_num_tokens, rng)
                    tokens = [cls_id] + tokens_a + [sep_id] + tokens_b + [sep_id]
                    segments = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
                    masked, positions, labels = _mask(tokens, special, vocab_size, mask_id, masked_lm_prob,
                                                      max_predictions, rng)
                    instances.append((masked, segments, positions, labels, is_random_next))
                    chunk, length = [], 0
                i += 1
    rng.shuffle(instances)
    return instances


def write_hdf5(instances, path: str, max_seq_length: int, max_predictions: int) -> None:
    n = len(instances)
    features = {
        "input_ids": np.zeros((n, max_seq_length), dtype="int32"),
        "input_mask": np.zeros((n, max_seq_length), dtype="int8"),
        "segment_ids": np.zeros((n, max_seq_length), dtype="int8"),
        "masked_lm_positions": np.zeros((n, max_predictions), dtype="int32"),
        "masked_lm_ids": np.zeros((n, max_predictions), dtype="int32"),
        "next_sentence_labels": np.zeros(n, dtype="int8"),
    }
    for row, (ids, segments, positions, labels, is_random_next) in enumerate(instances):
        features["input_ids"][row, :len(ids)] = ids
        features["input_mask"][row, :len(ids)] = 1
        features["segment_ids"][row, :len(segments)] = segments
        features["masked_lm_positions"][row, :len(positions)] = positions
        features["masked_lm_ids"][row, :len(labels)] = labels
        features["next_sentence_labels"][row] = is_random_next
    with h5py.File(path, "w") as handle:
        for name, values in features.items():
            handle.create_dataset(name, data=values, dtype=values.dtype, compression="gzip")


def main(argv=None) -> None:
    """Same command line as data.create_pretraining_data (the subset the benchmark uses)."""
    import argparse
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.models.bert import BertTokenizerLegacy

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_file", required=True)
    parser.add_argument("--output_file", required=True)
    parser.add_argument("--vocab_file", required=True)
    parser.add_argument("--do_lower_case", type=int, default=1)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--max_predictions_per_seq", type=int, default=20)
    parser.add_argument("--masked_lm_prob", type=float, default=0.15)
    parser.add_argument("--short_seq_prob", type=float, default=0.1)
    parser.add_argument("--dupe_factor", type=int, default=10)
    parser.add_argument("--random_seed", type=int, default=12345)
    args = parser.parse_args(argv)
    tokenizer = BertTokenizerLegacy(args.vocab_file, do_lower_case=bool(args.do_lower_case))
    vocab = tokenizer.vocab
    documents = read_documents(args.input_file, tokenizer)
    instances = create_instances(documents, args.max_seq_length, args.max_predictions_per_seq, args.masked_lm_prob,
                                 args.short_seq_prob, args.dupe_factor, len(vocab), vocab["[CLS]"], vocab["[SEP]"],
                                 vocab["[MASK]"], random.Random(args.random_seed))
    write_hdf5(instances, args.output_file, args.max_seq_length, args.max_predictions_per_seq)
    print(f"wrote {args.output_file}: {len(instances)} instances")


if __name__ == "__main__":
    main()
