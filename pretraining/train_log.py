"""What a pre-training run reports: DLLogger records (rank 0) and the tqdm bar.

Records, as the reference writes them (DESIGN.md "Logs"):
  PARAMETER   Config (all arguments), SEED, train_start, batch_size_per_pu, learning_rate, ...
  [epoch, step] every --log_freq optimizer steps: average_loss (mean over those steps), step_loss,
              learning_rate, average_training_time_step (s), average_perf_per_step (sequences/s on
              one device), skipped_steps (only once a non-finite step was skipped)
  []          at the end: final_loss, training_sequences_per_second (all devices), e2e_train_time,
              raw_train_time (s)
Losses are means over all ranks. ``step`` is the checkpoint-name step (phase 2 adds phase1_end_step).
"""
from __future__ import annotations

import time
from typing import List, Optional

from central.dllog import DLLogger, console, progress


class TrainingLog:
    def __init__(self, json_path: Optional[str], is_main: bool, sequences_per_step: int, log_freq: int,
                 total_steps: int, first_step: int, show_progress: bool):
        self.logger = DLLogger(json_path, enabled=is_main)
        self.is_main = is_main
        self.sequences_per_step = sequences_per_step  # per device: micro-batch x accumulation
        self.log_freq = log_freq
        self.bar = progress(total=total_steps, initial=first_step, desc="pre-training", unit="step",
                            enabled=is_main and show_progress)
        self.window: List[float] = []   # losses of the steps since the last record
        self.last_window: List[float] = []
        self.window_start = time.time()
        self.train_start: Optional[float] = None
        self.train_end: Optional[float] = None
        self.steps_done = 0

    def parameters(self, data: dict) -> None:
        self.logger.parameters(data)

    def note(self, message: str) -> None:
        console(message, enabled=self.is_main)

    def start_training(self) -> None:
        self.train_start = self.window_start = time.time()

    def end_training(self) -> None:
        self.train_end = time.time()

    def step(self, epoch: int, step: int, loss: float, learning_rate: float, skipped_steps: int) -> None:
        """One finished optimizer step (loss: mean over ranks and micro-batches)."""
        self.steps_done += 1
        self.window.append(loss)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if len(self.window) < self.log_freq:
            return
        elapsed = time.time() - self.window_start
        record = {
            "average_loss": sum(self.window) / len(self.window),
            "step_loss": loss,
            "learning_rate": learning_rate,
            "average_training_time_step": elapsed / len(self.window),
            "average_perf_per_step": self.sequences_per_step * len(self.window) / max(elapsed, 1e-9),
        }
        if skipped_steps:
            record["skipped_steps"] = skipped_steps
        self.logger.log((epoch, step), record)
        self.last_window, self.window = self.window, []
        self.window_start = time.time()

    def finish(self, world_size: int, e2e_start: float) -> None:
        self.bar.close()
        now = time.time()
        raw = (self.train_end or now) - (self.train_start or now)
        losses = self.window or self.last_window
        data = {
            "e2e_train_time": now - e2e_start,
            "training_sequences_per_second": self.sequences_per_step * world_size * self.steps_done / max(raw, 1e-9),
            "raw_train_time": raw,
        }
        if losses:
            data["final_loss"] = sum(losses) / len(losses)
        self.logger.log((), data)

    def close(self) -> None:
        self.bar.close()
        self.logger.close()
