"""Test helpers: unpacked pre-training samples, the same samples packed (Habana's format), and a
variable-length attention stand-in for CPU. (Not the real packer: data/pack_pretraining_data.py.)"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch

from pretraining.attention import VarlenKernel


@dataclass
class Sample:
    input_ids: torch.Tensor       # [n] ([CLS] first)
    segment_ids: torch.Tensor     # [n]
    masked_positions: torch.Tensor  # [m], sorted, in 1..n-2
    masked_ids: torch.Tensor      # [m]
    nsp_label: int


def make_samples(lengths: Sequence[int], masked_counts: Sequence[int], vocab_size: int, seed: int = 0) -> List[Sample]:
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for length, count in zip(lengths, masked_counts):
        ids = torch.randint(5, vocab_size, (length,), generator=gen)
        ids[0] = 2  # [CLS]
        split = int(torch.randint(2, length - 1, (), generator=gen))
        segments = torch.zeros(length, dtype=torch.long)
        segments[split:] = 1
        positions = (torch.randperm(length - 2, generator=gen)[:count] + 1).sort().values
        masked = torch.randint(5, vocab_size, (count,), generator=gen)
        samples.append(Sample(ids, segments, positions, masked, int(torch.randint(0, 2, (), generator=gen))))
    return samples


def unpacked_batch(samples: Sequence[Sample], seq_len: int, predictions: int) -> Dict[str, torch.Tensor]:
    """The samples one per row, zero padded: the model's positional arguments as keywords."""
    n = len(samples)
    batch = {name: torch.zeros(n, seq_len, dtype=torch.long)
             for name in ("input_ids", "token_type_ids", "attention_mask")}
    batch["masked_lm_positions"] = torch.zeros(n, predictions, dtype=torch.long)
    batch["masked_lm_ids"] = torch.zeros(n, predictions, dtype=torch.long)
    batch["next_sentence_labels"] = torch.tensor([s.nsp_label for s in samples])
    for row, s in enumerate(samples):
        length, count = len(s.input_ids), len(s.masked_positions)
        batch["input_ids"][row, :length] = s.input_ids
        batch["token_type_ids"][row, :length] = s.segment_ids
        batch["attention_mask"][row, :length] = 1
        batch["masked_lm_positions"][row, :count] = s.masked_positions
        batch["masked_lm_ids"][row, :count] = s.masked_ids
    return batch


def packed_batch(samples: Sequence[Sample], groups: Sequence[Sequence[int]], seq_len: int, masked_slots: int,
                 samples_per_pack: int) -> Dict[str, torch.Tensor]:
    """The samples laid end to end in rows (groups: the sample indices of each row), Habana's fields:
    sample numbers in attention_mask, positions restarting per sample, masked positions offset into the
    row ([B, masked_slots]: P + K in the real format), next_sentence_positions / labels / weights [B, K]."""
    rows, k = len(groups), samples_per_pack
    batch = {name: torch.zeros(rows, seq_len, dtype=torch.long)
             for name in ("input_ids", "token_type_ids", "attention_mask", "position_ids")}
    for name in ("masked_lm_positions", "masked_lm_ids"):
        batch[name] = torch.zeros(rows, masked_slots, dtype=torch.long)
    for name in ("next_sentence_positions", "next_sentence_labels", "next_sentence_weights"):
        batch[name] = torch.zeros(rows, k, dtype=torch.long)
    for row, members in enumerate(groups):
        start = slot = 0
        for number, index in enumerate(members, start=1):
            s = samples[index]
            length, count = len(s.input_ids), len(s.masked_positions)
            span = slice(start, start + length)
            batch["input_ids"][row, span] = s.input_ids
            batch["token_type_ids"][row, span] = s.segment_ids
            batch["attention_mask"][row, span] = number
            batch["position_ids"][row, span] = torch.arange(length)
            batch["masked_lm_positions"][row, slot:slot + count] = s.masked_positions + start
            batch["masked_lm_ids"][row, slot:slot + count] = s.masked_ids
            batch["next_sentence_positions"][row, number - 1] = start
            batch["next_sentence_labels"][row, number - 1] = s.nsp_label
            batch["next_sentence_weights"][row, number - 1] = 1
            start, slot = start + length, slot + count
        assert start <= seq_len and slot < masked_slots
    return batch


def reference_varlen(q, k, v, cu_seqlens, max_seqlen, dropout_p):
    """A variable-length attention stand-in for CPU tests (reads the offsets on the host): each
    sequence cu_seqlens[i]:cu_seqlens[i+1] of the flat [T, heads, d] tokens attends only to itself."""
    assert dropout_p == 0.0 and cu_seqlens.dtype == torch.int32 and int(cu_seqlens[-1]) == q.shape[0]
    out = torch.zeros_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        assert 0 <= end - start <= max_seqlen
        if end > start:
            qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))  # [heads, n, d]
            probs = torch.softmax(qs @ ks.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
            out[start:end] = (probs @ vs).transpose(0, 1)
    return out


REFERENCE_VARLEN = VarlenKernel("reference varlen (test stand-in)", reference_varlen, has_dropout=False,
                                dtypes=(torch.float32, torch.float64))
