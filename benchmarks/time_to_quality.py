"""Time to quality on real text: this toolkit's pre-training against the Hugging Face route, same budget.

    python -m benchmarks.time_to_quality                          # the comparison (20 minutes per side)
    python -m benchmarks.time_to_quality --quick -o /tmp/ttq      # smoke run of the whole pipeline

One invocation, one step after the other, every child with the same thread count (``--threads``):
  1. text      corpus/ (one article per line) from ../shared/data: wikipedia_sample, WikiText-2 valid and
               the WikiText-103 train excerpt, minus the articles that overlap the held-out text
               (wikitext-2-raw/wiki.test.raw, by title or shared word 8-grams); the held-out text cut
               into 128-token rows masked once from a fixed seed (benchmarks.time_to_quality_text)
  2. prepare   ours: python -m data.prepare (text_formatting, sharding, create_hdf5_files) with BERT's
               uncased vocab; HF route: tokenize, concatenate, chunk to 128 (run_mlm.py's group_texts)
  3. probe     a few steps of each side (not counted) -> max_steps so each schedule ends at the deadline
  4. runs      ours: demo_bert.py pretraining --model_name_or_path mini --device cpu --phase 1 (LAMB);
               HF route: BertForMaskedLM (mini), DataCollatorForLanguageModeling, Trainer (AdamW);
               --minutes of wall time each, a checkpoint every --checkpoint_minutes
               (benchmarks.time_to_quality_runs, benchmarks.time_to_quality_hf_route)
  5. evaluate  every checkpoint of both, after the runs: held-out masked-token accuracy and loss, the
               same code and the same masked positions for both (benchmarks.time_to_quality_eval)
  6. downstream  ours, the HF route's and a randomly initialised mini fine-tuned on MRPC and on a SQuAD
               split of the dev set (--seeds), through finetuning.run_glue / run_squad
  7. result    ``ttq: result ...`` lines (one fact each), results.json and time_to_quality.png in the run folder

Clock: each side's time runs from the launch of its training process (start-up included) to the moment a
checkpoint file is complete; data preparation is timed apart and reported both ways.

Recipes (defaults; every value is a flag). Ours: --optimizer adamw, lr 1e-3, batch 32 (packs), warm-up
0.06 then poly decay, weight decay 0.01, static masking of 5 duplicates (--dupe_factor), packed shards,
phase 1 only (sequence length 128, 20 predictions). HF route: AdamW lr 1e-3, batch 32, warm-up 0.06 then
linear decay, weight decay 0.01, 15% dynamic masking. Tried (5-minute runs, 600 held-out rows; or the
train loss of 300-step probes): HF lr 5e-4, 1e-3, 2e-3; ours LAMB lr 2e-3, 5e-3, 1e-2, 2e-2, 4e-2 and
AdamW 1e-3, 2e-3 (docs/time-to-quality.md). ``--sides hf`` / ``--sides ours`` with ``--skip_downstream``
run one side's sweep point alone.
Fine-tuning recipe (all models): MRPC AdamW lr 1e-4, batch 32, 3 epochs, warm-up 0.1, length 128; SQuAD
split lr 1e-4, batch 32, 2 epochs, warm-up 0.1, length 256 (stride 128).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from benchmarks.time_to_quality_downstream import FinetuneRecipe, run_downstream, write_squad_split
from benchmarks.time_to_quality_eval import Point, evaluate, export_ours, first_reach, interpolated_reach, plot_curves
from benchmarks.time_to_quality_runs import (Recipe, RunResult, StageFailed, StepRate, drop_training_state, prepare_hf,
                                             prepare_ours, probe_hf, probe_ours, run_hf, run_ours)
from benchmarks.time_to_quality_text import EVAL_MASKING_SEED, SOURCES, build_corpus, heldout_set
from central.errors import BadInputError, RuntimeFailure, run_main

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
MARKER = "time_to_quality.marker"   # a run folder this benchmark made (and may clear for a new run)
GOAL_RATIO = 1 / 3
# --quick: the whole pipeline in a few minutes (a smoke test, not a result); explicit flags still win.
QUICK = dict(minutes=0.6, checkpoint_minutes=0.12, probe_steps=3, max_articles=12, dupe_factor=1, shards=2,
             eval_sequences=48, ours_batch=8, hf_batch=8, seeds=[1], mrpc_steps=3, mrpc_samples=48,
             squad_steps=3, squad_eval_articles=1, squad_train_articles=1, squad_paragraphs=2, squad_seq=192,
             finetune_batch=8)


class BenchmarkInputError(BadInputError):
    """A flag or folder of this benchmark that cannot work."""


class OneLineParser(argparse.ArgumentParser):
    """A bad command line is one line and exit status 2, like every entry point of the project."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see -h)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m benchmarks.time_to_quality", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("-o", "--output_dir", default="time_to_quality_run", help="run folder (a new one, or one this benchmark made)")
    add("--quick", action="store_true", help=f"smoke run of every stage: {QUICK}")
    add("--data_dir", default=str(DEFAULT_DATA), help="the shared real data (default: ../shared/data)")
    add("--vocab_file", default=None, help="default: <data_dir>/vocab/bert-base-uncased-vocab.txt")
    add("--sources", nargs="+", choices=SOURCES, default=list(SOURCES), help="training text")
    add("--max_articles", type=int, default=0, help="at most this many articles per source (0: all)")
    add("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads of every child (default: all cores)")
    add("--minutes", type=float, default=20.0, help="wall-clock budget of each side's training")
    add("--checkpoint_minutes", type=float, default=1.0, help="a checkpoint (and a curve point) every this often")
    add("--sides", nargs="+", choices=("ours", "hf"), default=["ours", "hf"], help="which runs (tuning sweeps: one)")
    add("--seed", type=int, default=42, help="pre-training seed of both sides")
    add("--ours_batch", type=int, default=32)
    add("--ours_optimizer", choices=("adamw", "lamb"), default="adamw", help="demo_bert.py pretraining --optimizer")
    add("--ours_lr", type=float, default=1e-3, help="peak learning rate of ours")
    add("--ours_warmup", type=float, default=0.06)
    add("--ours_steps", type=int, default=0, help="max_steps of ours (0: from the probe and the budget)")
    add("--ours_pack", type=int, choices=(0, 1), default=1,
        help="ours trains on packed shards (create_hdf5_files --pack 1; default 1)")
    add("--ours_dynamic_masking", type=int, choices=(0, 1), default=0, help="ours re-masks every micro-batch")
    add("--dupe_factor", type=int, default=5, help="static maskings of the text (create_hdf5_files)")
    add("--shards", type=int, default=0, help="HDF5 training shards (0: --threads)")
    add("--hf_batch", type=int, default=32)
    add("--hf_lr", type=float, default=1e-3, help="peak AdamW learning rate")
    add("--hf_warmup", type=float, default=0.06)
    add("--hf_steps", type=int, default=0, help="max_steps of the HF route (0: from the probe and the budget)")
    add("--probe_steps", type=int, default=12, help="steps of each side's timing probe")
    add("--eval_sequences", type=int, default=0, help="held-out rows scored (0: all)")
    add("--keep_checkpoints", action="store_true",
        help="keep every checkpoint's optimizer state (default: only the last one's; weights are always kept)")
    add("--skip_downstream", action="store_true")
    add("--downstream_only", action="store_true",
        help="only fine-tune the final models of the earlier run in --output_dir (its results.json), e.g. with "
             "other fine-tuning flags")
    add("--tasks", nargs="+", choices=("mrpc", "squad"), default=["mrpc", "squad"])
    add("--seeds", type=int, nargs="+", default=[1, 2, 3], help="fine-tuning seeds")
    add("--finetune_batch", type=int, default=32)
    add("--mrpc_lr", type=float, default=1e-4)
    add("--mrpc_epochs", type=float, default=3.0)
    add("--mrpc_steps", type=int, default=-1, help=argparse.SUPPRESS)
    add("--mrpc_samples", type=int, default=0, help=argparse.SUPPRESS)
    add("--squad_lr", type=float, default=1e-4)
    add("--squad_epochs", type=float, default=2.0)
    add("--squad_seq", type=int, default=256)
    add("--squad_eval_articles", type=int, default=12, help="the last N dev articles are the evaluation set")
    add("--squad_train_articles", type=int, default=0, help="training articles before them (0: all 36)")
    add("--squad_steps", type=int, default=-1, help=argparse.SUPPRESS)
    add("--squad_paragraphs", type=int, default=0, help=argparse.SUPPRESS)
    add("--debug", action="store_true", help="tracebacks instead of one-line errors")
    return parser


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = build_parser()
    if "--quick" in argv:
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    args.data_dir = Path(args.data_dir)
    args.vocab_file = Path(args.vocab_file) if args.vocab_file else args.data_dir / "vocab" / "bert-base-uncased-vocab.txt"
    for needed in (args.data_dir / "wikitext-2-raw" / "wiki.test.raw", args.vocab_file):
        if not needed.is_file():
            raise BenchmarkInputError(f"{needed}: no such file (--data_dir / --vocab_file)")
    for flag in ("minutes", "checkpoint_minutes", "threads", "ours_batch", "hf_batch", "ours_lr", "hf_lr",
                 "dupe_factor", "probe_steps", "finetune_batch"):
        if not getattr(args, flag) > 0:
            raise BenchmarkInputError(f"--{flag} {getattr(args, flag)}: must be positive")
    if not 1 <= args.squad_eval_articles < 48:  # SQuAD v1.1 dev has 48 articles
        raise BenchmarkInputError(f"--squad_eval_articles {args.squad_eval_articles}: must be 1..47")
    args.shards = args.shards or args.threads
    return args


def fresh_run_dir(path: Path) -> Path:
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).is_file():
            raise BenchmarkInputError(f"--output_dir {path} is not empty and was not made by this benchmark")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("made by python -m benchmarks.time_to_quality\n", encoding="utf-8")
    return path


def say(line: str) -> None:
    print(line, flush=True)


def timed(function, *args):
    started = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - started


def plan_steps(side: str, fixed: int, probe, budget_s: float, checkpoint_s: float):
    """(max_steps, save interval in steps) for one side: given, or from its probe and the budget."""
    rate: Optional[StepRate] = None if fixed else probe()
    steps = fixed or rate.steps_in(budget_s)
    save_steps = max(1, round(checkpoint_s / rate.step_s)) if rate else max(1, round(steps * checkpoint_s / budget_s))
    save_steps = min(save_steps, max(1, steps // 2))  # a curve needs two points, even when the probe ran slow
    measured = f"probe: start-up {rate.startup_s:.1f} s, {rate.step_s:.2f} s/step" if rate else "given"
    say(f"ttq: plan {side} max_steps {steps} checkpoint every {save_steps} steps ({measured})")
    return steps, save_steps


def score_checkpoints(side: str, run: RunResult, heldout: Dict[str, np.ndarray], vocab_file: Path,
                      export_dir: Path) -> List[Point]:
    points = []
    for step in sorted(run.checkpoints):
        model_dir = run.checkpoints[step]
        if side == "ours":  # ckpt_N.pt -> HF folder, so that both sides are read by the same code
            model_dir = export_ours(model_dir, vocab_file, export_dir / f"step{step}")
        accuracy, loss = evaluate(model_dir, heldout)
        points.append(Point(run.completed_at[step], step, accuracy, loss, str(model_dir)))
        say(f"ttq: eval {side} step {step} at {run.completed_at[step]:.0f} s: accuracy {accuracy:.4f} loss {loss:.4f}")
    if not points:
        raise RuntimeFailure(f"the {side} run wrote no checkpoint (log in {export_dir.parent.parent / 'logs'})")
    return points


def compare(curves: Dict[str, List[Point]], budget_s: float, prep_s: Dict[str, float]) -> dict:
    """The headline: when ours first reached the HF route's final accuracy, as a share of the HF budget."""
    finals = {side: max(points, key=lambda p: p.seconds) for side, points in curves.items()}
    for side, final in finals.items():
        say(f"ttq: result {side} final held-out MLM accuracy {final.accuracy:.4f} loss {final.loss:.4f} "
            f"at {final.seconds:.0f} s (step {final.step})")
    summary = {"final": {side: asdict(p) for side, p in finals.items()}}
    if set(finals) != {"ours", "hf"}:
        return summary
    target = finals["hf"].accuracy
    reached = first_reach(curves["ours"], target)
    interpolated = interpolated_reach(curves["ours"], target)
    summary.update(target=target, reached_s=reached.seconds if reached else None, interpolated_s=interpolated)
    if reached is None:
        say(f"ttq: result ours did not reach the HF route's final accuracy {target:.4f}: its final "
            f"{finals['ours'].accuracy:.4f} is {100 * (target - finals['ours'].accuracy):.2f} points short "
            f"(goal <= {GOAL_RATIO:.3f} of the budget: NOT met)")
        return summary
    ratio = reached.seconds / budget_s
    summary["ratio"] = ratio
    say(f"ttq: result ours reached the HF route's final accuracy {target:.4f} at {reached.seconds:.0f} s "
        f"(checkpoint step {reached.step}; interpolated {interpolated:.0f} s) = {ratio:.3f} of the HF route's "
        f"{budget_s:.0f} s budget (goal <= {GOAL_RATIO:.3f}: {'met' if ratio <= GOAL_RATIO else 'NOT met'})")
    with_prep = (prep_s["ours"] + reached.seconds) / (prep_s["hf"] + budget_s)
    summary["ratio_with_prep"] = with_prep
    say(f"ttq: result with data preparation: (ours prep {prep_s['ours']:.0f} s + {reached.seconds:.0f} s) / "
        f"(HF prep {prep_s['hf']:.0f} s + {budget_s:.0f} s) = {with_prep:.3f}")
    return summary


def downstream(args, run_dir: Path, curves: Dict[str, List[Point]]) -> dict:
    models = {side_name: max(curves[side], key=lambda p: p.seconds).model_dir
              for side, side_name in (("ours", "ours"), ("hf", "hf_route")) if side in curves}
    models["random_init"] = "mini"
    squad = write_squad_split(args.data_dir / "squad" / "dev-v1.1.json", run_dir / "squad_split",
                              args.squad_eval_articles, args.squad_train_articles, args.squad_paragraphs)
    say(f"ttq: squad split train {squad.train_articles} articles {squad.train_questions} questions, eval "
        f"{squad.eval_articles} held-out articles {squad.eval_questions} questions ({squad.train_file.parent})")
    recipes = {
        "mrpc": FinetuneRecipe(args.mrpc_lr, args.finetune_batch, args.mrpc_epochs, 0.1, 128, args.mrpc_steps,
                               args.mrpc_samples, args.mrpc_samples),
        "squad": FinetuneRecipe(args.squad_lr, args.finetune_batch, args.squad_epochs, 0.1, args.squad_seq,
                                args.squad_steps)}
    for task in args.tasks:
        say(f"ttq: recipe {task}: {recipes[task].describe()}; seeds {args.seeds}")
    scores = run_downstream(args.tasks, models, recipes, args.seeds, args.vocab_file, run_dir, args.threads,
                            args.data_dir / "glue_data" / "MRPC", squad, say)
    result: dict = {}
    for task, per_model in scores.items():
        scale = 100.0 if task == "mrpc" else 1.0  # MRPC scores come as fractions, SQuAD's in percent
        for name, metrics in per_model.items():
            say(f"ttq: result {task} {name}: " + ", ".join(
                f"{metric} {scale * s.mean:.2f} sd {scale * s.sd:.2f}" for metric, s in metrics.items())
                + f" (percent, {len(args.seeds)} seeds)")
            result.setdefault(task, {})[name] = {m: [scale * v for v in s.values] for m, s in metrics.items()}
        for name in (n for n in per_model if n != "random_init"):
            gaps = ", ".join(f"{metric} {scale * (s.mean - per_model['random_init'][metric].mean):+.2f}"
                             for metric, s in per_model[name].items())
            say(f"ttq: result {task} {name} minus random_init: {gaps} points")
    return result


def text_stage(args, run_dir: Path) -> Tuple[Dict[str, np.ndarray], dict]:
    """corpus/ for both sides and the masked held-out rows (heldout_masked.npz)."""
    corpus = build_corpus(args.data_dir, args.sources, run_dir / "corpus", args.max_articles)
    for article, reason in corpus.dropped:
        say(f"ttq: text dropped {article.source} article '{article.title}': {reason}")
    say(f"ttq: text training {corpus.articles} articles, {corpus.words} words from {' '.join(args.sources)}; "
        f"{len(corpus.dropped)} articles dropped for overlap with the held-out text")
    heldout = heldout_set(corpus.heldout, args.vocab_file, max_sequences=args.eval_sequences)
    np.savez(run_dir / "heldout_masked.npz", **heldout)
    say(f"ttq: heldout wikitext-2 test: {len(corpus.heldout)} articles, {len(heldout['input_ids'])} rows of 128, "
        f"{int((heldout['masked_lm_positions'] > 0).sum())} masked tokens (one masking, seed {EVAL_MASKING_SEED})")
    return heldout, {"articles": corpus.articles, "words": corpus.words, "heldout_rows": len(heldout["input_ids"]),
                     "dropped": [[a.source, a.title, why] for a, why in corpus.dropped]}


def pretraining_stage(args, run_dir: Path, budget_s: float, checkpoint_s: float):
    """Data preparation (timed) and the budgeted runs of the chosen sides: (runs, prep seconds)."""
    logs, hf_data = run_dir / "logs", run_dir / "hf" / "blocks.npz"
    recipes = {"ours": Recipe(args.ours_batch, args.ours_lr, args.ours_warmup, bool(args.ours_dynamic_masking),
                              args.ours_optimizer),
               "hf": Recipe(args.hf_batch, args.hf_lr, args.hf_warmup)}
    hdf5, prep_ours = timed(prepare_ours, run_dir / "corpus", run_dir / "ours_data", args.vocab_file, args.shards,
                            args.dupe_factor, args.threads, logs, bool(args.ours_pack))
    _, prep_hf = timed(prepare_hf, run_dir / "corpus", args.vocab_file, hf_data, args.threads, logs)
    say(f"ttq: prep ours {prep_ours:.1f} s (data.prepare, dupe_factor {args.dupe_factor}, {args.shards} shards: {hdf5}); "
        f"hf {prep_hf:.1f} s (tokenize + chunk)")
    runs: Dict[str, RunResult] = {}
    if "ours" in args.sides:
        steps, save_steps = plan_steps("ours", args.ours_steps, lambda: probe_ours(
            hdf5, run_dir / "probe" / "ours", recipes["ours"], args.probe_steps, args.seed, args.threads, logs),
            budget_s, checkpoint_s)
        runs["ours"] = run_ours(hdf5, run_dir / "ours", recipes["ours"], steps, save_steps, args.seed,
                                args.threads, budget_s, logs)
    if "hf" in args.sides:
        steps, _ = plan_steps("hf", args.hf_steps, lambda: probe_hf(
            hf_data, args.vocab_file, run_dir / "probe" / "hf", recipes["hf"], args.probe_steps, args.seed,
            args.threads, logs), budget_s, checkpoint_s)
        runs["hf"] = run_hf(hf_data, args.vocab_file, run_dir / "hf" / "run", recipes["hf"], steps, args.seed,
                            args.threads, budget_s, checkpoint_s, logs)
    for side, run in runs.items():
        last = max(run.completed_at.values(), default=0.0)
        say(f"ttq: run {side} {asdict(recipes[side])}: wall {run.wall_s:.0f} s, exit status {run.status}, "
            f"{len(run.checkpoints)} checkpoints, the last at {last:.0f} s")
        if last < 0.9 * budget_s:  # its max_steps ran out early: the probe overestimated its step time
            say(f"ttq: warning {side} finished its schedule at {last:.0f} s of its {budget_s:.0f} s budget "
                f"(the machine was faster than during the probe); rerun on a quiet machine or give --{side}_steps")
    return runs, {"ours": prep_ours, "hf": prep_hf}


def downstream_only(args) -> int:
    """Stage 6 alone, on the final models that an earlier run left in --output_dir."""
    run_dir = Path(args.output_dir).resolve()
    results_file = run_dir / "results.json"
    if not (run_dir / MARKER).is_file() or not results_file.is_file():
        raise BenchmarkInputError(f"--downstream_only: {run_dir} holds no run of this benchmark (results.json)")
    results = json.loads(results_file.read_text(encoding="utf-8"))
    curves = {side: [Point(**p) for p in points] for side, points in results["curves"].items()}
    results["downstream"] = downstream(args, run_dir, curves)
    results["downstream_args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results_file.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    say(f"ttq: result json {results_file}")
    return 0


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)  # evaluation runs in this process
    if args.downstream_only:
        return downstream_only(args)
    run_dir = fresh_run_dir(Path(args.output_dir).resolve())
    budget_s, checkpoint_s = 60 * args.minutes, 60 * args.checkpoint_minutes
    say(f"ttq: setup {'QUICK smoke run (not a result), ' if args.quick else ''}threads {args.threads}, "
        f"budget {budget_s:.0f} s per side, checkpoint every {checkpoint_s:.0f} s, run folder {run_dir}")
    results: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    heldout, results["text"] = text_stage(args, run_dir)
    runs, results["prep_s"] = pretraining_stage(args, run_dir, budget_s, checkpoint_s)
    curves = {side: score_checkpoints(side, run, heldout, args.vocab_file, run_dir / side / "hf_checkpoints")
              for side, run in runs.items()}
    if not args.keep_checkpoints:
        for side, run in runs.items():
            drop_training_state(run, side)
    results["curves"] = {side: [asdict(p) for p in points] for side, points in curves.items()}
    summary = results["summary"] = compare(curves, budget_s, results["prep_s"])
    plot = plot_curves({"ours (demo_bert.py pretraining)" if s == "ours" else "HF route (run_mlm recipe)": p
                        for s, p in curves.items()}, summary.get("target"), summary.get("reached_s"),
                       f"BERT mini, {args.threads} threads, {args.minutes:g} min per side", run_dir / "time_to_quality.png")
    results["plot"] = str(plot)
    results_file = run_dir / "results.json"
    results_file.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")  # again after fine-tuning
    if not args.skip_downstream:
        results["downstream"] = downstream(args, run_dir, curves)
        results_file.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    say(f"ttq: result plot {plot}")
    say(f"ttq: result json {results_file}")
    return 0


def entry(argv: Optional[List[str]] = None) -> int:
    try:
        return run_main(main, argv, prog="benchmarks.time_to_quality")
    except StageFailed as err:  # a child failed: its log tail is in the message
        print(f"benchmarks.time_to_quality: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(entry())
