"""SQuAD v1.1 end to end: read -> features -> fine-tune (the shared loop) -> predict -> score -> files.

``run(args)`` is called by ``finetuning/run_squad.py`` with its parsed arguments and returns the exit
status: 0 on success, 2 for bad input (one ``error:`` line on stderr; ``--debug`` shows the traceback).
Everything is checked before the model loads and before anything is written.

Writes into ``--output_dir`` (rank 0 only): the fine-tuned model and tokenizer (HF format),
``dllogger.json``, and with ``--do_eval`` ``predictions.json`` ({question id: answer text}, every
question), ``nbest_predictions.json`` and ``eval_results.json`` (``exact_match``, ``f1`` in percent).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from central.device import DeviceUnavailableError
from central.dllog import console
from central.errors import BadInputError
from finetuning import loop
from finetuning.args import check_common_args
from finetuning.model_loading import ModelLoadError, load_model
from finetuning.squad_data import SquadDataError, SquadExample, gold_answers, read_squad, resolve_data_file
from finetuning.squad_features import SquadFeatureError, SquadFeatures, build_features, check_lengths
from finetuning.squad_metrics import evaluate
from finetuning.squad_postprocess import best_answers, write_json


class SquadArgumentError(BadInputError):
    """A command-line setting that cannot work (one line for the user)."""


BAD_INPUT = (SquadArgumentError, SquadDataError, SquadFeatureError, ModelLoadError, DeviceUnavailableError)


def run(args) -> int:
    try:
        return _run(args)
    except BAD_INPUT as err:
        if getattr(args, "debug", False):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


def check_arguments(args) -> None:
    if not (args.do_train or args.do_eval):
        raise SquadArgumentError("nothing to do: pass --do_train and/or --do_eval")
    check_lengths(args.max_seq_length, args.doc_stride, args.max_query_length)
    check_common_args(args, SquadArgumentError, positive=("n_best_size", "max_answer_length"))


def read_inputs(args) -> Tuple[Optional[List[SquadExample]], Optional[List[SquadExample]]]:
    train = predict = None
    if args.do_train:
        train = read_squad(resolve_data_file(args.train_file, args.data_dir, "--train_file"))
    if args.do_eval:
        predict = read_squad(resolve_data_file(args.predict_file, args.data_dir, "--predict_file"))
    return train, predict


def _run(args) -> int:
    check_arguments(args)
    train_examples, predict_examples = read_inputs(args)
    runtime = loop.init_runtime(args)
    loop.set_seed(args.seed)  # the task head's random initialisation is part of the run's seed
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
    logger = loop.open_logger(args.output_dir, runtime)
    logger.parameters({"task": "squad", "model": loaded.source, "max_seq_length": args.max_seq_length,
                       "doc_stride": args.doc_stride, "max_query_length": args.max_query_length,
                       "learning_rate": args.learning_rate, "seed": args.seed})
    # HPU graphs want one shape; elsewhere pad each batch only to its longest feature (x8).
    fixed = args.max_seq_length if runtime.kind == "hpu" else None

    if args.do_train:
        features = build_features(train_examples, tokenizer, args.max_seq_length, args.doc_stride,
                                  args.max_query_length, training=True)
        if not len(features):
            raise SquadDataError(f"--train_file {args.train_file}: no answer maps onto any token")
        console(f"training: {len(train_examples)} questions -> {len(features)} features"
                + (f" ({features.skipped} questions without a usable answer span skipped)" if features.skipped else ""),
                runtime.is_main)
        collate = loop.PaddingCollator(tokenizer.pad_token_id, fixed_length=fixed)
        result = loop.train(model, features.inputs, args, runtime, logger, collate=collate,
                            save_callback=lambda m, directory: loop.save_model(m, tokenizer, directory, _solo(runtime)))
        loop.save_model(model, tokenizer, args.output_dir, runtime)
        if result.stopped_by_signal:  # saved; skip evaluation and report the interruption like a shell
            logger.close()
            loop.finish(runtime)
            return 128 + result.stopped_by_signal

    if args.do_eval and runtime.is_main:
        scores = predict_and_score(model, tokenizer, predict_examples, args, runtime, fixed, logger)
        console(f"exact_match {scores['exact_match']:.2f}  f1 {scores['f1']:.2f}", runtime.is_main)
    logger.close()
    loop.finish(runtime)
    return 0


def _solo(runtime: loop.Runtime) -> loop.Runtime:
    """The runtime as seen by rank 0 alone (no barrier inside a rank-0-only callback)."""
    from central.distributed import DistEnv

    return loop.Runtime(runtime.kind, runtime.mode, runtime.precision, runtime.device, DistEnv())


def predict_logits(model, features: SquadFeatures, args, runtime: loop.Runtime, fixed: Optional[int],
                   pad_token_id: int = 0) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Start and end logits per feature ([L] each, unpadded), batching features of similar length."""
    order = sorted(range(len(features)), key=lambda i: len(features.inputs[i]["input_ids"]))
    starts: List[Optional[np.ndarray]] = [None] * len(features)
    ends: List[Optional[np.ndarray]] = [None] * len(features)
    collate = loop.PaddingCollator(pad_token_id, fixed_length=fixed)
    batches = loop.predict(model, [features.inputs[i] for i in order], runtime, args.per_device_eval_batch_size, collate)
    for positions, outputs in batches:
        start_logits, end_logits = outputs["start_logits"].numpy(), outputs["end_logits"].numpy()  # [B, L_pad]
        for row, position in enumerate(positions):
            index = order[position]
            length = len(features.inputs[index]["input_ids"])
            starts[index], ends[index] = start_logits[row, :length], end_logits[row, :length]
    return starts, ends


def predict_and_score(model, tokenizer, examples: List[SquadExample], args, runtime: loop.Runtime,
                      fixed: Optional[int], logger) -> dict:
    features = build_features(examples, tokenizer, args.max_seq_length, args.doc_stride, args.max_query_length)
    start = time.perf_counter()
    start_logits, end_logits = predict_logits(model, features, args, runtime, fixed, tokenizer.pad_token_id)
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
