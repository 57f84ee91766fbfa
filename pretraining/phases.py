"""The two pre-training phases' defaults, and the batch arithmetic between the launcher and the script.

One table (the reference's values) serves both sides: ``run_pretraining``'s parser takes its defaults from
phase 1, or phase 2 with ``--phase2``; ``demo_bert.py pretraining`` shows and sends both as its per-phase
pairs. Batch sizes come in three kinds:

* micro-batch: the sequences one forward pass sees on one device (the launcher's ``-b/--batch_size``);
* per-rank batch: the sequences one rank contributes to an optimizer step, micro-batch x accumulation
  steps (run_pretraining's reference ``--train_batch_size``, with ``--gradient_accumulation_steps``);
* global batch: the sequences of one optimizer step over all ranks (the launcher's ``--train_batch_size``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from central.errors import BadInputError


@dataclass(frozen=True)
class PhaseDefaults:
    max_seq_length: int
    max_predictions_per_seq: int
    learning_rate: float       # peak LAMB rate
    micro_batch: int           # per device
    global_batch: int          # per optimizer step, all ranks together (with accumulation)
    max_steps: int             # optimizer steps
    warmup_proportion: float   # fraction of max_steps
    save_steps: int            # a checkpoint every N optimizer steps


PHASES: Dict[int, PhaseDefaults] = {
    1: PhaseDefaults(max_seq_length=128, max_predictions_per_seq=20, learning_rate=6e-3, micro_batch=64,
                     global_batch=65536, max_steps=7038, warmup_proportion=0.2843, save_steps=200),
    2: PhaseDefaults(max_seq_length=512, max_predictions_per_seq=80, learning_rate=4e-3, micro_batch=8,
                     global_batch=32768, max_steps=1563, warmup_proportion=0.128, save_steps=200),
}

# run_pretraining's options whose default depends on the phase -> the PhaseDefaults field. Without
# accumulation the script's per-rank --train_batch_size is one micro-batch.
SCRIPT_PHASE_OPTIONS = {
    "max_seq_length": "max_seq_length",
    "max_predictions_per_seq": "max_predictions_per_seq",
    "learning_rate": "learning_rate",
    "train_batch_size": "micro_batch",
    "max_steps": "max_steps",
    "warmup_proportion": "warmup_proportion",
    "num_steps_per_checkpoint": "save_steps",
}


def phase_default(phase: int, option: str):
    """The phase's default for one of run_pretraining's ``SCRIPT_PHASE_OPTIONS`` (given by its dest)."""
    return getattr(PHASES[phase], SCRIPT_PHASE_OPTIONS[option])


def per_rank_batch(batch_size: int, world_size: int, accumulate: bool, train_batch_size: Optional[int],
                   phase: int) -> Tuple[int, int]:
    """(sequences per optimizer step on one rank, gradient accumulation steps) for one phase.

    ``batch_size`` is the per-device micro-batch: always what one forward pass sees. Without ``accumulate``
    every micro-batch is an optimizer step; with it, the global batch ``train_batch_size`` (default: the
    phase's) is reached by accumulating ``global / (world_size x batch_size)`` micro-batches on every rank,
    which must be a whole number.
    """
    if not accumulate:
        return batch_size, 1
    global_batch = train_batch_size if train_batch_size is not None else PHASES[phase].global_batch
    per_step = world_size * batch_size
    if global_batch % per_step:
        raise BadInputError(
            f"--train_batch_size {global_batch} (phase {phase}) is not a multiple of --world_size x --batch_size"
            f" = {world_size} x {batch_size} = {per_step}; choose values that divide")
    steps = global_batch // per_step
    return batch_size * steps, steps


def micro_batch(train_batch_size: int, gradient_accumulation_steps: int) -> int:
    """The micro-batch of run_pretraining's reference interface: per-rank batch / accumulation steps."""
    if train_batch_size % gradient_accumulation_steps:
        raise BadInputError(f"--train_batch_size {train_batch_size} is not a multiple of "
                            f"--gradient_accumulation_steps {gradient_accumulation_steps}")
    return train_batch_size // gradient_accumulation_steps
