"""The whole toolkit in a few minutes on a CPU, on the built-in data (data/builtin/).

    python demo_bert.py quickstart [--output_dir quickstart_run] [--small]

Each step runs the real command as a child process, exactly as a user would type it:

  1. data         python -m data.builtin.generate           built-in corpus, MRPC- and SQuAD-format sets
  2. vocab        python -m data.vocab                      WordPiece vocab from the built-in corpus
  3. phase 1 data python -m data.create_pretraining_data    HDF5 shards, sequence length 128
  4. phase 2 data python -m data.create_pretraining_data    HDF5 shards, sequence length 512
  5. pre-train    python demo_bert.py pretraining           tiny BERT, both phases, HF export after each
  6. MRPC         python demo_bert.py finetuning            built-in sentence pairs (MRPC format)
  7. SQuAD        python demo_bert.py finetuning            built-in questions (SQuAD v1.1 format)
  8. report       python demo_bert.py report                plots and summary.md

Everything goes under --output_dir (see the README, "Quick start", for the layout). Running it again
on a quick-start folder starts over; any other non-empty folder is refused.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from central.checkpoint import atomic_write_text
from central.dllog import read_dllogger
from central.errors import BadInputError, RuntimeFailure, exit_status_for_signal, run_main

REPO_ROOT = Path(__file__).resolve().parent.parent
MARKER = "quickstart.json"        # marks a folder this command made (and may therefore clear)
OWN_PARTS = ("data", "pretraining", "finetuning", "report", MARKER)


@dataclass(frozen=True)
class Budget:
    """How much work each step does. ``full`` is sized for a few minutes on a 2-core CPU; ``small`` is for tests."""
    vocab_size: int
    dupe_factor: int
    pretrain_steps: tuple       # optimizer steps of phase 1, phase 2
    pretrain_batch: tuple       # sequences per step of phase 1, phase 2
    mrpc_epochs: float
    squad_epochs: float
    finetune_max_steps: Optional[int]


# Learning rates are far above BERT-Base's: a 2-layer, 64-wide model on a 120 KB corpus learns fastest
# there (LAMB 2e-2 reaches an MLM+NSP loss of ~3 in 800 steps; 5e-3 is still at ~5.5 after 300).
PRETRAIN_LR = ("2e-2", "1e-2")
MRPC_LR, SQUAD_LR = "5e-4", "1e-3"
BUDGETS = {
    "full": Budget(vocab_size=2000, dupe_factor=4, pretrain_steps=(800, 40), pretrain_batch=(32, 8),
                   mrpc_epochs=10, squad_epochs=10, finetune_max_steps=None),
    "small": Budget(vocab_size=2000, dupe_factor=1, pretrain_steps=(12, 3), pretrain_batch=(16, 4),
                    mrpc_epochs=1, squad_epochs=1, finetune_max_steps=12),
}

PROG = "demo_bert.py quickstart"


class QuickstartFolderError(BadInputError):
    """The output folder cannot be used (a file, someone else's folder, not writable)."""


class QuickstartError(RuntimeFailure):
    """A step failed; the quick start ends with that step's exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.exit_status = status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG,
                                     description="Build a vocab, make shards, pre-train a tiny BERT through both "
                                                 "phases, fine-tune it on MRPC- and SQuAD-format tasks, report.")
    parser.add_argument("-o", "--output_dir", default="quickstart_run", help="run folder (default: ./quickstart_run)")
    parser.add_argument("--small", action="store_true", help="a few steps per stage (a smoke test, not a result)")
    parser.add_argument("-d", "--device", default="cpu", choices=("cpu", "cuda", "hpu", "auto"),
                        help="where to train (default: cpu)")
    parser.add_argument("--seed", type=int, default=12439)
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    return parser


# ---------------------------------------------------------------------------------------------- steps
def python_m(module: str, *args: str) -> List[str]:
    return [sys.executable, "-m", module, *args]


def demo_bert(*args: str) -> List[str]:
    return [sys.executable, str(REPO_ROOT / "demo_bert.py"), *args]


def plan_steps(run: Path, budget: Budget, device: str, seed: int) -> List[tuple]:
    """(title, argv) of every step, in order; paths are absolute so the children's cwd does not matter."""
    data = run / "data"
    builtin, vocab = data / "builtin", data / "vocab.txt"
    corpus = builtin / "corpus"
    shards = {1: data / "phase1", 2: data / "phase2"}
    steps = [("built-in data (corpus, sentence pairs, questions)",
              python_m("data.builtin.generate", "--output_dir", str(builtin))),
             ("vocab", python_m("data.vocab", "--input", str(corpus), "--output", str(vocab),
                                "--vocab_size", str(budget.vocab_size)))]
    for phase, (seq, predictions) in ((1, (128, 20)), (2, (512, 80))):
        steps.append((f"phase-{phase} shards (sequence length {seq})", python_m(
            "data.create_pretraining_data", "--input_file", str(corpus),
            "--output_file", str(shards[phase] / "valley_training_0.hdf5"), "--vocab_file", str(vocab),
            "--max_seq_length", str(seq), "--max_predictions_per_seq", str(predictions),
            "--dupe_factor", str(budget.dupe_factor), "--random_seed", str(seed + phase))))
    steps.append(("pre-training (phase 1, then phase 2)", demo_bert(
        "pretraining", "--model_name_or_path", "tiny", "--data_type", "fp32", "--device", device,
        "--data_dir", str(shards[1]), str(shards[2]), "--vocab_file", str(vocab),
        "--output_dir", str(run / "pretraining"),
        "--batch_size", *map(str, budget.pretrain_batch), "--max_steps", *map(str, budget.pretrain_steps),
        "--learning_rate", *PRETRAIN_LR, "--warmup", "0.1", "0.1",
        "--save_steps", *map(str, budget.pretrain_steps), "--seed", str(seed))))
    export = export_dir(run, 2)
    common = ["--model_name_or_path", str(export), "--data_type", "fp32", "--device", device,
              "--output_dir", str(run / "finetuning"), "--do_eval", "--seed", str(seed), "--logging_steps", "5"]
    limit = ["--max_steps", str(budget.finetune_max_steps)] if budget.finetune_max_steps else []
    steps.append(("fine-tuning on the built-in sentence pairs (MRPC format)", demo_bert(
        "finetuning", "--task_name", "mrpc", "--data_dir", str(builtin / "MRPC"), *common,
        "--max_seq_length", "64", "--batch_size", "32", "--learning_rate", MRPC_LR,
        "--num_train_epochs", str(budget.mrpc_epochs), *limit)))
    steps.append(("fine-tuning on the built-in questions (SQuAD format)", demo_bert(
        "finetuning", "--task_name", "squad", "--data_dir", str(builtin / "SQuAD"), *common,
        "--max_seq_length", "160", "--doc_stride", "64", "--batch_size", "16", "--learning_rate", SQUAD_LR,
        "--num_train_epochs", str(budget.squad_epochs), *limit)))
    steps.append(("report", demo_bert("report", str(run))))
    return steps


def export_dir(run: Path, phase: int) -> Path:
    """Where pre-training writes the HF export of a phase (<output_dir>/results/hf_export/phase<N>)."""
    return run / "pretraining" / "results" / "hf_export" / f"phase{phase}"


def child_environment(device: str) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on the network
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if device == "cpu":
        # The tiny model's matmuls are too small to gain from intra-op threads, and OpenMP threads that
        # share cores with anything else spin, which made each step many times slower
        # (docs/performance.md).
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_step(number: int, total: int, title: str, argv: List[str], env: Dict[str, str]) -> float:
    print(f"\n[{number}/{total}] {title}\n  $ {shlex.join(argv)}", flush=True)
    start = time.time()
    status = subprocess.run(argv, env=env).returncode
    if status != 0:
        raise QuickstartError(f"step {number} ({title}) failed with exit status {status}", status=status)
    seconds = time.time() - start
    print(f"  done in {seconds:.1f} s", flush=True)
    return seconds


def prepare_output_dir(run: Path) -> None:
    """Create ``run``; clear what an earlier quick start left there; refuse any other non-empty folder."""
    if run.exists() and not run.is_dir():
        raise QuickstartFolderError(f"--output_dir {run}: exists and is not a folder")
    if run.is_dir() and any(run.iterdir()):
        if not (run / MARKER).is_file():
            raise QuickstartFolderError(f"--output_dir {run}: not empty and not a quick-start folder; choose another")
        for name in OWN_PARTS:
            target = run / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    try:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run / MARKER, json.dumps({"status": "running"}) + "\n")
    except OSError as err:
        raise QuickstartFolderError(f"--output_dir {run}: cannot be written ({err.strerror or err})") from None


# ---------------------------------------------------------------------------------------------- results
def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def pretraining_losses(run: Path) -> List[float]:
    """final_loss of each phase, in order, from the pre-training DLLogger file."""
    path = run / "pretraining" / "results" / "dllogger.json"
    if not path.is_file():
        return []
    return [r["data"]["final_loss"] for r in read_dllogger(path)
            if r.get("step") != "PARAMETER" and "final_loss" in (r.get("data") or {})
            and "e2e_train_time" in r["data"]]


def collect_results(run: Path) -> dict:
    return {"pretraining_final_loss": pretraining_losses(run),
            "mrpc": read_json(run / "finetuning" / "mrpc" / "eval_results.json"),
            "squad": read_json(run / "finetuning" / "squad" / "eval_results.json")}


def show_results(run: Path, results: dict, seconds: float) -> str:
    def metrics(values: dict, names) -> str:
        shown = [f"{n} {values[n]:.4g}" for n in names if isinstance(values.get(n), (int, float))]
        return ", ".join(shown) or "no eval_results.json"

    losses = ", ".join(f"phase {i} {loss:.3f}" for i, loss in enumerate(results["pretraining_final_loss"], 1))
    lines = [f"\nquick start finished in {seconds / 60:.1f} min; everything is in {run}",
             f"  pre-training final loss   {losses or 'not logged'}",
             f"  MRPC-format pairs (dev)   {metrics(results['mrpc'], ('accuracy', 'f1'))}",
             f"  SQuAD-format QA (dev)     {metrics(results['squad'], ('exact_match', 'f1'))}",
             f"  report                    {run / 'report' / 'summary.md'}",
             "  try the fine-tuned QA model:",
             "    " + shlex.join(["python", "demo_bert.py", "predict", "--task_name", "squad", "--model_name_or_path",
                                  str(run / "finetuning" / "squad"), "--question", "Where does Mara live?",
                                  "--context", "Mara Ashdown is 34 years old. Mara lives in Oakridge."])]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda _: quickstart(args), argv, prog=PROG, debug=False)


def quickstart(args) -> int:
    run = Path(args.output_dir).expanduser().resolve()
    budget = BUDGETS["small" if args.small else "full"]
    steps = plan_steps(run, budget, args.device, args.seed)
    if args.dry_run:
        for title, command in steps:
            print(f"# {title}\n{shlex.join(command)}")
        return 0
    start = time.time()
    try:
        prepare_output_dir(run)
        env = child_environment(args.device)
        timings = {}
        for number, (title, command) in enumerate(steps, 1):
            timings[title] = round(run_step(number, len(steps), title, command, env), 2)
            if title == "vocab":  # a shard folder carries the vocab it was made with
                for phase in (1, 2):
                    (run / "data" / f"phase{phase}").mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(run / "data" / "vocab.txt", run / "data" / f"phase{phase}" / "vocab.txt")
    except KeyboardInterrupt:  # the running step got the same Ctrl-C and stopped on its own
        print(f"\n{PROG}: interrupted; rerun to start over in {run}", file=sys.stderr)
        return exit_status_for_signal(signal.SIGINT)
    results = collect_results(run)
    seconds = time.time() - start
    atomic_write_text(run / MARKER, json.dumps({"status": "done", "seconds": round(seconds, 1), "small": args.small,
                                                "step_seconds": timings, **results}, indent=2) + "\n")
    print(show_results(run, results, seconds))
    return 0

if __name__ == "__main__":
    sys.exit(main())
