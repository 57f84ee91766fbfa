"""SQuAD v1.1 end to end: read -> features -> fine-tune (the shared loop) -> predict -> score -> files.

``run(args)`` is called by ``finetuning/run_squad.py`` with its parsed arguments. Everything is
checked before the model loads and before anything is written; bad input raises a ``BadInputError``
(exit status 2 and one ``error:`` line through ``central.errors.run_main``).

Writes into ``--output_dir`` (rank 0 only): the fine-tuned model and tokenizer (HF format),
``dllogger.json``, and with ``--do_eval`` ``predictions.json`` ({question id: answer text}, every
question), ``nbest_predictions.json`` and ``eval_results.json`` (``exact_match``, ``f1`` in percent).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from central.dllog import console
from central.errors import BadInputError
from central.runtime import Runtime, runtime_session, seed_everything
from finetuning.args import check_common_args
from finetuning.batches import PaddingCollator
from finetuning.config import FinetuneConfig
from finetuning.inference import predict
from finetuning.model_loading import load_model
from finetuning.saving import save_model
from finetuning.squad_data import SquadDataError, SquadExample, gold_answers, read_squad, resolve_data_file
from finetuning.squad_features import SquadFeatures, build_features, check_lengths
from finetuning.squad_metrics import evaluate
from finetuning.squad_postprocess import best_answers, write_json
from finetuning.train_log import TrainResult, open_logger
from finetuning.train_loop import train


class SquadArgumentError(BadInputError):
    """A command-line setting that cannot work (one line for the user)."""


def check_arguments(args) -> None:
    if not (args.do_train or args.do_eval):
        raise SquadArgumentError("nothing to do: pass --do_train and/or --do_eval")
    check_lengths(args.max_seq_length, args.doc_stride, args.max_query_length)
    check_common_args(args, SquadArgumentError, positive=("n_best_size", "max_answer_length"))


def read_inputs(args) -> Tuple[Optional[List[SquadExample]], Optional[List[SquadExample]]]:
    train_examples = predict_examples = None
    if args.do_train:
        train_examples = read_squad(resolve_data_file(args.train_file, args.data_dir, "--train_file"))
    if args.do_eval:
        predict_examples = read_squad(resolve_data_file(args.predict_file, args.data_dir, "--predict_file"))
    return train_examples, predict_examples


def run(args) -> int:
    """0 done; 128 + N when signal N stopped training (the model is saved, evaluation skipped)."""
    check_arguments(args)
    train_examples, predict_examples = read_inputs(args)
    cfg = FinetuneConfig.from_args(args)
    with runtime_session(cfg.device, cfg.mode, cfg.data_type, cfg.dist_timeout) as runtime:
        seed_everything(cfg.seed)  # the task head's random initialisation is part of the run's seed
        from transformers import BertForQuestionAnswering

        loaded = load_model(args.model_name_or_path, BertForQuestionAnswering, vocab_file=args.vocab_file,
                            do_lower_case=args.do_lower_case, cache_dir=args.cache_dir)
        model, tokenizer = loaded.model, loaded.tokenizer
        limit = model.config.max_position_embeddings
        if args.max_seq_length > limit:
            raise SquadArgumentError(f"--max_seq_length {args.max_seq_length} exceeds the model's "
                                     f"max_position_embeddings ({limit})")
        console(f"model: {loaded.source}", runtime.is_main)
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        with open_logger(args.output_dir, runtime) as logger:
            logger.parameters({"task": "squad", "model": loaded.source, "max_seq_length": args.max_seq_length,
                               "doc_stride": args.doc_stride, "max_query_length": args.max_query_length,
                               "learning_rate": args.learning_rate, "seed": args.seed})
            # HPU graphs want one shape; elsewhere pad each batch only to its longest feature (x8).
            fixed = args.max_seq_length if runtime.kind == "hpu" else None
            if args.do_train:
                result = fine_tune(model, tokenizer, train_examples, args, cfg, runtime, logger, fixed)
                save_model(model, tokenizer, args.output_dir, runtime)
                if result.stopped_by_signal:  # saved; skip evaluation and report the interruption like a shell
                    return 128 + result.stopped_by_signal
            if args.do_eval and runtime.is_main:
                scores = predict_and_score(model, tokenizer, predict_examples, args, runtime, fixed, logger)
                console(f"exact_match {scores['exact_match']:.2f}  f1 {scores['f1']:.2f}", runtime.is_main)
    return 0


def fine_tune(model, tokenizer, examples: List[SquadExample], args, cfg: FinetuneConfig, runtime: Runtime, logger,
              fixed: Optional[int]) -> TrainResult:
    features = build_features(examples, tokenizer, args.max_seq_length, args.doc_stride, args.max_query_length,
                              training=True)
    if not len(features):
        raise SquadDataError(f"--train_file {args.train_file}: no answer maps onto any token")
    console(f"training: {len(examples)} questions -> {len(features)} features"
            + (f" ({features.skipped} questions without a usable answer span skipped)" if features.skipped else ""),
            runtime.is_main)
    collate = PaddingCollator(tokenizer.pad_token_id, fixed_length=fixed)
    # checkpoint-<step> folders carry the tokenizer too; written by rank 0 alone (no barrier inside)
    return train(model, features.inputs, cfg, runtime, logger, collate=collate,
                 save_callback=lambda m, directory: save_model(m, tokenizer, directory, runtime.alone()))


def predict_logits(model, features: SquadFeatures, batch_size: int, runtime: Runtime, fixed: Optional[int],
                   pad_token_id: int = 0) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Start and end logits per feature ([L] each, unpadded), batching features of similar length."""
    order = sorted(range(len(features)), key=lambda i: len(features.inputs[i]["input_ids"]))
    starts: List[Optional[np.ndarray]] = [None] * len(features)
    ends: List[Optional[np.ndarray]] = [None] * len(features)
    collate = PaddingCollator(pad_token_id, fixed_length=fixed)
    batches = predict(model, [features.inputs[i] for i in order], runtime, batch_size, collate)
    for positions, outputs in batches:
        start_logits, end_logits = outputs["start_logits"].numpy(), outputs["end_logits"].numpy()  # [B, L_pad]
        for row, position in enumerate(positions):
            index = order[position]
            length = len(features.inputs[index]["input_ids"])
            starts[index], ends[index] = start_logits[row, :length], end_logits[row, :length]
    return starts, ends


def predict_and_score(model, tokenizer, examples: List[SquadExample], args, runtime: Runtime,
                      fixed: Optional[int], logger) -> dict:
    features = build_features(examples, tokenizer, args.max_seq_length, args.doc_stride, args.max_query_length)
    start = time.perf_counter()
    start_logits, end_logits = predict_logits(model, features, args.per_device_eval_batch_size, runtime, fixed,
                                              tokenizer.pad_token_id)
    inference_time = time.perf_counter() - start
    predictions, nbest = best_answers(examples, features, start_logits, end_logits, args.n_best_size,
                                      args.max_answer_length)
    scores = evaluate(gold_answers(examples), predictions)
    output = Path(args.output_dir)
    write_json(output / "predictions.json", predictions)
    write_json(output / "nbest_predictions.json", nbest)
    write_json(output / "eval_results.json", dict(scores, num_questions=len(examples), num_features=len(features)))
    logger.log([], dict(scores, e2e_inference_time=inference_time,
                        inference_sequences_per_second=len(features) / max(inference_time, 1e-9)))
    return scores
