"""BERT pre-training (masked LM + next-sentence prediction) with LAMB, one phase per invocation.

    python -m pretraining.run_pretraining --input_dir DIR --config_file bert_config.json \
        --output_dir results/checkpoints --max_seq_length 128 --max_predictions_per_seq 20 ...

The argument names and defaults are those of NVIDIA's/Habana's run_pretraining.py, so existing
command lines keep working; ``demo_bert.py pretraining`` builds them for each phase. This parser is
the one source of truth for the script's flags: the launcher's generated argv is tested against it.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from central.device import DEVICE_CHOICES, MODE_CHOICES, PRECISION_CHOICES
from central.errors import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pretraining.run_pretraining",
        description="Pre-train BERT (MLM + NSP) on HDF5 shards for one phase.",
    )
    # Required (reference).
    parser.add_argument("--input_dir", required=True, help="folder of HDF5 shards (files named *training*)")
    parser.add_argument("--config_file", required=True, help="bert_config.json describing the model shape")
    parser.add_argument("--output_dir", required=True, help="where ckpt_<step>.pt files are written")
    # Model / data shape.
    parser.add_argument("--init_checkpoint", default=None, help="checkpoint to start from")
    parser.add_argument("--max_seq_length", type=int, default=512)
    parser.add_argument("--max_predictions_per_seq", type=int, default=80)
    parser.add_argument("--vocab_file", default=None,
                        help="vocab.txt copied into the HF export (default: the one beside the shards)")
    # Optimisation.
    parser.add_argument("--train_batch_size", type=int, default=32,
                        help="sequences per optimizer step on this rank (micro-batch x accumulation)")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--max_steps", type=float, default=1000)
    parser.add_argument("--warmup_proportion", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--allreduce_post_accumulation", action="store_true",
                        help="no DDP: one flat all-reduce of the gradients after accumulation")
    parser.add_argument("--allreduce_post_accumulation_fp16", action="store_true",
                        help="do that all-reduce in 16 bits to halve the traffic: in bf16, not fp16 as the "
                             "reference's name says (bf16 keeps fp32's range); no effect without "
                             "--allreduce_post_accumulation")
    parser.add_argument("--use_fused_lamb", action="store_true", help="Habana FusedLamb on HPU (ignored elsewhere)")
    # Phases, resume, checkpoints.
    parser.add_argument("--phase2", action="store_true")
    parser.add_argument("--phase1_end_step", type=int, default=7038)
    parser.add_argument("--resume_from_checkpoint", action="store_true")
    parser.add_argument("--resume_step", type=int, default=-1)
    parser.add_argument("--num_steps_per_checkpoint", type=int, default=100)
    parser.add_argument("--skip_checkpoint", action="store_true")
    parser.add_argument("--steps_this_run", type=int, default=-1, help="stop after this many steps (-1: max_steps)")
    parser.add_argument("--keep_checkpoints", type=int, default=3, help="how many ckpt_<step>.pt to keep")
    parser.add_argument("--hf_export_dir", default=None,
                        help="HF-format export of each finished phase goes to <this>/phase<N> "
                             "(default: <output_dir>/../hf_export)")
    parser.add_argument("--nonfinite_loss", choices=("stop", "skip"), default="stop",
                        help="a NaN/inf loss stops the run (default) or skips that step, counting skips")
    # Logging.
    parser.add_argument("--log_freq", type=float, default=1.0)
    parser.add_argument("--json-summary", dest="json_summary", default="results/dllogger.json")
    parser.add_argument("--disable_progress_bar", action="store_true")
    parser.add_argument("--do_train", action="store_true", help="accepted for compatibility; training always runs")
    # Device, mode, precision.
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--mode", choices=MODE_CHOICES, default="eager")
    parser.add_argument("--data_type", choices=PRECISION_CHOICES, default="fp32")
    parser.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", -1)),
                        help="set by the launcher; read from the environment otherwise")
    parser.add_argument("--dist_timeout", type=float, default=1800.0, help="seconds a collective may wait")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for bad input")
    parser.add_argument("--log_param_checksum", action="store_true",
                        default=os.environ.get("BERT_LOG_PARAM_CHECKSUM") == "1",
                        help="debug: each rank appends '<step> <SHA-256 of its parameters> <shard read>' per "
                             "step to <output_dir>/param_checksums.rank<r>.txt (also: BERT_LOG_PARAM_CHECKSUM=1, "
                             "which reaches every rank through the launcher)")
    return parser


def _run(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    from pretraining.training import run  # heavy imports only once the arguments are valid

    return run(args)


def main(argv: Optional[List[str]] = None) -> int:
    return run_main(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
