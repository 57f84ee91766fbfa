"""What a pre-training run reports: DLLogger records (rank 0) and the tqdm bar.

Records, as the reference writes them (DESIGN.md "Logs"):
  PARAMETER   Config (all arguments), SEED, train_start, batch_size_per_pu (rows: samples, or packs),
              gradient_accumulation_steps (the one used: packed data divides the flag's), learning_rate,
              packed_data, samples_per_row, samples_per_optimizer_step (all ranks), dynamic_masking, ...
  [epoch, step] every --log_freq optimizer steps: average_loss (mean over those steps), step_loss,
              learning_rate, average_training_time_step (s), average_perf_per_step, samples_per_second,
              packed runs also packs_per_second; skipped_steps (only once a non-finite step was skipped)
  []          at the end: final_loss, training_sequences_per_second (all devices), e2e_train_time,
              raw_train_time (s); packed runs also training_packs_per_second
Throughput counts what this rank's data stream handed out (``dataset.StreamCounts``), per second of the
window, on one device: ``average_perf_per_step`` keeps the reference's meaning, training sequences
(samples) per second on one device, and so does ``samples_per_second`` (the same number under a name
that says it); a packed run counts the real samples inside its packs (what Habana's packed trainer
reports), so the figures compare across layouts, and ``packs_per_second`` gives the rows. The
all-device figures multiply this rank's by the world size.
Losses are means over all ranks. ``step`` is the checkpoint-name step (phase 2 adds phase1_end_step).
"""
from __future__ import annotations

import time
from typing import List, Optional

from central.dllog import DLLogger, console, progress
from pretraining.dataset import StreamCounts


class TrainingLog:
    def __init__(self, json_path: Optional[str], is_main: bool, counts: StreamCounts, log_freq: int,
                 total_steps: int, first_step: int, show_progress: bool, packed: bool = False):
        self.logger = DLLogger(json_path, enabled=is_main)
        self.is_main = is_main
        self.counts = counts  # this rank's stream: rows and samples handed out so far
        self.packed = packed
        self.log_freq = log_freq
        self.bar = progress(total=total_steps, initial=first_step, desc="pre-training", unit="step",
                            enabled=is_main and show_progress)
        self.window: List[float] = []   # losses of the steps since the last record
        self.last_window: List[float] = []
        self.window_start = time.time()
        self.train_start: Optional[float] = None
        self.train_end: Optional[float] = None
        self.steps_done = 0
        self.window_counts = StreamCounts()  # the counts when the window (or training) started
        self.train_counts = StreamCounts()
        self.end_counts: Optional[StreamCounts] = None

    def parameters(self, data: dict) -> None:
        self.logger.parameters(data)

    def note(self, message: str) -> None:
        console(message, enabled=self.is_main)

    def start_training(self) -> None:
        self.train_start = self.window_start = time.time()
        self.window_counts = self.train_counts = StreamCounts(**vars(self.counts))

    def end_training(self) -> None:
        self.train_end = time.time()
        self.end_counts = StreamCounts(**vars(self.counts))

    def step(self, epoch: int, step: int, loss: float, learning_rate: float, skipped_steps: int,
             finished_at: Optional[float] = None, counts: Optional[StreamCounts] = None) -> None:
        """One finished optimizer step (loss: mean over ranks and micro-batches). The loop reads a step's
        loss one step late, so it passes when the step finished and the stream's counts then
        (``finished_at``, ``counts``; default: now): the window's time and samples are that step's own."""
        finished_at = time.time() if finished_at is None else finished_at
        counts = self.counts if counts is None else counts
        self.steps_done += 1
        self.window.append(loss)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if len(self.window) < self.log_freq:
            return
        elapsed = max(finished_at - self.window_start, 1e-9)
        samples = counts.samples - self.window_counts.samples
        record = {
            "average_loss": sum(self.window) / len(self.window),
            "step_loss": loss,
            "learning_rate": learning_rate,
            "average_training_time_step": elapsed / len(self.window),
            "average_perf_per_step": samples / elapsed,
            "samples_per_second": samples / elapsed,
        }
        if self.packed:
            record["packs_per_second"] = (counts.rows - self.window_counts.rows) / elapsed
        if skipped_steps:
            record["skipped_steps"] = skipped_steps
        self.logger.log((epoch, step), record)
        self.last_window, self.window = self.window, []
        self.window_start = finished_at
        self.window_counts = StreamCounts(**vars(counts))

    def finish(self, world_size: int, e2e_start: float) -> None:
        self.bar.close()
        now = time.time()
        raw = (self.train_end or now) - (self.train_start or now)
        losses = self.window or self.last_window
        end = self.end_counts or self.counts
        data = {
            "e2e_train_time": now - e2e_start,
            "training_sequences_per_second": (end.samples - self.train_counts.samples) * world_size / max(raw, 1e-9),
            "raw_train_time": raw,
        }
        if self.packed:
            data["training_packs_per_second"] = (end.rows - self.train_counts.rows) * world_size / max(raw, 1e-9)
        if losses:
            data["final_loss"] = sum(losses) / len(losses)
        self.logger.log((), data)

    def close(self) -> None:
        self.bar.close()
        self.logger.close()
