"""Fine-tuning batches: features padded per batch, and the order the training loop reads them in.

Features are dicts whose sequence entries (lists or numpy arrays: ``input_ids``, ``token_type_ids``,
optionally ``attention_mask``, made from the lengths when absent) are padded per batch to the batch's
longest sequence, rounded up to a multiple of 8 (tensor cores / HPU tiles like multiples of 8, and
MRPC's short pairs then cost ~50 tokens instead of 128); integer entries (``labels``,
``start_positions``, ...) become a 1-D tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from central.distributed import DistEnv

Feature = Dict[str, object]  # {"input_ids": [int], "attention_mask": [int], ..., "labels": int}
Batch = Dict[str, torch.Tensor]


class PaddingCollator:
    """Features -> dict of tensors; sequences padded to the batch's longest, rounded up to ``multiple_of``.

    ``fixed_length`` pads every batch to the same length instead (static shapes for HPU graphs).
    Sequence keys: list / tuple / numpy values (padded with ``pad_token_id`` for input_ids, else 0);
    an ``attention_mask`` is made from the lengths when the features carry none.
    Output shapes: [B, L] int64 for sequences, [B] int64 for integer scalars (float32 for float ones).
    """

    def __init__(self, pad_token_id: int = 0, multiple_of: int = 8, fixed_length: Optional[int] = None,
                 drop_keys: Sequence[str] = ()):
        self.pad_token_id = pad_token_id
        self.multiple_of = max(1, multiple_of)
        self.fixed_length = fixed_length
        self.drop_keys = set(drop_keys)

    def padded_length(self, longest: int) -> int:
        if self.fixed_length:
            return max(self.fixed_length, longest)
        return -(-longest // self.multiple_of) * self.multiple_of

    def __call__(self, features: List[Feature]) -> Batch:
        keys = [k for k in features[0] if k not in self.drop_keys]
        sequence_keys = [k for k in keys if isinstance(features[0][k], (list, tuple, np.ndarray))]
        lengths = [len(f[sequence_keys[0]]) for f in features] if sequence_keys else []
        length = self.padded_length(max(lengths)) if lengths else 0
        batch = {}
        for key in keys:
            if key in sequence_keys:
                rows = np.full((len(features), length), self.pad_token_id if key == "input_ids" else 0, dtype=np.int64)
                for row, feature in zip(rows, features):
                    row[:len(feature[key])] = feature[key]
                batch[key] = torch.from_numpy(rows)
            else:  # class ids -> int64; regression targets (floats, e.g. STS-B scores) -> float32
                dtype = torch.float if isinstance(features[0][key], float) else torch.long
                batch[key] = torch.tensor([f[key] for f in features], dtype=dtype)
        if "input_ids" in sequence_keys and "attention_mask" not in batch:
            # 1 over each feature's real tokens, 0 over the padding: [B, L]
            batch["attention_mask"] = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()
        return batch


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@dataclass
class TrainingBatches:
    """The training features in the loop's order: shuffled per epoch, split over ranks."""
    loader: DataLoader
    sampler: object  # reshuffled through its set_epoch(epoch) where it has one

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self.loader)

    def micro_batches(self, epochs: int, accumulation: int) -> Iterator[Tuple[int, Batch, bool]]:
        """(epoch, batch, whether it ends an optimizer step) over ``epochs`` epochs. The micro-batches are
        counted across epochs, so an optimizer step may take its last ones from the next epoch."""
        count = 0
        for epoch in range(epochs):
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(epoch)
            for batch in self.loader:
                count += 1
                yield epoch, batch, count % accumulation == 0


def training_batches(features: Sequence[Feature], batch_size: int, seed: int, dist: DistEnv,
                     collate: Callable, pin_memory: bool = False,
                     batch_sampler: Optional[torch.utils.data.Sampler] = None) -> TrainingBatches:
    """Random order per epoch (seeded), each rank its own share of it (DistributedSampler).

    ``batch_sampler`` (single process only) replaces the random sampler: it yields lists of feature
    indices per batch (e.g. length-grouped batches).
    """
    if batch_sampler is not None and not dist.distributed:
        return TrainingBatches(DataLoader(features, batch_sampler=batch_sampler, collate_fn=collate,
                                          pin_memory=pin_memory), batch_sampler)
    if dist.distributed:
        sampler = DistributedSampler(features, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed)
    else:
        sampler = RandomSampler(features, generator=torch.Generator().manual_seed(seed))
    return TrainingBatches(DataLoader(features, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                                      pin_memory=pin_memory, drop_last=False), sampler)
