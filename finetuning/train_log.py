"""What a fine-tuning run reports: DLLogger records (rank 0), the tqdm bar, and the run's summary.

Records (``<output_dir>/dllogger.json``):
  PARAMETER   the task's settings, then the loop's: num_examples, num_epochs, total_steps, warmup_steps,
              per_device_batch_size, gradient_accumulation_steps, world_size, device, mode, precision
  [epoch, step] every --logging_steps optimizer steps and at the last one: loss (mean over those steps
              and all ranks), learning_rate, sequences_per_second (all ranks); mid-training evaluations
  []          at the end: e2e_train_time, training_sequences_per_second, final_loss, average_loss,
              global_step
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from central.distributed import all_reduce_mean
from central.dllog import DLLogger, progress
from central.runtime import Runtime


@dataclass
class TrainResult:
    global_step: int
    average_loss: float          # mean loss over all optimizer steps
    final_loss: float            # mean loss of the last logging window
    e2e_train_time: float        # seconds, from the first batch to the end of the last step
    training_sequences_per_second: float  # all ranks together
    stopped_by_signal: int = 0   # the signal number that asked the run to stop early (0: it ran to the end)


def open_logger(output_dir, runtime: Runtime) -> DLLogger:
    """The task's DLLogger file, ``<output_dir>/dllogger.json`` (rank 0 writes; other ranks stay quiet)."""
    return DLLogger(Path(output_dir) / "dllogger.json", enabled=runtime.is_main)


class FinetuneLog:
    """Loss windows summed on the device (one host sync per logged window, none per step)."""

    def __init__(self, logger: DLLogger, runtime: Runtime, total_steps: int, logging_steps: int,
                 show_progress: bool):
        self.logger, self.world_size, self.logging_steps = logger, runtime.dist.world_size, logging_steps
        self.bar = progress(total=total_steps, desc="fine-tuning", enabled=runtime.is_main and show_progress,
                            unit="step")
        self.window_loss = torch.zeros((), device=runtime.device)  # sum of micro-batch losses / accumulation
        self.window_steps, self.window_sequences = 0, 0
        self.total_loss, self.sequences, self.last_window_loss = 0.0, 0, float("nan")
        self.start = self.window_start = time.perf_counter()

    def micro_batch(self, loss: torch.Tensor, sequences: int) -> None:
        self.window_loss += loss.detach()
        self.window_sequences += sequences

    def step(self, epoch: int, step: int, learning_rate: float, last: bool) -> None:
        """One optimizer step done; a record every ``logging_steps`` steps and at the ``last`` one."""
        self.window_steps += 1
        self.bar.update(1)
        if not (last or (self.logging_steps > 0 and step % self.logging_steps == 0)):
            return
        all_reduce_mean(self.window_loss)  # every rank's loss, not rank 0's alone
        loss = self.window_loss.item() / max(1, self.window_steps)  # the one host sync per window
        now = time.perf_counter()
        rate = self.window_sequences * self.world_size / max(now - self.window_start, 1e-9)
        self.total_loss += loss * self.window_steps
        self.sequences += self.window_sequences
        self.last_window_loss = loss
        self.logger.log([epoch, step], {"loss": loss, "learning_rate": learning_rate, "sequences_per_second": rate})
        self.bar.set_postfix(loss=f"{loss:.4f}")
        self.window_loss.zero_()
        self.window_steps, self.window_sequences, self.window_start = 0, 0, now

    def record(self, epoch: int, step: int, metrics: dict) -> None:
        if metrics:
            self.logger.log([epoch, step], metrics)

    def finish(self, steps: int, stopped_by_signal: int) -> TrainResult:
        elapsed = time.perf_counter() - self.start
        self.bar.close()
        result = TrainResult(global_step=steps, average_loss=self.total_loss / max(1, steps),
                             final_loss=self.last_window_loss, e2e_train_time=elapsed,
                             training_sequences_per_second=(self.sequences + self.window_sequences) * self.world_size
                             / max(elapsed, 1e-9), stopped_by_signal=stopped_by_signal)
        self.logger.log([], {"e2e_train_time": result.e2e_train_time,
                             "training_sequences_per_second": result.training_sequences_per_second,
                             "final_loss": result.final_loss, "average_loss": result.average_loss,
                             "global_step": result.global_step})
        return result
