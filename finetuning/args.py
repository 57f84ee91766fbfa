"""Command-line arguments shared by every fine-tuning script (run_squad.py, run_glue.py).

Names follow the reference scripts (HF examples of the transformers v3/v4 era plus Habana's flags),
so the launcher and existing command lines keep working. Each script adds its task's own flags.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence, Type

from central.device import DEVICE_CHOICES, MODE_CHOICES, PRECISION_CHOICES


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model_name_or_path", required=True,
                        help="HF model id or directory, a preset (tiny, mini, base, large), a bert_config.json, "
                             "or a pre-training ckpt_N.pt")
    parser.add_argument("--output_dir", required=True, help="task output folder (eval_results.json, model, logs)")
    parser.add_argument("--data_dir", required=True, help="folder holding the task's data files")
    parser.add_argument("--vocab_file", default=None,
                        help="vocab.txt for a model without a tokenizer (presets, bert_config.json, ckpt_N.pt)")
    parser.add_argument("--do_lower_case", default=None, type=lambda s: s.lower() in ("1", "true", "yes"),
                        help="lower-case input (default: what the tokenizer says, else True)")
    parser.add_argument("--cache_dir", default=None, help="where hub downloads are cached")
    parser.add_argument("--do_train", action="store_true")
    parser.add_argument("--do_eval", action="store_true")
    parser.add_argument("--overwrite_output_dir", action="store_true")
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--per_device_train_batch_size", type=int, default=8)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--weight_decay", type=float, default=0.0)
    parser.add_argument("--adam_epsilon", type=float, default=1e-8)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--num_train_epochs", type=float, default=3.0)
    parser.add_argument("--max_steps", type=int, default=-1, help="stop after this many optimizer steps (-1: epochs)")
    parser.add_argument("--warmup_steps", type=int, default=0)
    parser.add_argument("--warmup_proportion", type=float, default=0.0,
                        help="warm-up as a fraction of all steps (used when --warmup_steps is 0)")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--logging_steps", type=int, default=500)
    parser.add_argument("--save_steps", type=int, default=0, help="save a checkpoint every N steps (0: only at the end)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--mode", choices=MODE_CHOICES, default="eager")
    parser.add_argument("--data_type", choices=PRECISION_CHOICES, default="fp32")
    parser.add_argument("--use_fused_adam", action="store_true", help="fused AdamW (always used where available)")
    parser.add_argument("--use_fused_clip_norm", action="store_true", help="fused clip norm on HPU")
    parser.add_argument("--local_rank", type=int, default=-1, help="set by the launcher")
    parser.add_argument("--dist_timeout", type=float, default=1800.0)
    parser.add_argument("--disable_progress_bar", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for bad input")
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
