"""SIGTERM / SIGINT handling for training: finish the current step, save a checkpoint, exit.

A cluster scheduler (or the launcher, which forwards signals to its children) sends SIGTERM before it
kills a job; Ctrl-C sends SIGINT. The first one is only recorded here and the training loop stops at
the next step boundary. One request often arrives more than once (the launcher signals the whole
process group and torchrun/mpirun forward it to the ranks again), so repeats within
``REPEAT_WINDOW_S`` are the same request; a signal after that ends the process at once.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Optional

REPEAT_WINDOW_S = 5.0


class StopSignals:
    """Context manager that turns SIGTERM/SIGINT into ``requested`` (the main thread only)."""

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

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
