"""Pre-training data: NVIDIA/Habana-format HDF5 shards, read one file at a time per rank.

A shard holds N samples of sequence length L with P masked-LM slots (DESIGN.md):

    input_ids            int32 [N, L]   token ids, zero padded
    input_mask           int8  [N, L]   1 for real tokens
    segment_ids          int8  [N, L]   0 = sentence A, 1 = sentence B
    masked_lm_positions  int32 [N, P]   positions of the masked tokens, zero padded
    masked_lm_ids        int32 [N, P]   original ids at those positions
    next_sentence_labels int8  [N]      1 = B is a random sentence

Order (deterministic from the seed, so a run can stop and resume at any micro-batch):
files whose name contains ``training`` are sorted, then shuffled with ``random.Random(seed + epoch)``;
in an epoch rank r reads the files at index ``(slot * world + r) % num_files`` for
``slot = 0 .. ceil(num_files / world) - 1`` (every file read once per epoch when world divides the file
count), each in a random order drawn from ``(seed, epoch, slot, rank)``; incomplete last batches are
dropped. ``DataPosition`` (epoch, slot, batches taken) is all a checkpoint needs to continue.

Arrays stay int32/int8 in memory and become int64 tensors one micro-batch at a time; the next file is
loaded and validated by a background thread while the current one trains.
"""
from __future__ import annotations

import math
import random
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import h5py
import numpy as np
import torch

from central.errors import BadInputError

PathLike = Union[str, Path]

# name -> which sizes its shape has after N ("L": sequence, "P": masked slots).
SHARD_KEYS: Dict[str, Tuple[str, ...]] = {
    "input_ids": ("L",),
    "input_mask": ("L",),
    "segment_ids": ("L",),
    "masked_lm_positions": ("P",),
    "masked_lm_ids": ("P",),
    "next_sentence_labels": (),
}


class ShardError(BadInputError):
    """A data folder or shard cannot be used; the message is one line naming the input."""


@dataclass(frozen=True)
class ShardShape:
    """What every shard of a run must look like."""
    max_seq_length: int        # L
    max_predictions: int       # P
    vocab_size: int            # ids must be < this
    type_vocab_size: int = 2   # segment ids must be < this


@dataclass
class DataPosition:
    """Where a rank's stream stands: the next batch is batch ``batch`` of file slot ``slot`` of ``epoch``."""
    epoch: int = 0
    slot: int = 0
    batch: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DataPosition":
        return cls(int(values["epoch"]), int(values["slot"]), int(values["batch"]))


@dataclass
class PretrainingBatch:
    """One micro-batch as int64 tensors: ids/masks [B, L], masked slots [B, P], labels [B]."""
    input_ids: torch.Tensor
    segment_ids: torch.Tensor
    input_mask: torch.Tensor
    masked_lm_positions: torch.Tensor
    masked_lm_ids: torch.Tensor
    next_sentence_labels: torch.Tensor

    def to(self, device: torch.device) -> "PretrainingBatch":
        return PretrainingBatch(*(t.to(device, non_blocking=True) for t in (
            self.input_ids, self.segment_ids, self.input_mask,
            self.masked_lm_positions, self.masked_lm_ids, self.next_sentence_labels)))


def list_training_files(input_dir: PathLike) -> List[Path]:
    """Sorted shard paths in ``input_dir`` whose name contains 'training'."""
    folder = Path(input_dir)
    if not folder.is_dir():
        raise ShardError(f"--input_dir {folder}: no such directory")
    files = sorted(p for p in folder.iterdir() if "training" in p.name and p.is_file())
    if not files:
        raise ShardError(f"--input_dir {folder}: no files with 'training' in their name (expected HDF5 shards)")
    return files


def epoch_file_order(files: List[Path], seed: int, epoch: int) -> List[Path]:
    """All files in the order of this epoch (the same on every rank)."""
    order = list(files)
    random.Random(seed + epoch).shuffle(order)
    return order


def slots_per_epoch(num_files: int, world_size: int) -> int:
    return max(1, math.ceil(num_files / world_size))


def rank_file(order: List[Path], slot: int, rank: int, world_size: int) -> Path:
    return order[(slot * world_size + rank) % len(order)]


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ShardError(f"{path}: not a readable HDF5 file ({err})") from None


def check_layout(path: PathLike, shape: ShardShape) -> int:
    """Check keys, dtypes and shapes from the file's metadata only; returns the number of samples."""
    path = Path(path)
    sizes = {"L": shape.max_seq_length, "P": shape.max_predictions}
    with _open(path) as handle:
        missing = [key for key in SHARD_KEYS if key not in handle]
        if missing:
            raise ShardError(f"{path}: missing dataset(s) {', '.join(missing)} "
                             f"(expected {', '.join(SHARD_KEYS)})")
        num_samples = None
        for key, dims in SHARD_KEYS.items():
            data = handle[key]
            if not isinstance(data, h5py.Dataset) or data.dtype.kind not in "iu":
                raise ShardError(f"{path}: '{key}' must be an integer dataset, found {getattr(data, 'dtype', data)}")
            expected = tuple(sizes[d] for d in dims)
            if data.ndim != 1 + len(dims) or tuple(data.shape[1:]) != expected:
                wanted = "[N" + "".join(f", {sizes[d]}" for d in dims) + "]"
                raise ShardError(f"{path}: '{key}' has shape {list(data.shape)}, expected {wanted} "
                                 f"(--max_seq_length {shape.max_seq_length}, "
                                 f"--max_predictions_per_seq {shape.max_predictions})")
            if num_samples is None:
                num_samples = data.shape[0]
            elif data.shape[0] != num_samples:
                raise ShardError(f"{path}: '{key}' has {data.shape[0]} samples but 'input_ids' has {num_samples}")
    return int(num_samples)


def _check_range(path: Path, key: str, values: np.ndarray, upper: int, what: str) -> None:
    if values.size == 0:
        return
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= upper:
        bad = high if high >= upper else low
        raise ShardError(f"{path}: '{key}' holds {bad}, outside [0, {upper}) {what}")


def load_shard(path: PathLike, shape: ShardShape) -> Dict[str, np.ndarray]:
    """Read and validate one shard; arrays keep their compact integer dtypes (int32/int8)."""
    path = Path(path)
    check_layout(path, shape)
    arrays = {}
    with _open(path) as handle:
        for key in SHARD_KEYS:
            try:
                array = handle[key][...]
            except OSError as err:
                raise ShardError(f"{path}: '{key}' cannot be read ({err})") from None
            if array.dtype.itemsize > 4:  # int64 files: the range check below makes int32 safe
                _check_range(path, key, array, 2**31, "(int32)")
                array = array.astype(np.int32)
            arrays[key] = array
    vocab_hint = f"(vocab_size {shape.vocab_size}: the shards were made with a larger vocab.txt than the model's)"
    _check_range(path, "input_ids", arrays["input_ids"], shape.vocab_size, vocab_hint)
    _check_range(path, "masked_lm_ids", arrays["masked_lm_ids"], shape.vocab_size, vocab_hint)
    _check_range(path, "masked_lm_positions", arrays["masked_lm_positions"], shape.max_seq_length,
                 "(positions must lie inside the sequence)")
    _check_range(path, "segment_ids", arrays["segment_ids"], shape.type_vocab_size, "(type_vocab_size)")
    _check_range(path, "input_mask", arrays["input_mask"], 2, "(a 0/1 mask)")
    _check_range(path, "next_sentence_labels", arrays["next_sentence_labels"], 2, "(a 0/1 label)")
    return arrays


def _batch(arrays: Dict[str, np.ndarray], rows: np.ndarray) -> PretrainingBatch:
    def take(key: str) -> torch.Tensor:
        return torch.from_numpy(arrays[key][rows]).long()
    return PretrainingBatch(take("input_ids"), take("segment_ids"), take("input_mask"),
                            take("masked_lm_positions"), take("masked_lm_ids"), take("next_sentence_labels"))


class ShardStream:
    """Endless micro-batches for one rank, starting at ``position`` and resumable at any batch.

    ``position`` always names the next batch to be returned, so after the micro-batches of an optimizer
    step it is exactly what a checkpoint must store.
    """

    def __init__(self, files: List[Path], shape: ShardShape, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, position: Optional[DataPosition] = None):
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.files, self.shape, self.batch_size = list(files), shape, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.position = DataPosition(**asdict(position)) if position else DataPosition()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-prefetch")
        self._pending: Dict[Tuple[int, int], Future] = {}
        self._arrays: Optional[Dict[str, np.ndarray]] = None
        self._batches: Optional[np.ndarray] = None  # [num_batches, batch_size] row indices of this file
        self._loaded_at: Optional[Tuple[int, int]] = None
        self.current_file: Optional[Path] = None  # the file the last batch came from
        self._empty_slots = 0

    # -- file order -----------------------------------------------------------------------------
    def _file_at(self, epoch: int, slot: int) -> Path:
        return rank_file(epoch_file_order(self.files, self.seed, epoch), slot, self.rank, self.world_size)

    def _next_slot(self, epoch: int, slot: int) -> Tuple[int, int]:
        slot += 1
        return (epoch + 1, 0) if slot >= slots_per_epoch(len(self.files), self.world_size) else (epoch, slot)

    def _load(self, epoch: int, slot: int) -> Future:
        key = (epoch, slot)
        if key not in self._pending:
            self._pending[key] = self._executor.submit(load_shard, self._file_at(epoch, slot), self.shape)
        return self._pending[key]

    def _batch_order(self, num_samples: int, epoch: int, slot: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed % 2**32, epoch, slot, self.rank])
        num_batches = num_samples // self.batch_size
        return rng.permutation(num_samples)[: num_batches * self.batch_size].reshape(num_batches, self.batch_size)

    def _enter_file(self) -> None:
        """Make the file of the current (epoch, slot) resident and start prefetching the one after it."""
        key = (self.position.epoch, self.position.slot)
        future = self._load(*key)
        arrays = future.result()  # raises the loader's ShardError here, in the training thread
        self._pending.pop(key, None)
        self._arrays, self._loaded_at = arrays, key
        self.current_file = self._file_at(*key)
        self._batches = self._batch_order(len(arrays["next_sentence_labels"]), *key)
        self._load(*self._next_slot(*key))

    # -- iteration -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[PretrainingBatch]:
        return self

    def __next__(self) -> PretrainingBatch:
        while True:
            if self._loaded_at != (self.position.epoch, self.position.slot):
                self._enter_file()
            if self.position.batch < len(self._batches):
                break
            # This file is used up (or too small for one batch): move to the next slot.
            self._empty_slots = self._empty_slots + 1 if len(self._batches) == 0 else 0
            if self._empty_slots > len(self.files) + 1:
                raise ShardError(f"no shard among {len(self.files)} files in {self.files[0].parent} holds a full "
                                 f"micro-batch of {self.batch_size} samples")
            epoch, slot = self._next_slot(self.position.epoch, self.position.slot)
            self.position = DataPosition(epoch, slot, 0)
        rows = self._batches[self.position.batch]
        self.position = DataPosition(self.position.epoch, self.position.slot, self.position.batch + 1)
        return _batch(self._arrays, rows)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._pending.clear()
