"""The typed configuration of the fine-tuning loop, built once from a task script's parsed flags.

Every field is one flag of ``finetuning/args.py`` (or of run_glue.py: ``eval_steps``) under the same
name; the parsers hold the defaults and the help, so this class declares none except for flags some
scripts do not have. Values derived from several flags are methods. The task code (squad_task,
glue_task) builds it in ``run(args)`` after checking the flags; the loop reads this object, never
the flags.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, dataclass, fields


@dataclass(frozen=True, kw_only=True, slots=True)
class FinetuneConfig:
    # -- batches and schedule
    per_device_train_batch_size: int     # sequences per micro-batch on this rank
    gradient_accumulation_steps: int     # micro-batches per optimizer step
    num_train_epochs: float              # used when max_steps <= 0
    max_steps: int                       # optimizer steps (> 0 overrides the epochs)
    warmup_steps: int                    # linear warm-up steps (> 0 overrides the proportion)
    warmup_proportion: float             # warm-up as a fraction of all steps
    seed: int                            # weights of new heads, dropout, shuffling
    # -- optimizer
    learning_rate: float
    weight_decay: float                  # AdamW decay of matrices (never of biases / LayerNorm)
    adam_epsilon: float
    max_grad_norm: float                 # global clipping (<= 0: none)
    use_fused_adam: bool                 # hpex FusedAdamW on HPU
    use_fused_clip_norm: bool            # hpex FusedClipNorm on HPU
    # -- outputs
    output_dir: str                      # checkpoint-<step>/ folders go here
    logging_steps: int                   # optimizer steps per DLLogger record (0: only at the end)
    save_steps: int                      # optimizer steps per checkpoint (0: only the final model)
    eval_steps: int = 0                  # run_glue: evaluate every N steps (0: not during training)
    disable_progress_bar: bool
    # -- where it runs
    device: str                          # auto | hpu | cuda | cpu
    mode: str                            # eager | graph | lazy
    data_type: str                       # fp32 | bf16
    dist_timeout: float                  # seconds a collective may wait

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "FinetuneConfig":
        """The config of a fine-tuning script's parsed flags (a flag the script lacks takes the field's
        default; the task's own flags stay with the task)."""
        values = {}
        for field in fields(cls):
            if hasattr(args, field.name) or field.default is MISSING:
                values[field.name] = getattr(args, field.name)
        return cls(**values)

    @property
    def accumulation(self) -> int:
        return max(1, self.gradient_accumulation_steps)

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the run: --max_steps, else the epochs' worth (at least 1)."""
        if self.max_steps > 0:
            return self.max_steps
        return max(1, math.ceil(self.num_train_epochs * steps_per_epoch))

    def warmup_for(self, total_steps: int) -> int:
        if self.warmup_steps > 0:
            return self.warmup_steps
        return int(self.warmup_proportion * total_steps)
