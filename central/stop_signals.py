"""SIGTERM / SIGINT during training: finish the current step, save, exit with 128 + the signal number.

A cluster scheduler (or the launcher, which forwards signals to its children) sends SIGTERM before it
kills a job; Ctrl-C sends SIGINT. The first one is only recorded here and the training loop stops at
the next step boundary. One request often arrives more than once (the launcher signals the whole
process group and torchrun/mpirun forward it to the ranks again), so repeats within
``REPEAT_WINDOW_S`` are the same request; a signal after that ends the process at once.

Several ranks must stop at the same step, or the ones that go on wait forever in their next
all-reduce. ``agree`` asks every rank in one small all-reduce; a loop that all-reduces something every
step anyway can carry the request along instead: sum ``local_flags`` with its own values and hand the
summed flags to ``adopt``. Either way every rank ends up with the same ``signum``.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Optional, Sequence

import torch

from central.distributed import all_reduce_sum, is_distributed

REPEAT_WINDOW_S = 5.0


class StopSignals:
    """Context manager that turns SIGTERM/SIGINT into ``requested`` (handlers only in the main thread)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: Optional[int] = None
        self._first_at = 0.0
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum, self._first_at = signum, time.monotonic()
        elif time.monotonic() - self._first_at > REPEAT_WINDOW_S:  # asked again: do what it would do without us
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def local_flags(self, device: torch.device) -> torch.Tensor:
        """[len(SIGNALS)] float: 1 at the signal this rank received, else 0 (to be summed over ranks)."""
        return torch.tensor([float(self.signum == s) for s in self.SIGNALS], device=device)

    def adopt(self, counts: Sequence[float]) -> bool:
        """Take the signal any rank received (``local_flags`` summed over ranks); True when one did."""
        for signum, count in zip(self.SIGNALS, counts):
            if count > 0 and self.signum is None:
                self.signum = int(signum)
        return self.requested

    def agree(self, device: torch.device) -> bool:
        """True on every rank when any rank received a stop signal (one all-reduce; none for one process)."""
        if not is_distributed():
            return self.requested
        return self.adopt(all_reduce_sum(self.local_flags(device)).tolist())

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
