"""The typed configuration of one pre-training run (one phase), built once from run_pretraining's flags.

Every field is one flag of ``pretraining/run_pretraining.py`` under the same name; that parser holds
the defaults and the help, so this class declares none. Values derived from several flags are
properties, computed here once. ``pretraining.run_setup.plan_run`` checks the values against each
other and against the files they name; the training code reads this object, never the flags.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal, Optional

from pretraining.phases import micro_batch


@dataclass(frozen=True, kw_only=True, slots=True)
class PretrainingConfig:
    # -- data and model
    input_dir: str                       # folder of HDF5 shards (files named *training*)
    config_file: str                     # bert_config.json or a preset name
    vocab_file: Optional[str]            # vocab.txt for the HF export (None: <input_dir>/vocab.txt)
    init_checkpoint: Optional[str]       # weights (and optimizer moments) to start from
    max_seq_length: int                  # L of the shards
    max_predictions_per_seq: int         # P of the shards (masked slots per sample)
    enable_packed_data_mode: Optional[str]  # "True" | "False" (Habana's string flag) | None: as the shards are
    dynamic_masking: bool                # re-mask every micro-batch (pretraining.dynamic_masking)
    # -- optimisation
    train_batch_size: int                # rows (samples, or packs) per optimizer step on this rank
    gradient_accumulation_steps: int     # micro-batches per optimizer step (packed: see accumulation_steps)
    optimizer: Literal["lamb", "adamw"]  # pretraining.optimizers.make_optimizer
    learning_rate: float
    max_steps: float                     # optimizer steps of this phase
    warmup_proportion: float             # fraction of max_steps
    seed: int
    use_fused_lamb: bool                 # hpex FusedLamb on HPU
    allreduce_post_accumulation: bool    # no DDP: one flat all-reduce after accumulation
    allreduce_post_accumulation_fp16: bool  # ... in bf16 (the reference's name says fp16)
    # -- phases, resume, checkpoints
    phase2: bool
    phase1_end_step: int                 # phase 2's checkpoint names start after this step
    resume_from_checkpoint: bool
    resume_step: int                     # -1: the newest checkpoint
    output_dir: str                      # ckpt_<step>.pt files
    num_steps_per_checkpoint: int
    keep_checkpoints: int
    skip_checkpoint: bool
    steps_this_run: int                  # -1: until max_steps
    hf_export_dir: Optional[str]         # None: <output_dir>/../hf_export
    nonfinite_loss: Literal["stop", "skip"]
    # -- logging
    log_freq: float                      # optimizer steps per DLLogger record
    json_summary: Optional[str]          # DLLogger file
    disable_progress_bar: bool
    log_param_checksum: bool             # debug: per-rank parameter hashes after every step
    # -- where it runs
    device: str                          # auto | hpu | cuda | cpu
    mode: str                            # eager | graph | lazy
    data_type: str                       # fp32 | bf16
    dist_timeout: float                  # seconds a collective may wait

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PretrainingConfig":
        """The config of run_pretraining's parsed flags (flags that only steer the process, such as
        --debug and --local_rank, are not part of it)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def phase(self) -> int:
        return 2 if self.phase2 else 1

    @property
    def step_offset(self) -> int:
        """Added to the phase's own step count in checkpoint names and logs (as the reference does)."""
        return self.phase1_end_step if self.phase2 else 0

    @property
    def phase_steps(self) -> int:
        return int(self.max_steps)

    @property
    def micro_batch(self) -> int:
        """Rows per forward/backward on this rank: samples, or packs of packed shards."""
        return micro_batch(self.train_batch_size, self.gradient_accumulation_steps)

    @property
    def packed_mode_requested(self) -> Optional[bool]:
        """--enable_packed_data_mode as a bool (None: not given, the shards decide)."""
        return None if self.enable_packed_data_mode is None else self.enable_packed_data_mode == "True"

    def accumulation_steps(self, samples_per_row: float = 1.0) -> int:
        """Micro-batches per optimizer step, for data holding ``samples_per_row`` samples per row on average.

        The rule (Habana's for packed data): the micro-batch counts rows, so with packs of p samples on
        average (p = the packer's avg_seq_per_sample) accumulation becomes max(1, round(gas / p)), and an
        optimizer step still sees about micro_batch x gas samples, in fewer micro-steps. Learning rate,
        warm-up and max_steps stay as given. Unpacked data (p = 1) keeps --gradient_accumulation_steps.
        When gas / p rounds to 0 (e.g. no accumulation), one micro-batch of packs is a step: about p
        times the samples of an unpacked step (the run says so in its log).
        """
        if samples_per_row == 1.0:
            return self.gradient_accumulation_steps
        return max(1, round(self.gradient_accumulation_steps / samples_per_row))

    @property
    def log_every(self) -> int:
        """Optimizer steps per DLLogger record (at least 1)."""
        return max(1, int(math.ceil(self.log_freq)))

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output_dir)

    @property
    def hf_export_root(self) -> Path:
        """The finished phase's HF export goes to <this>/phase<N>."""
        return Path(self.hf_export_dir) if self.hf_export_dir else self.checkpoint_dir.parent / "hf_export"

    def last_step_of_run(self, steps_done: int) -> int:
        """The phase step at which this invocation stops (--steps_this_run counts from ``steps_done``)."""
        if self.steps_this_run < 0:
            return self.phase_steps
        return min(self.phase_steps, steps_done + self.steps_this_run)
