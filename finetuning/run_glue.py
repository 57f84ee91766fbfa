"""Fine-tune and evaluate BERT on a GLUE task (MRPC first; sentence-pair and single-sentence tasks).

    python -m finetuning.run_glue --task_name mrpc --model_name_or_path bert-base-uncased \
        --data_dir glue_data/MRPC --output_dir out/mrpc --do_train --do_eval

Writes eval_results.json (accuracy, f1, acc_and_f1 for MRPC) and, with --do_predict, the test-set
predictions in GLUE submission format. This parser is the one source of truth for its flags.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from central.cli_options import whole_number
from central.errors import run_main
from central.mode_environment import export_mode_environment
from finetuning.args import add_common_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m finetuning.run_glue",
                                     description="Fine-tune BERT on a GLUE task and score it.")
    add_common_args(parser, "glue")
    parser.add_argument("--task_name", required=True, type=str.lower, help="GLUE task (mrpc, ...)")
    parser.add_argument("--do_predict", action="store_true", help="write test-set predictions (GLUE format)")
    parser.add_argument("--eval_steps", type=whole_number, default=0,
                        help="with --do_eval, also evaluate on dev every N steps during training (0: only at the end)")
    parser.add_argument("--group_by_length", action="store_true",
                        help="form training batches of similar length (less padding; single process only)")
    parser.add_argument("--max_train_samples", type=whole_number, default=None,
                        help="use only the first N training rows")
    parser.add_argument("--max_eval_samples", type=whole_number, default=None,
                        help="use only the first N dev rows")
    parser.add_argument("--max_predict_samples", type=whole_number, default=None,
                        help="use only the first N test rows")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    export_mode_environment(args.device, args.mode)  # before torch: it may load the Habana bridge
    from finetuning.glue_task import run  # heavy imports only once the arguments are valid

    return run_main(lambda _: run(args), argv, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
