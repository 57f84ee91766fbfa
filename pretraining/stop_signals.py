"""SIGTERM / SIGINT handling for training: finish the current step, save a checkpoint, exit.

A cluster scheduler (or the launcher, which forwards signals to its children) sends SIGTERM before it
kills a job; Ctrl-C sends SIGINT. The first one is only recorded here and the training loop stops at
the next step boundary; a second one ends the process at once with the default action.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Optional


class StopSignals:
    """Context manager that turns SIGTERM/SIGINT into ``requested`` (the main thread only)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # second signal: do what it would have done without us
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
