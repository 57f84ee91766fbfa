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

from central.errors import run_main
from finetuning.args import add_common_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m finetuning.run_squad",
                                     description="Fine-tune BERT on SQuAD v1.1 and score it.")
    add_common_args(parser)
    parser.set_defaults(max_seq_length=384, learning_rate=3e-5, num_train_epochs=2.0)
    parser.add_argument("--train_file", default="train-v1.1.json", help="name inside --data_dir, or a path")
    parser.add_argument("--predict_file", default="dev-v1.1.json", help="name inside --data_dir, or a path")
    parser.add_argument("--doc_stride", type=int, default=128)
    parser.add_argument("--max_query_length", type=int, default=64)
    parser.add_argument("--n_best_size", type=int, default=20)
    parser.add_argument("--max_answer_length", type=int, default=30)
    return parser


def _run(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    from finetuning.squad_task import run  # heavy imports only once the arguments are valid

    return run(args)


def main(argv: Optional[List[str]] = None) -> int:
    return run_main(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
