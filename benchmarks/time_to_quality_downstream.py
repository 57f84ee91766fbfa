"""Downstream scores for benchmarks.time_to_quality: MRPC and a SQuAD split, through this project's own
fine-tuning scripts (``python -m finetuning.run_glue`` / ``finetuning.run_squad``), one child process
per (model, task, seed), all with the same recipe and thread count.

SQuAD v1.1's train file is not available here, so the split is made from the dev set by article: the
last ``eval_articles`` articles are the evaluation set, articles before them the training set (no
article, hence no paragraph, in both). The two files are written into the run folder.
"""
from __future__ import annotations

import json
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from benchmarks.time_to_quality_runs import child_env, run_logged

MODEL_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class FinetuneRecipe:
    learning_rate: float
    batch_size: int
    epochs: float
    warmup_proportion: float
    max_seq_length: int
    max_steps: int = -1             # smoke runs only
    max_train_samples: int = 0      # MRPC smoke runs only
    max_eval_samples: int = 0

    def describe(self) -> str:
        text = (f"AdamW lr {self.learning_rate:g}, batch {self.batch_size}, {self.epochs:g} epochs, "
                f"warm-up {self.warmup_proportion:g}, max_seq_length {self.max_seq_length}")
        return text + (f", max_steps {self.max_steps}" if self.max_steps > 0 else "")


@dataclass
class SquadSplit:
    train_file: Path
    eval_file: Path
    train_articles: int
    train_questions: int
    eval_articles: int
    eval_questions: int


def write_squad_split(dev_file: Path, out_dir: Path, eval_articles: int, train_articles: int = 0,
                      max_paragraphs: int = 0) -> SquadSplit:
    """``out_dir/{train,eval}.json`` in SQuAD v1.1 format: the last ``eval_articles`` articles for
    evaluation, the ``train_articles`` before them (0: all) for training; optionally only the first
    ``max_paragraphs`` paragraphs of each article (smoke runs)."""
    data = json.loads(dev_file.read_text(encoding="utf-8"))["data"]
    if not 0 < eval_articles < len(data):
        raise ValueError(f"eval_articles {eval_articles}: must be 1..{len(data) - 1}")
    evaluation, training = data[len(data) - eval_articles:], data[:len(data) - eval_articles]
    if train_articles:
        training = training[:train_articles]
    if max_paragraphs:
        evaluation = [dict(a, paragraphs=a["paragraphs"][:max_paragraphs]) for a in evaluation]
        training = [dict(a, paragraphs=a["paragraphs"][:max_paragraphs]) for a in training]
    out_dir.mkdir(parents=True, exist_ok=True)

    def write(name: str, articles: List[dict]) -> Tuple[Path, int]:
        path = out_dir / name
        path.write_text(json.dumps({"version": "1.1", "data": articles}), encoding="utf-8")
        return path, sum(len(p["qas"]) for a in articles for p in a["paragraphs"])

    train_file, train_questions = write("train.json", training)
    eval_file, eval_questions = write("eval.json", evaluation)
    return SquadSplit(train_file, eval_file, len(training), train_questions, len(evaluation), eval_questions)


def common_argv(model: str, vocab_file: Path, out_dir: Path, recipe: FinetuneRecipe, seed: int) -> List[str]:
    argv = ["--model_name_or_path", model, "--output_dir", str(out_dir), "--overwrite_output_dir", "--do_train",
            "--do_eval", "--device", "cpu", "--data_type", "fp32", "--mode", "eager",
            "--per_device_train_batch_size", str(recipe.batch_size), "--per_device_eval_batch_size", "64",
            "--learning_rate", str(recipe.learning_rate), "--num_train_epochs", str(recipe.epochs),
            "--warmup_proportion", str(recipe.warmup_proportion), "--max_seq_length", str(recipe.max_seq_length),
            "--max_steps", str(recipe.max_steps), "--seed", str(seed), "--logging_steps", "50",
            "--disable_progress_bar"]
    if model == "mini":  # random initialisation: the tokenizer comes from the vocab file
        argv += ["--vocab_file", str(vocab_file)]
    return argv


def finetune(task: str, model: str, vocab_file: Path, out_dir: Path, recipe: FinetuneRecipe, seed: int,
             threads: int, logs: Path, mrpc_dir: Path, squad: SquadSplit) -> Dict[str, float]:
    """One fine-tuning run; returns its eval_results.json (the fine-tuned weights are deleted after)."""
    argv = common_argv(model, vocab_file, out_dir, recipe, seed)
    if task == "mrpc":
        argv = [sys.executable, "-m", "finetuning.run_glue", "--task_name", "mrpc", "--data_dir", str(mrpc_dir)] + argv
        if recipe.max_train_samples:
            argv += ["--max_train_samples", str(recipe.max_train_samples)]
        if recipe.max_eval_samples:
            argv += ["--max_eval_samples", str(recipe.max_eval_samples)]
    else:
        argv = [sys.executable, "-m", "finetuning.run_squad", "--data_dir", str(squad.train_file.parent),
                "--train_file", squad.train_file.name, "--predict_file", squad.eval_file.name,
                "--doc_stride", str(recipe.max_seq_length // 2)] + argv
    run_logged(argv, child_env(threads), logs / f"{out_dir.parent.name}_{out_dir.name}.log")
    results = json.loads((out_dir / "eval_results.json").read_text(encoding="utf-8"))
    for name in MODEL_FILES:  # 20 runs x 45 MB of fine-tuned weights are not worth keeping
        (out_dir / name).unlink(missing_ok=True)
    return results


@dataclass
class Score:
    """One metric of one (task, model) over seeds."""
    values: List[float]

    @property
    def mean(self) -> float:
        return statistics.mean(self.values)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


TASK_METRICS = {"mrpc": ("accuracy", "f1"), "squad": ("exact_match", "f1")}


def run_downstream(tasks: Sequence[str], models: Dict[str, str], recipes: Dict[str, FinetuneRecipe],
                   seeds: Sequence[int], vocab_file: Path, run_dir: Path, threads: int, mrpc_dir: Path,
                   squad: SquadSplit, report) -> Dict[str, Dict[str, Dict[str, Score]]]:
    """scores[task][model][metric]; ``report(line)`` is called with one line per finished run."""
    scores: Dict[str, Dict[str, Dict[str, Score]]] = {}
    for task in tasks:
        for name, model in models.items():
            per_metric = {metric: Score([]) for metric in TASK_METRICS[task]}
            for seed in seeds:
                out_dir = run_dir / "finetuning" / f"{task}_{name}" / f"seed{seed}"
                if out_dir.exists():
                    shutil.rmtree(out_dir)
                results = finetune(task, model, vocab_file, out_dir, recipes[task], seed, threads,
                                   run_dir / "logs", mrpc_dir, squad)
                for metric in per_metric:
                    per_metric[metric].values.append(float(results[metric]))
                report(f"ttq: run {task} {name} seed {seed}: "
                       + " ".join(f"{m} {results[m]:.4f}" for m in per_metric))
            scores.setdefault(task, {})[name] = per_metric
    return scores
