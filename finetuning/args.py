"""Command-line arguments shared by every fine-tuning script (run_squad.py, run_glue.py).

Names follow the reference scripts (HF examples of the transformers v3/v4 era plus Habana's flags),
so the launcher and existing command lines keep working. Each script adds its task's own flags. Defaults
that depend on the task come from ``finetuning.task_defaults``, the runtime's options (device, mode,
precision, ...) from ``central.cli_options``; ``demo_bert.py finetuning`` copies these declarations.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence, Type

from central.cli_options import add_runtime_options, whole_number
from finetuning.task_defaults import TASK_DEFAULTS
from pretraining import model_names


def add_common_args(parser: argparse.ArgumentParser, task: str) -> argparse.ArgumentParser:
    """The flags of every fine-tuning script; ``task`` ("squad" | "glue") picks the TASK_DEFAULTS row."""
    defaults = TASK_DEFAULTS[task]
    parser.add_argument("--model_name_or_path", required=True, metavar="NAME", help=model_names.HELP)
    parser.add_argument("--output_dir", required=True, help="task output folder (eval_results.json, model, logs)")
    parser.add_argument("--data_dir", required=True, help="folder holding the task's data files")
    parser.add_argument("--vocab_file", default=None,
                        help="vocab.txt for a model without a tokenizer (presets, bert_config.json, ckpt_N.pt)")
    parser.add_argument("--do_lower_case", default=None, type=lambda s: s.lower() in ("1", "true", "yes"),
                        help="lower-case input (default: what the tokenizer says, else True)")
    parser.add_argument("--cache_dir", default=None, help="Hugging Face cache for hub downloads")
    parser.add_argument("--do_train", action="store_true", help="fine-tune on the training set")
    parser.add_argument("--do_eval", action="store_true", help="score on the dev set (after training)")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="replace a model already in --output_dir")
    parser.add_argument("--max_seq_length", type=whole_number, default=defaults.max_seq_length,
                        help="tokens per example (longer ones are cut; SQuAD splits documents with --doc_stride)")
    parser.add_argument("--per_device_train_batch_size", type=whole_number, default=8, help="training batch per device")
    parser.add_argument("--per_device_eval_batch_size", type=whole_number, default=8,
                        help="evaluation batch per device")
    parser.add_argument("--learning_rate", type=float, default=defaults.learning_rate, help="peak AdamW rate")
    parser.add_argument("--weight_decay", type=float, default=0.0)
    parser.add_argument("--adam_epsilon", type=float, default=1e-8)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--num_train_epochs", type=float, default=defaults.num_train_epochs,
                        help="passes over the training set")
    parser.add_argument("--max_steps", type=whole_number, default=-1,
                        help="stop after this many optimizer steps (-1: run --num_train_epochs)")
    parser.add_argument("--warmup_steps", type=whole_number, default=0)
    parser.add_argument("--warmup_proportion", type=float, default=0.0,
                        help="warm-up as a fraction of all steps (used when --warmup_steps is 0)")
    parser.add_argument("--gradient_accumulation_steps", type=whole_number, default=1)
    parser.add_argument("--logging_steps", type=whole_number, default=1, help="log the loss every N steps")
    parser.add_argument("--save_steps", type=whole_number, default=0,
                        help="save a checkpoint every N steps (0: only at the end)")
    parser.add_argument("--seed", type=whole_number, default=42, help="random seed")
    parser.add_argument("--use_fused_adam", action="store_true", help="fused AdamW (always used where available)")
    parser.add_argument("--use_fused_clip_norm", action="store_true", help="fused clip norm on HPU")
    add_runtime_options(parser)
    return parser


MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


def check_common_args(args, error: Type[Exception], positive: Sequence[str] = ()) -> None:
    """Refuse settings of the common flags that cannot work, as one-line ``error``s (the task's own type).

    ``positive`` names task flags that must be at least 1 too.
    """
    for flag in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                 *positive):
        if getattr(args, flag) < 1:
            raise error(f"--{flag} {getattr(args, flag)}: must be at least 1")
    if args.do_train and args.max_steps <= 0 and args.num_train_epochs <= 0:
        raise error(f"--num_train_epochs {args.num_train_epochs}: must be positive (or set --max_steps)")
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        raise error(f"--data_dir {args.data_dir}: no such folder")
    output = Path(args.output_dir)
    if args.do_train and not args.overwrite_output_dir and any((output / name).exists() for name in MODEL_FILES):
        raise error(f"--output_dir {output} already holds a model; pass --overwrite_output_dir to replace it")
