"""Small synthetic HDF5 shards in the NVIDIA/Habana format, for the pre-training tests.

Random token sequences with the real layout (CLS at 0, zero padding, sorted masked positions, int32/int8
gzip datasets) and a vocab.txt beside them; learning needs real text (test_pretraining_realtext.py).
"""
from pathlib import Path
from typing import Dict, Optional

import h5py
import numpy as np

VOCAB_SIZE = 96  # entries in the written vocab.txt (tiny preset models take this as vocab_size)
CLS, SEP, MASK = 2, 3, 4


def shard_arrays(num_samples: int, seq_len: int, max_pred: int, vocab_size: int, seed: int,
                 all_slots: bool = False, min_length: Optional[int] = None,
                 bert_counts: bool = False) -> Dict[str, np.ndarray]:
    """Random samples of min_length (default L/2) to L tokens; ``all_slots``: every row uses all P masked
    slots (so per-micro-batch loss means average to the big-batch mean); ``bert_counts``: BERT's masked
    count min(P, max(1, round(0.15 x length))) instead of a random one (what packed rows are sized for)."""
    rng = np.random.default_rng(seed)
    input_ids = np.zeros((num_samples, seq_len), np.int32)
    input_mask = np.zeros((num_samples, seq_len), np.int8)
    segment_ids = np.zeros((num_samples, seq_len), np.int8)
    positions = np.zeros((num_samples, max_pred), np.int32)
    masked_ids = np.zeros((num_samples, max_pred), np.int32)
    for row in range(num_samples):
        length = int(rng.integers(min_length or seq_len // 2, seq_len + 1))
        tokens = rng.integers(5, vocab_size, length).astype(np.int32)
        tokens[0], tokens[-1] = CLS, SEP
        split = int(rng.integers(2, length - 1))
        input_ids[row, :length] = tokens
        input_mask[row, :length] = 1
        segment_ids[row, split:length] = 1
        count = max_pred if all_slots else int(rng.integers(1, max_pred + 1))
        if bert_counts:
            count = min(max_pred, max(1, int(np.rint(0.15 * length))), length - 2)
        chosen = np.sort(rng.choice(np.arange(1, length - 1), size=count, replace=False))
        positions[row, :count] = chosen
        masked_ids[row, :count] = tokens[chosen]
        input_ids[row, chosen] = MASK
    labels = rng.integers(0, 2, num_samples).astype(np.int8)
    return {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids,
            "masked_lm_positions": positions, "masked_lm_ids": masked_ids, "next_sentence_labels": labels}


def write_shard(path: Path, arrays: Dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as handle:
        for key, value in arrays.items():
            handle.create_dataset(key, data=value, compression="gzip")
    return path


def write_vocab(path: Path, size: int = VOCAB_SIZE) -> Path:
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    path.write_text("\n".join(special + [f"tok{i}" for i in range(size - len(special))]) + "\n", encoding="utf-8")
    return path


def make_dataset(folder: Path, num_files: int = 3, samples: int = 24, seq_len: int = 32, max_pred: int = 5,
                 vocab_size: int = VOCAB_SIZE, seed: int = 0, sizes: Optional[list] = None,
                 all_slots: bool = False, min_length: Optional[int] = None, bert_counts: bool = False) -> Path:
    """``num_files`` shards named like the reference's (``*_training_<i>.hdf5``), a test shard and vocab.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(num_files):
        count = sizes[index] if sizes else samples
        write_shard(folder / f"wiki_training_{index}.hdf5",
                    shard_arrays(count, seq_len, max_pred, vocab_size, seed * 1000 + index, all_slots,
                                 min_length, bert_counts))
    write_shard(folder / "wiki_test_0.hdf5", shard_arrays(4, seq_len, max_pred, vocab_size, seed + 999))
    write_vocab(folder / "vocab.txt", vocab_size)
    return folder


def make_packed_dataset(unpacked: Path, folder: Path, seq_len: int, max_pred: int, seed: int = 42) -> Path:
    """The shards of ``unpacked`` packed by the real packer (data.pack_pretraining_data, K = 3): same file
    names, vocab.txt, and ``<folder>_metadata.json`` beside the folder."""
    from data.pack_pretraining_data import PackOptions, pack_dataset

    pack_dataset(unpacked, folder, PackOptions(seq_len, max_pred, 3, seed), show_progress=False)
    return folder
