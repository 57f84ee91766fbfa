"""Test-only faults, installed once when a run is built; the training step and the save path hold no
test code.

tests/test_pretraining_faults.py creates the failures of a real cluster on demand through two
environment variables, read once at start-up (``InjectedFaults.from_environment``):

* ``BERT_TEST_NAN_LOSS_AT_STEP=N``: the loss of step N becomes NaN, on its first attempt only (a step
  retried after ``--nonfinite_loss skip`` computes normally). Installed by wrapping the forward call.
* ``BERT_TEST_CHECKPOINT_STALL_S=S``: every checkpoint write sleeps S seconds after its bytes are
  written and before the file is renamed into place (so a test can kill the process there).
  Installed by wrapping the checkpoint file writer.

Unset (every real run), ``wrap_forward`` and ``wrap_checkpoint_writer`` return what they are given.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

NAN_LOSS_AT_STEP_ENV = "BERT_TEST_NAN_LOSS_AT_STEP"        # absolute step whose loss becomes NaN
CHECKPOINT_STALL_ENV = "BERT_TEST_CHECKPOINT_STALL_S"      # seconds to sleep before a save's rename


@dataclass(frozen=True)
class InjectedFaults:
    nan_loss_at_step: Optional[int] = None
    checkpoint_stall_s: float = 0.0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "InjectedFaults":
        step = environ.get(NAN_LOSS_AT_STEP_ENV)
        return cls(nan_loss_at_step=int(step) if step else None,
                   checkpoint_stall_s=float(environ.get(CHECKPOINT_STALL_ENV) or 0))

    def wrap_forward(self, forward: Callable, first_step: int, accumulation: int) -> Callable:
        """``forward`` (returning ``(loss, ...)``), or one whose losses are NaN during the first attempt at
        step ``nan_loss_at_step``, for a run whose first attempt is step ``first_step``."""
        if self.nan_loss_at_step is None or self.nan_loss_at_step < first_step:
            return forward
        return _NanLossOnce(forward, (self.nan_loss_at_step - first_step) * accumulation, accumulation)

    def wrap_checkpoint_writer(self, write_file: Callable[[dict, str], None]) -> Callable[[dict, str], None]:
        if self.checkpoint_stall_s <= 0:
            return write_file

        def write_then_stall(state: dict, path: str) -> None:
            write_file(state, path)
            time.sleep(self.checkpoint_stall_s)
        return write_then_stall


class _NanLossOnce:
    """Counts forward calls; calls [first, first + count) return a NaN loss (one optimizer step's
    micro-batches). The count keeps going through a retried step, so the retry is computed normally."""

    def __init__(self, forward: Callable, first: int, count: int):
        self.forward, self.nan_calls, self.calls = forward, range(first, first + count), 0

    def __call__(self, *args, **kwargs):
        loss, *rest = self.forward(*args, **kwargs)
        if self.calls in self.nan_calls:
            loss = loss + float("nan")  # NaN gradients too, as a real overflow gives
        self.calls += 1
        return (loss, *rest)
