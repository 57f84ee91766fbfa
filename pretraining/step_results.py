"""Each pre-training step's result, agreed by all ranks on the device and read by the host one step late.

A step's result is its loss (the mean over micro-batches) and this rank's stop-signal flags, summed over
ranks in one small all-reduce: ``[loss sum, SIGTERM count, SIGINT count]``. Reading it at once would make
the host wait until the device has finished the whole step, so the GPU would idle while LAMB's Python
and the next batch are prepared, every step. Instead the result is copied to the host behind the step's
work (central/host_copy.py) and read after the *next* step has been queued: the loss is logged, checked
for NaN/inf, and a stop request adopted, one step late.

``--nonfinite_loss skip`` must know before the optimizer step whether to take it, so that mode reads
each result at once (one wait for the device per step, the price of skipping).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Deque, List, Optional

import torch

from central.distributed import all_reduce_sum
from central.host_copy import HostCopy
from central.stop_signals import StopSignals
from pretraining.dataset import StreamCounts


@dataclass
class StepResult:
    step: int                  # the number this step's checkpoint would carry
    values: HostCopy           # [loss summed over ranks, stop flags summed over ranks]
    world_size: int
    applied: bool = False      # the optimizer step ran (False: skipped for a non-finite loss)
    epoch: int = 0             # where the data was, and the step's lr, for its log record
    learning_rate: float = 0.0
    skipped_steps: int = 0
    finished_at: float = 0.0   # host time when the step was issued in full, and the data stream's counts
    counts: Optional[StreamCounts] = None  # then: its log record is timed by these, not by when it is read

    @property
    def loss(self) -> float:
        """The mean loss over ranks (the first use waits for this step's copy)."""
        return self.values.values()[0] / self.world_size

    @property
    def stop_counts(self) -> List[float]:
        return self.values.values()[1:]

    def mark_applied(self, epoch: int, learning_rate: float, skipped_steps: int, counts: StreamCounts) -> None:
        self.applied, self.epoch, self.learning_rate, self.skipped_steps = True, epoch, learning_rate, skipped_steps
        self.finished_at, self.counts = time.time(), replace(counts)


class StepResults:
    """The results not read yet, oldest first."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.unread: Deque[StepResult] = deque()

    def agree(self, step: int, loss: torch.Tensor, signals: StopSignals) -> StepResult:
        """Sum this step's loss (0-dim, on the device) and stop flags over ranks; nothing waits for it."""
        packed = torch.cat([loss.detach().float().reshape(1), signals.local_flags(loss.device)])  # [1 + signals]
        result = StepResult(step, HostCopy(all_reduce_sum(packed)), self.world_size)
        self.unread.append(result)
        return result

    def take(self, newest_too: bool) -> List[StepResult]:
        """The results to read now, oldest first: all but the newest (its copy may still be queued
        behind the step the device is running), or all of them when ``newest_too``."""
        keep = 0 if newest_too else 1
        taken = []
        while len(self.unread) > keep:
            taken.append(self.unread.popleft())
        return taken
