"""Dynamic masking: a fresh BERT masking for every micro-batch read from a static HDF5 shard.

A static shard fixes each sample's masked positions when it is made (``dupe_factor`` copies with
different masks at most). Drawing a new masking each time a sample is read, as RoBERTa, HF's
``DataCollatorForLanguageModeling`` and NVIDIA's LDDL do, gives the model new targets every epoch
from the same shards. ``remask`` does it for one micro-batch:

1. restore the original tokens: the shard keeps them at ``masked_lm_positions`` in ``masked_lm_ids``;
2. mask again with this project's rule, ``data.instances.mask_block`` itself (one source of truth for
   the rule): per sample min(P, max(1, round(length * masked_lm_prob))) of its non-special tokens,
   chosen uniformly (or as whole words), then 80% [MASK], 10% unchanged, 10% a random vocab id;
3. return the new ``input_ids``, ``masked_lm_positions``, ``masked_lm_ids`` in the shard's own layout
   (positions sorted, zero padded). ``input_mask``, ``segment_ids`` and the NSP labels do not change.

Packed rows (Habana's format: up to K samples per row, ``input_mask`` holds the sample number 1..K on
each sample's tokens, masked positions are offsets into the row, P + K slots) are handled too: every
sample of a row gets its own count and its own draw, exactly as if it were an unpacked row, and the
row's positions are merged in order. For unpacked rows (``input_mask`` 0/1) the result is exactly what
``mask_block`` draws from the same generator when it makes the shard.

The result is a function of the arrays and the generator's state alone: seed the generator from the
position in the data stream (``masking_generator``) and a resumed run draws the same maskings.
Arrays are numpy, as the shard stream holds them before they become tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

import numpy as np

from data.instances import InstanceOptions, mask_block
from data.vocab import Vocab

# Mixed into the generator's seed so that the masking stream never coincides with the stream that
# orders the batches (pretraining.dataset seeds that one from (seed, epoch, slot, rank)).
MASKING_STREAM = 0x6D61736B  # "mask"


@dataclass(frozen=True)
class MaskingRule:
    """What a masking needs to know about the vocab and the shard."""
    vocab_size: int                  # random replacements are drawn from [0, vocab_size)
    mask_id: int                     # [MASK]
    special_ids: Tuple[int, ...]     # never masked: [PAD], [CLS], [SEP]
    max_predictions_per_seq: int     # P: at most this many masked tokens per sample
    masked_lm_prob: float = 0.15
    whole_word_masking: bool = False
    continuation: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # [V] "##" pieces (whole words)

    def instance_options(self) -> InstanceOptions:
        return InstanceOptions(max_predictions_per_seq=self.max_predictions_per_seq,
                               masked_lm_prob=self.masked_lm_prob, whole_word_masking=self.whole_word_masking)


def masking_generator(seed: int, epoch: int, slot: int, rank: int, batch: int) -> np.random.Generator:
    """The generator for one micro-batch, from its place in the data stream (so resuming repeats it)."""
    return np.random.default_rng([seed % 2**32, epoch, slot, rank, batch, MASKING_STREAM])


def restore_original(input_ids: np.ndarray, masked_lm_positions: np.ndarray,
                     masked_lm_ids: np.ndarray) -> np.ndarray:
    """input_ids [B, L] with the masked tokens put back (a copy). Slots with position 0 are padding:
    position 0 is the first sample's [CLS], which is never masked."""
    if masked_lm_positions.shape != masked_lm_ids.shape or masked_lm_positions.shape[0] != input_ids.shape[0]:
        raise ValueError(f"masked_lm_positions {masked_lm_positions.shape}, masked_lm_ids {masked_lm_ids.shape} "
                         f"and input_ids {input_ids.shape} do not fit together")
    original = input_ids.copy()
    rows, slots = np.nonzero(masked_lm_positions > 0)
    original[rows, masked_lm_positions[rows, slots]] = masked_lm_ids[rows, slots]
    return original


def remask(input_ids: np.ndarray, input_mask: np.ndarray, masked_lm_positions: np.ndarray,
           masked_lm_ids: np.ndarray, rule: MaskingRule, rng: np.random.Generator
           ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fresh masking of one micro-batch: (input_ids [B, L], masked_lm_positions [B, W], masked_lm_ids [B, W])
    with the dtypes and slot width W of the inputs (W = P unpacked, P + K packed)."""
    original = restore_original(input_ids, masked_lm_positions, masked_lm_ids)
    batch, width = masked_lm_positions.shape
    samples_per_row = max(1, int(input_mask.max(initial=0)))
    maskable = (input_mask > 0) & ~np.isin(original, np.asarray(rule.special_ids))      # [B, L]
    # One virtual row per (row, sample): sample k's tokens only, so every sample is masked on its own.
    sample_of = np.arange(1, samples_per_row + 1)[None, :, None]                          # [1, K, 1]
    in_sample = input_mask[:, None, :] == sample_of                                       # [B, K, L]
    virtual_ids = np.repeat(original[:, None, :], samples_per_row, axis=1).reshape(batch * samples_per_row, -1)
    virtual_maskable = (maskable[:, None, :] & in_sample).reshape(batch * samples_per_row, -1)
    lengths = in_sample.sum(axis=2).reshape(-1)                                           # [B*K] sample lengths
    positions, labels = mask_block(virtual_ids, virtual_maskable, lengths, rule.instance_options(), rule.vocab_size,
                                   rule.mask_id, rule.continuation, rng)                  # [B*K, P] each
    # Each token takes the value its own sample's virtual row gave it.
    which = np.clip(input_mask.astype(np.int64) - 1, 0, None)                             # [B, L]
    virtual = virtual_ids.reshape(batch, samples_per_row, -1)
    new_ids = np.where(input_mask > 0, np.take_along_axis(virtual, which[:, None, :], axis=1)[:, 0], original)
    new_positions, new_labels = _merge_slots(positions.reshape(batch, -1), labels.reshape(batch, -1), width)
    return (new_ids.astype(input_ids.dtype), new_positions.astype(masked_lm_positions.dtype),
            new_labels.astype(masked_lm_ids.dtype))


def _merge_slots(positions: np.ndarray, labels: np.ndarray, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """The K samples' slots of a row ([B, K*P], each sample's zero padded) -> [B, width]: all real
    positions ascending, then zeros."""
    big = np.iinfo(np.int64).max
    keys = np.where(positions > 0, positions.astype(np.int64), big)
    order = np.argsort(keys, axis=1, kind="stable")
    positions = np.take_along_axis(positions, order, axis=1)
    labels = np.take_along_axis(labels, order, axis=1)
    used = int((positions > 0).sum(axis=1).max(initial=0))
    if used > width:
        raise ValueError(f"a row needs {used} masked slots but the shard has {width} "
                         f"(max_predictions_per_seq too large for this layout?)")
    out_positions = np.zeros((positions.shape[0], width), dtype=positions.dtype)
    out_labels = np.zeros((labels.shape[0], width), dtype=labels.dtype)
    keep = min(width, positions.shape[1])
    out_positions[:, :keep] = positions[:, :keep]
    out_labels[:, :keep] = labels[:, :keep]
    return out_positions, out_labels


def rule_for_vocab(vocab: Vocab, max_predictions_per_seq: int, masked_lm_prob: float = 0.15,
                   whole_word_masking: bool = False) -> MaskingRule:
    """The rule for shards made with ``vocab`` (the vocab.txt beside them): its size, [MASK], and
    [PAD]/[CLS]/[SEP] never masked, as create_pretraining_data never masks them."""
    return MaskingRule(vocab_size=vocab.size, mask_id=vocab.mask_id,
                       special_ids=(vocab.pad_id, vocab.cls_id, vocab.sep_id),
                       max_predictions_per_seq=max_predictions_per_seq, masked_lm_prob=masked_lm_prob,
                       whole_word_masking=whole_word_masking,
                       continuation=vocab.continuation_table() if whole_word_masking else np.zeros(0, dtype=bool))
