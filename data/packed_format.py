"""Habana's packed pre-training format: up to K samples per row, and the way in and out of it.

One HDF5 file holds N packs (rows); a pack holds K or fewer samples laid end to end from position 0,
then zero padding. Gzip datasets (what Habana Model-References' packer writes and its trainer reads):

    input_ids               int32 [N, L]    each sample's own tokens ([CLS] A [SEP] B [SEP]), one after another
    input_mask              int32 [N, L]    k on every token of the pack's k-th sample (1..K), 0 on padding
    segment_ids             int8  [N, L]    each sample's own segment ids (0 = A, 1 = B)
    positions               int32 [N, L]    position within its own sample: 0, 1, ... restarting per sample
    masked_lm_positions     int32 [N, P+K]  masked positions of all samples in order, shifted by each sample's
                                            start so they index the pack; then zeros (fewer than P+K used)
    masked_lm_ids           int32 [N, P+K]  the original token ids at those positions
    next_sentence_positions int32 [N, K]    start of sample k (its [CLS]); 0 in unused slots
    next_sentence_labels    int8  [N, K]    sample k's label (1 = B is random); 0 in unused slots
    next_sentence_weights   int32 [N, K]    1 for a real sample, 0 for an unused slot; real ones come first

P+K masked slots: the trainer reads masked positions up to the first 0 (position 0 is sample 1's [CLS],
never masked), so a pack holds at most P+K-1 masked tokens and the list always ends with a 0.
Beside the folder, ``<folder>_metadata.json`` (``metadata_path``) holds ``avg_seq_per_sample`` and
the other figures of data.pack_pretraining_data. A folder is packed when its shards hold
``next_sentence_positions`` (``is_packed``); K is the width of that dataset.

Readers use ``PACKED_FEATURES`` / ``packed_widths`` for the layout and ``split_pack`` to get the samples of
a pack back; ``pack_rows`` builds packs from the rows of an unpacked shard.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Union

import numpy as np

# name -> (dtype, width): "L" = max_sequence_length, "P+K" = masked slots, "K" = max_sequences_per_pack
PACKED_FEATURES: Dict[str, tuple] = {
    "input_ids": (np.int32, "L"),
    "input_mask": (np.int32, "L"),
    "segment_ids": (np.int8, "L"),
    "positions": (np.int32, "L"),
    "masked_lm_positions": (np.int32, "P+K"),
    "masked_lm_ids": (np.int32, "P+K"),
    "next_sentence_positions": (np.int32, "K"),
    "next_sentence_labels": (np.int8, "K"),
    "next_sentence_weights": (np.int32, "K"),
}
PACKED_MARKER = "next_sentence_positions"  # only packed shards have it
METADATA_SUFFIX = "_metadata.json"


def packed_widths(max_predictions: int, max_sequences_per_pack: int) -> Dict[str, int]:
    """The sizes of the widths PACKED_FEATURES names beyond "L" (for data.hdf5_shards.ShardWriter)."""
    return {"P+K": max_predictions + max_sequences_per_pack, "K": max_sequences_per_pack}


def max_masked_per_pack(max_predictions: int, max_sequences_per_pack: int) -> int:
    """P+K-1: the masked list of a pack must end with a 0 for the trainer to see all of it."""
    return max_predictions + max_sequences_per_pack - 1


def is_packed(dataset_names: Iterable[str]) -> bool:
    return PACKED_MARKER in set(dataset_names)


def metadata_path(output_dir: Union[str, Path]) -> Path:
    """``<parent>/<name>_metadata.json`` for the packed folder ``<parent>/<name>`` (a sibling, not inside)."""
    folder = Path(output_dir).resolve()
    return folder.with_name(folder.name + METADATA_SUFFIX)


@dataclass
class Sample:
    """One pre-training sample without its padding, as unpacked and packed shards both hold it."""

    input_ids: np.ndarray            # int32 [n]: [CLS] A [SEP] B [SEP]
    segment_ids: np.ndarray          # int8 [n]
    masked_lm_positions: np.ndarray  # int32 [m]: positions within the sample
    masked_lm_ids: np.ndarray        # int32 [m]
    next_sentence_label: int

    def key(self) -> tuple:
        """Hashable and equal for equal samples (to compare collections of samples)."""
        return (self.input_ids.astype(np.int32).tobytes(), self.segment_ids.astype(np.int8).tobytes(),
                self.masked_lm_positions.astype(np.int32).tobytes(), self.masked_lm_ids.astype(np.int32).tobytes(),
                int(self.next_sentence_label))


@dataclass
class SampleTable:
    """The arrays of an unpacked shard (data.hdf5_shards.FEATURES) and each row's length and masked count."""

    arrays: Dict[str, np.ndarray]
    lengths: np.ndarray        # int64 [N]: real tokens (an int64 count: int8 sums wrap above 127 in numpy 2)
    masked_counts: np.ndarray  # int64 [N]: masked tokens (non-zero masked_lm_positions)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "SampleTable":
        return cls(dict(arrays), np.count_nonzero(arrays["input_mask"], axis=1).astype(np.int64),
                   np.count_nonzero(arrays["masked_lm_positions"], axis=1).astype(np.int64))

    def __len__(self) -> int:
        return len(self.lengths)

    def sample(self, row: int) -> Sample:
        length, masked = int(self.lengths[row]), int(self.masked_counts[row])
        a = self.arrays
        return Sample(a["input_ids"][row, :length], a["segment_ids"][row, :length],
                      a["masked_lm_positions"][row, :masked], a["masked_lm_ids"][row, :masked],
                      int(a["next_sentence_labels"][row]))


def pack_rows(table: SampleTable, members: np.ndarray, max_predictions: int) -> Dict[str, np.ndarray]:
    """Packs [B] in PACKED_FEATURES layout from ``members`` (int64 [B, K]: rows of ``table``, -1 = no
    sample, real ones first). The samples of a pack must fit in L tokens and P+K-1 masked slots."""
    members = np.asarray(members, dtype=np.int64)
    batch, slots = members.shape
    seq_len = table.arrays["input_ids"].shape[1]
    real = members >= 0
    source = np.where(real, members, 0)
    lengths = np.where(real, table.lengths[source], 0)                       # [B, K]
    ends = np.cumsum(lengths, axis=1)
    starts = ends - lengths
    if (ends[:, -1] > seq_len).any():
        raise ValueError(f"a pack's samples do not fit in {seq_len} tokens")
    tokens = np.arange(seq_len)
    inside = tokens[None, :] < ends[:, -1:]                                    # [B, L] real token
    slot = np.minimum((tokens[None, :, None] >= ends[:, None, :]).sum(axis=2), slots - 1)  # [B, L] its sample
    row = np.take_along_axis(source, slot, axis=1)
    position = np.where(inside, tokens[None, :] - np.take_along_axis(starts, slot, axis=1), 0)
    out = {
        "input_ids": np.where(inside, table.arrays["input_ids"][row, position], 0),
        "input_mask": np.where(inside, slot + 1, 0),
        "segment_ids": np.where(inside, table.arrays["segment_ids"][row, position], 0),
        "positions": position,
    }
    counts = np.where(real, table.masked_counts[source], 0)                   # [B, K]
    if (counts.sum(axis=1) > max_masked_per_pack(max_predictions, slots)).any():
        raise ValueError(f"a pack's samples hold more than P+K-1 = {max_predictions + slots - 1} masked tokens")
    first = np.cumsum(counts, axis=1) - counts                                # where each sample's list starts
    masked_positions = np.zeros((batch, max_predictions + slots), dtype=np.int64)
    masked_ids = np.zeros_like(masked_positions)
    for k in range(slots):
        pack, entry = np.nonzero(np.arange(max_predictions)[None, :] < counts[:, k:k + 1])
        target = first[pack, k] + entry
        masked_positions[pack, target] = table.arrays["masked_lm_positions"][source[pack, k], entry] + starts[pack, k]
        masked_ids[pack, target] = table.arrays["masked_lm_ids"][source[pack, k], entry]
    out["masked_lm_positions"] = masked_positions
    out["masked_lm_ids"] = masked_ids
    out["next_sentence_positions"] = np.where(real, starts, 0)
    out["next_sentence_labels"] = np.where(real, table.arrays["next_sentence_labels"][source], 0)
    out["next_sentence_weights"] = real.astype(np.int32)
    return {name: out[name].astype(dtype) for name, (dtype, _) in PACKED_FEATURES.items()}


def split_pack(pack: Mapping[str, np.ndarray]) -> List[Sample]:
    """The samples of one pack (one row of each packed dataset), masked positions shifted back into each
    sample. Sample k is where ``input_mask == k``; its masked entries are those inside its tokens."""
    mask = np.asarray(pack["input_mask"])
    masked_positions = np.asarray(pack["masked_lm_positions"])
    end = np.flatnonzero(masked_positions == 0)
    used = end[0] if len(end) else len(masked_positions)  # the list ends at the first 0
    masked_positions, masked_ids = masked_positions[:used], np.asarray(pack["masked_lm_ids"])[:used]
    samples = []
    for k in np.flatnonzero(np.asarray(pack["next_sentence_weights"])):
        tokens = np.flatnonzero(mask == k + 1)
        start = int(pack["next_sentence_positions"][k])
        if len(tokens) == 0 or tokens[0] != start or tokens[-1] != start + len(tokens) - 1:
            raise ValueError(f"sample {k + 1} of the pack is not one run of tokens starting at {start}")
        mine = (masked_positions >= start) & (masked_positions < start + len(tokens))
        samples.append(Sample(np.asarray(pack["input_ids"])[tokens], np.asarray(pack["segment_ids"])[tokens],
                              (masked_positions[mine] - start).astype(np.int32), masked_ids[mine],
                              int(pack["next_sentence_labels"][k])))
    return samples
