"""Pre-training data: HDF5 shards (unpacked or packed, ``pretraining.shard_layout``) as micro-batches per rank.

Order (deterministic from the seed, so a run can stop and resume at any micro-batch):
files whose name contains ``training`` are sorted, then shuffled with ``random.Random(seed + epoch)``;
in an epoch rank r reads the files at index ``(slot * world + r) % num_files`` for
``slot = 0 .. ceil(num_files / world) - 1`` (every file read once per epoch when world divides the file
count), its rows in a random order drawn from ``(seed, epoch, slot, rank)``; incomplete last batches are
dropped. ``DataPosition`` (epoch, slot, batches taken) is all a checkpoint needs to continue. A row is a
sample (unpacked) or a pack of up to K samples (packed): a micro-batch of B rows holds B packs.

A background thread prepares the next file while the current one trains: it reads and checks the
shard, lays its rows out in batch order (batch b = rows b*B .. b*B+B-1, so a micro-batch is a slice),
re-masks every batch when dynamic masking is on (``pretraining.dynamic_masking``, seeded from the
batch's place in the stream, so a resumed run draws the same maskings), notes which unpacked batches
have no padding, and pins the arrays when the device is CUDA (the copies then overlap compute). The
arrays keep their compact dtypes (int32/int8) up to the device; ``PretrainingBatch.to`` widens them to
int64 there, after the copy.
"""
from __future__ import annotations

import math
import random
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from pretraining.dynamic_masking import MaskingRule, masking_generator, remask
from pretraining.shard_layout import (ShardError, ShardShape, check_layout, list_training_files,  # noqa: F401
                                      load_shard)


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
class StreamCounts:
    """Rows (samples or packs) and samples a stream has handed out so far (for throughput figures)."""
    rows: int = 0
    samples: int = 0


@dataclass
class PretrainingBatch:
    """One micro-batch of B rows, named as in the shards.

    Unpacked: ids / segments [B, L]; input_mask [B, L] 1 = token, 0 = padding, or None when no row of
    the batch has padding (the model then runs without a mask); masked slots [B, P]; labels [B].
    Packed: input_mask [B, L] holds sample numbers 1..K (0 = padding); positions [B, L] restart per
    sample; masked slots [B, P+K]; next_sentence_positions / labels / weights [B, K].
    ``samples``: the real samples in the batch (B unpacked), counted on the host.
    """
    input_ids: torch.Tensor
    segment_ids: torch.Tensor
    input_mask: Optional[torch.Tensor]
    masked_lm_positions: torch.Tensor
    masked_lm_ids: torch.Tensor
    next_sentence_labels: torch.Tensor
    positions: Optional[torch.Tensor] = None
    next_sentence_positions: Optional[torch.Tensor] = None
    next_sentence_weights: Optional[torch.Tensor] = None
    samples: int = 0

    @property
    def packed(self) -> bool:
        return self.next_sentence_positions is not None

    def to(self, device: torch.device) -> "PretrainingBatch":
        """On ``device`` as int64: the compact arrays are copied (asynchronously from pinned memory) and
        widened there, not on the host."""
        def move(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if tensor is None else tensor.to(device, non_blocking=True).long()
        moved = {f.name: move(getattr(self, f.name)) for f in fields(self) if f.name != "samples"}
        return PretrainingBatch(**moved, samples=self.samples)

    def model_inputs(self) -> Tuple[tuple, dict]:
        """(positional, keyword) arguments of ``BertForPreTraining.forward`` with labels (losses out)."""
        args = (self.input_ids, self.segment_ids, self.input_mask, self.masked_lm_positions, self.masked_lm_ids,
                self.next_sentence_labels)
        if not self.packed:
            return args, {}
        return args, {"position_ids": self.positions, "next_sentence_positions": self.next_sentence_positions,
                      "next_sentence_weights": self.next_sentence_weights}


def epoch_file_order(files: List[Path], seed: int, epoch: int) -> List[Path]:
    """All files in the order of this epoch (the same on every rank)."""
    order = list(files)
    random.Random(seed + epoch).shuffle(order)
    return order


def slots_per_epoch(num_files: int, world_size: int) -> int:
    return max(1, math.ceil(num_files / world_size))


def rank_file(order: List[Path], slot: int, rank: int, world_size: int) -> Path:
    return order[(slot * world_size + rank) % len(order)]


@dataclass
class FileBatches:
    """One shard's micro-batches in reading order: rows b*B .. b*B+B-1 of every tensor are batch b.

    tensors   the shard's datasets (compact dtypes; pinned for CUDA), only the rows that are read
    padded    bool [num_batches]: the (unpacked) batch has padding, so the model needs its mask
    samples   int64 [num_batches]: real samples per batch
    """
    tensors: Dict[str, torch.Tensor]
    padded: np.ndarray
    samples: np.ndarray
    batch_size: int

    @property
    def num_batches(self) -> int:
        return len(self.samples)

    def batch(self, index: int) -> PretrainingBatch:
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        views = {name: tensor[rows] for name, tensor in self.tensors.items()}  # slices: no copy
        packed = "next_sentence_positions" in views
        return PretrainingBatch(
            views["input_ids"], views["segment_ids"],
            views["input_mask"] if packed or self.padded[index] else None,
            views["masked_lm_positions"], views["masked_lm_ids"], views["next_sentence_labels"],
            views.get("positions"), views.get("next_sentence_positions"), views.get("next_sentence_weights"),
            samples=int(self.samples[index]))


def arrange_batches(arrays: Dict[str, np.ndarray], batches: np.ndarray, masking: Optional[MaskingRule] = None,
                    masking_seed: Tuple[int, int, int, int] = (0, 0, 0, 0), pin_memory: bool = False,
                    name: str = "shard") -> FileBatches:
    """The shard's ``arrays`` in the order of ``batches`` (int [num_batches, B] row indices), re-masked
    with ``masking`` (batch b drawn from ``masking_generator(*masking_seed, b)``: seed, epoch, slot, rank)."""
    num_batches, batch_size = batches.shape
    order = batches.reshape(-1)
    laid_out = {key: np.ascontiguousarray(values[order]) for key, values in arrays.items()}
    if masking is not None:
        for b in range(num_batches):
            rows = slice(b * batch_size, (b + 1) * batch_size)
            try:
                new = remask(laid_out["input_ids"][rows], laid_out["input_mask"][rows],
                             laid_out["masked_lm_positions"][rows], laid_out["masked_lm_ids"][rows], masking,
                             masking_generator(*masking_seed, b))
            except ValueError as err:  # e.g. more masked tokens than the packed rows have slots
                raise ShardError(f"{name}: dynamic masking: {err}") from None
            for key, values in zip(("input_ids", "masked_lm_positions", "masked_lm_ids"), new):
                laid_out[key][rows] = values
    def per_batch(values: np.ndarray) -> np.ndarray:  # [batches * B, W] -> [batches, B * W]
        return values.reshape(num_batches, batch_size * values.shape[1])
    if "next_sentence_weights" in laid_out:
        samples = np.count_nonzero(per_batch(laid_out["next_sentence_weights"]), axis=1)
        padded = np.ones(num_batches, dtype=bool)
    else:
        samples = np.full(num_batches, batch_size)
        padded = (per_batch(laid_out["input_mask"]) == 0).any(axis=1)
    tensors = {key: torch.from_numpy(values) for key, values in laid_out.items()}
    if pin_memory:
        tensors = {key: tensor.pin_memory() for key, tensor in tensors.items()}
    return FileBatches(tensors, padded, samples.astype(np.int64), batch_size)


class ShardStream:
    """Endless micro-batches for one rank, starting at ``position`` and resumable at any batch.

    ``position`` always names the next batch to be returned, so after the micro-batches of an optimizer
    step it is exactly what a checkpoint must store. ``masking``: re-mask every batch (dynamic masking);
    ``pin_memory``: page-locked host arrays (for CUDA).
    """

    def __init__(self, files: List[Path], shape: ShardShape, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, position: Optional[DataPosition] = None,
                 masking: Optional[MaskingRule] = None, pin_memory: bool = False):
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.files, self.shape, self.batch_size = list(files), shape, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.masking, self.pin_memory = masking, pin_memory
        self.position = DataPosition(**asdict(position)) if position else DataPosition()
        self.counts = StreamCounts()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-prefetch")
        self._pending: Dict[Tuple[int, int], Future] = {}
        self._file: Optional[FileBatches] = None
        self._loaded_at: Optional[Tuple[int, int]] = None
        self.current_file: Optional[Path] = None  # the file the last batch came from
        self._empty_slots = 0

    # -- file order -----------------------------------------------------------------------------
    def _file_at(self, epoch: int, slot: int) -> Path:
        return rank_file(epoch_file_order(self.files, self.seed, epoch), slot, self.rank, self.world_size)

    def _next_slot(self, epoch: int, slot: int) -> Tuple[int, int]:
        slot += 1
        return (epoch + 1, 0) if slot >= slots_per_epoch(len(self.files), self.world_size) else (epoch, slot)

    def _batch_order(self, num_rows: int, epoch: int, slot: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed % 2**32, epoch, slot, self.rank])
        num_batches = num_rows // self.batch_size
        return rng.permutation(num_rows)[: num_batches * self.batch_size].reshape(num_batches, self.batch_size)

    def _prepare(self, epoch: int, slot: int) -> FileBatches:
        """Runs in the prefetch thread: the file of (epoch, slot), read, checked and laid out in batches."""
        path = self._file_at(epoch, slot)
        arrays = load_shard(path, self.shape)
        batches = self._batch_order(len(arrays["input_ids"]), epoch, slot)
        return arrange_batches(arrays, batches, self.masking, (self.seed, epoch, slot, self.rank), self.pin_memory,
                               name=str(path))

    def _load(self, epoch: int, slot: int) -> Future:
        key = (epoch, slot)
        if key not in self._pending:
            self._pending[key] = self._executor.submit(self._prepare, epoch, slot)
        return self._pending[key]

    def _enter_file(self) -> None:
        """Make the file of the current (epoch, slot) resident and start preparing the one after it."""
        key = (self.position.epoch, self.position.slot)
        future = self._load(*key)
        self._file = future.result()  # raises the loader's ShardError here, in the training thread
        self._pending.pop(key, None)
        self._loaded_at = key
        self.current_file = self._file_at(*key)
        self._load(*self._next_slot(*key))

    # -- iteration -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[PretrainingBatch]:
        return self

    def __next__(self) -> PretrainingBatch:
        while True:
            if self._loaded_at != (self.position.epoch, self.position.slot):
                self._enter_file()
            if self.position.batch < self._file.num_batches:
                break
            # This file is used up (or too small for one batch): move to the next slot.
            self._empty_slots = self._empty_slots + 1 if self._file.num_batches == 0 else 0
            if self._empty_slots > len(self.files) + 1:
                raise ShardError(f"no shard among {len(self.files)} files in {self.files[0].parent} holds a full "
                                 f"micro-batch of {self.batch_size} rows")
            epoch, slot = self._next_slot(self.position.epoch, self.position.slot)
            self.position = DataPosition(epoch, slot, 0)
        batch = self._file.batch(self.position.batch)
        self.position = DataPosition(self.position.epoch, self.position.slot, self.position.batch + 1)
        self.counts.rows += self.batch_size
        self.counts.samples += batch.samples
        return batch

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._pending.clear()
