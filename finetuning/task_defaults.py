"""Fine-tuning defaults that depend on the task, in one table.

``run_squad`` and ``run_glue`` take their parsers' defaults from it, and ``demo_bert.py finetuning`` reads
those parsers, so the launcher shows and sends the same values. They are the seed README's command lines
(SQuAD v1.1: 384 tokens, 3e-5, 2 epochs; MRPC with BERT-Base: 128 tokens, 2e-5, 3 epochs), which are also
the reference scripts' own (run_squad's 384; the Hugging Face GLUE example's 128 / 2e-5 / 3 epochs).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TaskDefaults:
    max_seq_length: int        # tokens per example (SQuAD: per document window)
    learning_rate: float       # peak AdamW rate
    num_train_epochs: float

    def as_parser_defaults(self) -> dict:
        return asdict(self)


TASK_DEFAULTS = {
    "squad": TaskDefaults(max_seq_length=384, learning_rate=3e-5, num_train_epochs=2.0),
    "glue": TaskDefaults(max_seq_length=128, learning_rate=2e-5, num_train_epochs=3.0),  # MRPC's, every GLUE task
}
