"""Test-only fault hooks, driven by environment variables that only the fault-injection tests set.

They let tests/test_pretraining_faults.py create the failures of a real cluster on demand: a
non-finite loss at a chosen step and a process that stalls in the middle of a checkpoint write (so it
can be killed there). Unset, every hook is inert.
"""
from __future__ import annotations

import os
import time

NAN_LOSS_AT_STEP_ENV = "BERT_TEST_NAN_LOSS_AT_STEP"        # absolute step whose loss becomes NaN
CHECKPOINT_STALL_ENV = "BERT_TEST_CHECKPOINT_STALL_S"      # seconds to sleep before a save's rename


def injected_loss_fault(step: int, first_attempt: bool) -> float:
    """NaN (added to the loss) on the first attempt at the step the tests named, else 0.0; a retried
    step (after --nonfinite_loss skip) computes normally."""
    wanted = os.environ.get(NAN_LOSS_AT_STEP_ENV)
    return float("nan") if wanted and int(wanted) == step and first_attempt else 0.0


def stall_inside_checkpoint_write() -> None:
    """Called after a checkpoint's bytes are written and before the file is renamed into place."""
    seconds = float(os.environ.get(CHECKPOINT_STALL_ENV) or 0)
    if seconds > 0:
        time.sleep(seconds)
