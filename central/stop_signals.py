"""SIGTERM / SIGINT during training: finish the current step, save, exit with 128 + the signal number.

A cluster scheduler (or the launcher, which forwards signals to its children) sends SIGTERM before it
kills a job; Ctrl-C sends SIGINT. The first one is only recorded here and the training loop stops at
the next step boundary. One request often arrives more than once (the launcher signals the whole
process group and torchrun/mpirun forward it to the ranks again), so repeats within
``REPEAT_WINDOW_S`` are the same request; a signal after that ends the process at once.

Several ranks must stop at the same step, or the ones that go on wait forever in their next
all-reduce. So the decision comes from the flags summed over ranks, never from this rank's own
``requested`` (a signal that lands after the flags were sampled must not stop one rank alone):

* ``agree`` asks every rank in one small all-reduce and reads the answer at once (the host waits for
  the device);
* ``agree_one_step_late`` reads the previous call's answer and leaves this call's in flight
  (central/host_copy.py): nothing waits for the device, and the run stops one step later;
* a loop that all-reduces something every step anyway can carry the request along: sum ``local_flags``
  with its own values and hand the summed flags to ``adopt``.

Either way every rank ends up with the same ``signum`` and stops at the same step.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Optional, Sequence

import torch

from central.distributed import all_reduce_sum, is_distributed
from central.host_copy import HostCopy

REPEAT_WINDOW_S = 5.0


class StopSignals:
    """Context manager that turns SIGTERM/SIGINT into ``requested`` (handlers only in the main thread)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: Optional[int] = None
        self._first_at = 0.0
        self._previous = {}
        self._in_flight: Optional[HostCopy] = None  # agree_one_step_late's all-reduced flags, not read yet

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
        """[len(SIGNALS)] float: 1 at the signal this rank received, else 0 (to be summed over ranks).

        Without a signal (every step but the last) the zeros are filled on the device: copying a host
        list to a GPU (``torch.tensor(..., device=cuda)``) would make the host wait for the device."""
        if self.signum is None:
            return torch.zeros(len(self.SIGNALS), device=device)
        return torch.tensor([float(self.signum == s) for s in self.SIGNALS], device=device)

    def adopt(self, counts: Sequence[float]) -> bool:
        """Take the signal any rank received (``local_flags`` summed over ranks); True when one did."""
        asked = False
        for signum, count in zip(self.SIGNALS, counts):
            if count > 0:
                asked = True
                if self.signum is None:
                    self.signum = int(signum)
        return asked

    def agree(self, device: torch.device) -> bool:
        """True on every rank when any rank received a stop signal (one all-reduce; none for one process)."""
        if not is_distributed():
            return self.requested
        return self.adopt(all_reduce_sum(self.local_flags(device)).tolist())

    def agree_one_step_late(self, device: torch.device) -> bool:
        """``agree`` for a loop that calls it once per step on every rank: this call's flags are summed
        on the device and read by the next call, which decides from them, so nothing waits for the device
        and every rank stops at the same step, one step after the signal was sampled."""
        if not is_distributed():
            return self.requested
        previous, self._in_flight = self._in_flight, HostCopy(all_reduce_sum(self.local_flags(device)))
        return previous is not None and self.adopt(previous.values())

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
