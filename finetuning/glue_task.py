"""GLUE fine-tuning (MRPC first) on the shared loop: read TSVs, train, evaluate, predict.

``run(args)`` is what ``python -m finetuning.run_glue`` calls. In ``--output_dir`` it writes:

    eval_results.json        --do_eval: dev metrics (MRPC: accuracy, f1, acc_and_f1; fractions 0..1),
                             eval_loss, num_examples, global_step
    test_results_<task>.tsv  --do_predict: GLUE submission format, header ``index<TAB>prediction``, one
                             row per test pair in test.tsv order (GLUE's site wants it renamed <TASK>.tsv)
    config.json, model.safetensors, tokenizer files   --do_train: the fine-tuned model (HF format)
    dllogger.json            training loss/learning rate/throughput and every --eval_steps evaluation

Bad input (missing TSV, a row with the wrong number of columns, a label outside the task's set, an
unusable model or device) raises a ``BadInputError`` before anything is written: one ``error:`` line on
stderr and exit status 2 through ``central.errors.run_main`` (--debug shows the traceback). SIGTERM/SIGINT during training: the step finishes, the model is
saved, evaluation is skipped and the exit status is 128 + the signal number.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from central.checkpoint import atomic_write_text
from central.dllog import console
from central.runtime import Runtime, runtime_session, seed_everything
from finetuning.args import check_common_args
from finetuning.batches import PaddingCollator
from finetuning.config import FinetuneConfig
from finetuning.glue_data import (GlueDataError, GlueProcessor, InputExample, LengthGroupedBatchSampler,
                                  processor_for, tokenize_examples)
from finetuning.glue_metrics import task_metrics
from finetuning.inference import predict
from finetuning.model_loading import ModelLoadError, load_model
from finetuning.saving import save_model
from finetuning.train_log import open_logger
from finetuning.train_loop import train


def predictions_file(output_dir, task_name: str) -> Path:
    return Path(output_dir) / f"test_results_{processor_for(task_name).name}.tsv"


def _check_arguments(args, processor: GlueProcessor) -> None:
    if not (args.do_train or args.do_eval or args.do_predict):
        raise GlueDataError("nothing to do: pass --do_train, --do_eval and/or --do_predict")
    if args.max_seq_length < 8:
        raise GlueDataError(f"--max_seq_length {args.max_seq_length}: too short for [CLS] a [SEP] b [SEP]")
    check_common_args(args, GlueDataError)


def _read(processor: GlueProcessor, data_dir: str, split: str, limit: Optional[int]) -> List[InputExample]:
    examples = processor.examples(data_dir, split)
    return examples[:limit] if limit else examples


def run(args) -> int:
    """0 done; 128 + N when signal N stopped training (the model is saved, evaluation skipped)."""
    processor = processor_for(args.task_name)
    _check_arguments(args, processor)
    # Read every file first: a malformed TSV fails in a second, before any model is loaded or trained.
    train_examples = _read(processor, args.data_dir, "train", args.max_train_samples) if args.do_train else []
    dev_examples = _read(processor, args.data_dir, "dev", args.max_eval_samples) if args.do_eval else []
    test_examples = _read(processor, args.data_dir, "test", args.max_predict_samples) if args.do_predict else []
    cfg = FinetuneConfig.from_args(args)
    with runtime_session(cfg.device, cfg.mode, cfg.data_type, cfg.dist_timeout) as runtime:
        seed_everything(cfg.seed)  # the new classifier head starts from the same weights for a given seed
        model, tokenizer, source = _load(args, processor)
        output_dir = Path(args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        with open_logger(output_dir, runtime) as logger:
            logger.parameters({"task": processor.name, "model": source, "train_examples": len(train_examples),
                               "dev_examples": len(dev_examples), "test_examples": len(test_examples),
                               "max_seq_length": args.max_seq_length, "seed": args.seed})
            console(f"{processor.name}: {source}; {len(train_examples)} train / {len(dev_examples)} dev / "
                    f"{len(test_examples)} test pairs", runtime.is_main)
            # Pad each batch to its longest pair (rounded up to a multiple of 8 for GPU tiles; CPU kernels gain
            # nothing from it); HPU graphs want one shape, so there every batch is padded to --max_seq_length.
            collate = PaddingCollator(pad_token_id=tokenizer.pad_token_id, multiple_of=1 if runtime.kind == "cpu" else 8,
                                      fixed_length=args.max_seq_length if runtime.kind == "hpu" else None)
            dev_features = tokenize_examples(dev_examples, tokenizer, processor, args.max_seq_length)
            global_step = None
            if args.do_train:
                result = _fine_tune(model, tokenizer, train_examples, dev_features, processor, args, cfg, runtime,
                                    logger, collate)
                global_step = result.global_step
                save_model(model, tokenizer, output_dir, runtime)
                if result.stopped_by_signal:  # saved; skip evaluation and report the interruption like a shell
                    return 128 + result.stopped_by_signal
            if args.do_eval and runtime.is_main:
                _write_eval_results(model, dev_features, processor, args, runtime, collate, logger, global_step)
            if args.do_predict and runtime.is_main:
                _write_test_predictions(model, tokenizer, test_examples, processor, args, runtime, collate)
    return 0


def _load(args, processor: GlueProcessor):
    """(model, tokenizer, where the model came from), checked against --max_seq_length and the vocab."""
    from transformers import BertForSequenceClassification

    loaded = load_model(args.model_name_or_path, BertForSequenceClassification, vocab_file=args.vocab_file,
                        do_lower_case=args.do_lower_case, cache_dir=args.cache_dir,
                        num_labels=processor.num_labels)
    model, tokenizer = loaded.model, loaded.tokenizer
    if args.max_seq_length > model.config.max_position_embeddings:
        raise GlueDataError(f"--max_seq_length {args.max_seq_length} exceeds the model's "
                            f"{model.config.max_position_embeddings} positions")
    if len(tokenizer) > model.config.vocab_size:
        raise ModelLoadError(f"the tokenizer has {len(tokenizer)} tokens but the model only "
                             f"{model.config.vocab_size} embeddings (wrong --vocab_file?)")
    return model, tokenizer, loaded.source


def _fine_tune(model, tokenizer, examples: List[InputExample], dev_features, processor: GlueProcessor, args,
               cfg: FinetuneConfig, runtime: Runtime, logger, collate):
    def evaluate_during_training(trained_model, step: int) -> Dict[str, float]:
        if not runtime.is_main:
            return {}
        metrics = evaluate(trained_model, dev_features, processor, runtime, args.per_device_eval_batch_size, collate)
        console(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return _prefixed(metrics)

    features = tokenize_examples(examples, tokenizer, processor, args.max_seq_length)
    batch_sampler = None
    if args.group_by_length and not runtime.dist.distributed:
        batch_sampler = LengthGroupedBatchSampler([len(f["input_ids"]) for f in features],
                                                  args.per_device_train_batch_size, args.seed)
    return train(model, features, cfg, runtime, logger, collate=collate,
                 eval_callback=evaluate_during_training if args.do_eval and args.eval_steps else None,
                 batch_sampler=batch_sampler)


def _write_eval_results(model, features, processor: GlueProcessor, args, runtime: Runtime, collate, logger,
                        global_step: Optional[int]) -> None:
    metrics = evaluate(model, features, processor, runtime, args.per_device_eval_batch_size, collate)
    results = {"task": processor.name, **metrics, "num_examples": len(features), "global_step": global_step}
    atomic_write_text(Path(args.output_dir) / "eval_results.json", json.dumps(results, indent=2) + "\n")
    logger.log([], _prefixed(metrics))
    console(f"{processor.name} dev: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


def _write_test_predictions(model, tokenizer, examples: List[InputExample], processor: GlueProcessor, args,
                            runtime: Runtime, collate) -> None:
    features = tokenize_examples(examples, tokenizer, processor, args.max_seq_length)
    logits = _logits_in_order(model, features, runtime, args.per_device_eval_batch_size, collate)[0]
    path = predictions_file(args.output_dir, processor.name)
    atomic_write_text(path, _submission_text(examples, logits, processor))
    console(f"{processor.name} test predictions: {path} ({len(examples)} rows)")


# ---------------------------------------------------------------------------------------------- evaluation
def _logits_in_order(model, features: Sequence[dict], runtime, batch_size: int, collate):
    """Logits [N, num_labels] in ``features`` order and the mean loss (None without labels).

    Batches are formed from length-sorted features so each pads to similar lengths; results are put
    back in the original order.
    """
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    ordered = [features[i] for i in order]
    logits: Optional[torch.Tensor] = None
    loss_sum, has_loss = 0.0, False
    for span, outputs in predict(model, ordered, runtime, batch_size, collate):
        if logits is None:
            logits = torch.empty(len(features), outputs["logits"].shape[-1])
        logits[[order[i] for i in span]] = outputs["logits"]
        if "loss" in outputs:
            loss_sum, has_loss = loss_sum + float(outputs["loss"]) * len(span), True
    return logits, (loss_sum / len(features) if has_loss else None)


def evaluate(model, features: Sequence[dict], processor: GlueProcessor, runtime, batch_size: int,
             collate) -> Dict[str, float]:
    """Task metrics on labelled features (MRPC: accuracy, f1, acc_and_f1) plus eval_loss."""
    logits, loss = _logits_in_order(model, features, runtime, batch_size, collate)
    labels = [f["labels"] for f in features]
    preds = logits[:, 0].tolist() if processor.is_regression else logits.argmax(-1).tolist()
    return {**task_metrics(processor.metric, preds, labels), "eval_loss": loss}


def _prefixed(metrics: Dict[str, float]) -> Dict[str, float]:
    """Names for the training log: accuracy -> eval_accuracy (eval_loss stays as it is)."""
    return {(k if k.startswith("eval_") else f"eval_{k}"): v for k, v in metrics.items()}


def _submission_text(examples: Sequence[InputExample], logits: torch.Tensor, processor: GlueProcessor) -> str:
    lines = ["index\tprediction"]
    for example, row in zip(examples, logits):
        prediction = f"{float(row[0]):.3f}" if processor.is_regression else processor.labels[int(row.argmax())]
        lines.append(f"{example.index}\t{prediction}")
    return "\n".join(lines) + "\n"
