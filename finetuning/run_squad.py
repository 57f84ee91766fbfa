"""Fine-tune and evaluate BERT on SQuAD v1.1 (extractive question answering).

    python -m finetuning.run_squad --model_name_or_path bert-base-uncased --data_dir Squad \
        --output_dir out/squad --do_train --do_eval

Writes predictions.json, nbest_predictions.json and eval_results.json (exact_match, f1) into
--output_dir. This parser is the one source of truth for the script's flags.
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
    parser = argparse.ArgumentParser(prog="python -m finetuning.run_squad",
                                     description="Fine-tune BERT on SQuAD v1.1 and score it.")
    add_common_args(parser, "squad")
    parser.add_argument("--train_file", default="train-v1.1.json",
                        help="SQuAD training file: a name inside --data_dir, or a path")
    parser.add_argument("--predict_file", default="dev-v1.1.json",
                        help="SQuAD dev file: a name inside --data_dir, or a path")
    parser.add_argument("--doc_stride", type=whole_number, default=128,
                        help="tokens between the starts of two windows over a long document")
    parser.add_argument("--max_query_length", type=whole_number, default=64)
    parser.add_argument("--n_best_size", type=whole_number, default=20)
    parser.add_argument("--max_answer_length", type=whole_number, default=30)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    export_mode_environment(args.device, args.mode)  # before torch: it may load the Habana bridge
    from finetuning.squad_task import run  # heavy imports only once the arguments are valid

    return run_main(lambda _: run(args), argv, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
