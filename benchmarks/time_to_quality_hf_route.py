"""The Hugging Face route of benchmarks.time_to_quality: transformers' ``run_mlm.py`` recipe, written out.

    python -m benchmarks.time_to_quality_hf_route prepare --corpus DIR --vocab_file VOCAB --output chunks.npz
    python -m benchmarks.time_to_quality_hf_route train --data chunks.npz --vocab_file VOCAB --output_dir DIR \
        --max_steps N [--deadline EPOCH_SECONDS] [--checkpoint_seconds S] [--learning_rate ...]

``prepare`` is run_mlm.py's data path without the ``datasets`` package: every line of the corpus files
is one example, tokenized with special tokens (``[CLS] line [SEP]``, BERT's uncased vocab through a fast
``BertTokenizer``), all examples concatenated and cut into blocks of ``--max_seq_length`` (the remainder
dropped), as run_mlm's ``group_texts`` does. ``train`` is run_mlm.py's training: ``BertForMaskedLM`` of
the ``mini`` shape from scratch, ``DataCollatorForLanguageModeling`` (15% dynamic masking, 80/10/10),
``Trainer`` with its AdamW and a linear schedule with warm-up. Two additions for the benchmark, both
callbacks: a checkpoint every ``--checkpoint_seconds`` of wall time, and a stop (with a checkpoint) at the
first step end after ``--deadline``. Step end times go to ``<output_dir>/timeline.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from benchmarks.time_to_quality_text import fast_tokenizer, iter_lines
from pretraining.bert_config import PRESETS, count_vocab


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.time_to_quality_hf_route", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="tokenize, concatenate and chunk the corpus (run_mlm's group_texts)")
    prepare.add_argument("--corpus", required=True, help="folder of .txt files, one example per line")
    prepare.add_argument("--vocab_file", required=True)
    prepare.add_argument("--max_seq_length", type=int, default=128)
    prepare.add_argument("--output", required=True, help=".npz of input_ids int32 [N, max_seq_length]")
    train = commands.add_parser("train", help="BertForMaskedLM (mini) from scratch with Trainer")
    train.add_argument("--data", required=True, help="the .npz written by prepare")
    train.add_argument("--vocab_file", required=True)
    train.add_argument("--output_dir", required=True)
    train.add_argument("--model", default="mini", choices=sorted(PRESETS), help="shape (pretraining.bert_config)")
    train.add_argument("--max_steps", type=int, required=True, help="length of the lr schedule")
    train.add_argument("--batch_size", type=int, default=32)
    train.add_argument("--learning_rate", type=float, default=5e-4)
    train.add_argument("--warmup_proportion", type=float, default=0.06)
    train.add_argument("--weight_decay", type=float, default=0.01)
    train.add_argument("--mlm_probability", type=float, default=0.15)
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    train.add_argument("--deadline", type=float, default=0.0, help="time.time() at which to stop and save (0: none)")
    train.add_argument("--checkpoint_seconds", type=float, default=0.0, help="save every this many seconds (0: never)")
    return parser


def prepare(args) -> None:
    tokenizer = fast_tokenizer(Path(args.vocab_file))
    files = sorted(Path(args.corpus).glob("*.txt"))
    lines = list(iter_lines(files))
    ids = np.concatenate([np.asarray(row, dtype=np.int32) for row in tokenizer(lines)["input_ids"]])
    blocks = len(ids) // args.max_seq_length
    chunks = ids[:blocks * args.max_seq_length].reshape(blocks, args.max_seq_length)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.output, input_ids=chunks)
    print(f"hf route prepare: {len(lines)} examples from {len(files)} files, {len(ids)} tokens, "
          f"{blocks} blocks of {args.max_seq_length}", flush=True)


class ChunkDataset:
    """Blocks of token ids, as run_mlm's grouped dataset yields them (with the special-tokens mask)."""

    def __init__(self, chunks: np.ndarray, special_ids: List[int]):
        self.chunks = chunks
        self.special = np.isin(chunks, special_ids).astype(np.int64)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.chunks[index].astype(np.int64).tolist(),
                "special_tokens_mask": self.special[index].tolist()}


def timed_callbacks(deadline: float, checkpoint_seconds: float, max_steps: int, timeline: Path):
    from transformers import TrainerCallback

    class WallClock(TrainerCallback):
        """Checkpoints by wall time, a stop at the deadline, and each step's end time in timeline.json."""

        def __init__(self):
            self.start = time.time()
            self.next_save = self.start + checkpoint_seconds if checkpoint_seconds > 0 else float("inf")
            self.steps: List[list] = []

        def on_step_end(self, args, state, control, **kwargs):
            now = time.time()
            self.steps.append([state.global_step, now])
            if now >= self.next_save:
                control.should_save = True
                while self.next_save <= now:
                    self.next_save += checkpoint_seconds
            if (deadline and now >= deadline) or state.global_step >= max_steps:
                control.should_training_stop = True
                control.should_save = checkpoint_seconds > 0
            return control

        def on_train_end(self, args, state, control, **kwargs):
            timeline.write_text(json.dumps({"start": self.start, "steps": self.steps}), encoding="utf-8")

    return WallClock()


def train(args) -> None:
    import torch
    import transformers
    from transformers import BertForMaskedLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    tokenizer = fast_tokenizer(Path(args.vocab_file))
    chunks = np.load(args.data)["input_ids"]
    dataset = ChunkDataset(chunks, [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id])
    shape = PRESETS[args.model].with_vocab_size(count_vocab(args.vocab_file))
    transformers.set_seed(args.seed)
    model = BertForMaskedLM(transformers.BertConfig(**shape.to_dict()))
    output_dir = Path(args.output_dir)
    training_args = TrainingArguments(
        output_dir=str(output_dir), max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, warmup_steps=int(round(args.warmup_proportion * args.max_steps)),
        weight_decay=args.weight_decay, lr_scheduler_type="linear", seed=args.seed, use_cpu=True,
        save_strategy="no", logging_strategy="steps", logging_steps=50, report_to="none", disable_tqdm=True,
        dataloader_drop_last=True)
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=args.mlm_probability)
    callback = timed_callbacks(args.deadline, args.checkpoint_seconds, args.max_steps, output_dir / "timeline.json")
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator,
                      processing_class=tokenizer, callbacks=[callback])
    print(f"hf route: {len(dataset)} blocks, {sum(p.numel() for p in model.parameters())} parameters, "
          f"{torch.get_num_threads()} threads, max_steps {args.max_steps}, batch {args.batch_size}, "
          f"AdamW lr {args.learning_rate:g}, warm-up {args.warmup_proportion:g}, "
          f"attention {model.config._attn_implementation}", flush=True)
    trainer.train()


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    (prepare if args.command == "prepare" else train)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
