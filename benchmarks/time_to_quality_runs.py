"""The two pre-training runs of benchmarks.time_to_quality, each as the child processes a user would start.

Ours: ``python -m data.prepare`` (text_formatting, sharding, create_hdf5_files of the custom corpus with
BERT's uncased vocab), then ``python demo_bert.py pretraining --model_name_or_path mini --device cpu
--phase 1 ...``. The run keeps its usual last-3 checkpoints; a watcher hard-links every new
``ckpt_N.pt`` aside as it appears so that all of them can be scored afterwards. At the deadline the
launcher gets SIGTERM: the step in flight finishes, a checkpoint is saved, the run exits (128 + 15).

The HF route: benchmarks.time_to_quality_hf_route ``prepare`` then ``train`` (it saves by wall time and
stops itself at the deadline).

Schedules need a step count. Unless one is given, each side is first probed for a few steps (not
counted in its budget): from the probe, (budget - start-up) / seconds per step sets ``max_steps`` and
the checkpoint interval in steps, so each side's learning rate decays to its end near the deadline.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List

from central.dllog import read_dllogger

REPO_ROOT = Path(__file__).resolve().parent.parent
STOPPED_BY_SIGTERM = 128 + signal.SIGTERM
MIN_STEPS = 4  # a shorter schedule means nothing; the deadline still stops a run that is slower than planned


class StageFailed(RuntimeError):
    """A child process failed; the message names it and its log."""


@dataclass(frozen=True)
class Recipe:
    """One side's optimisation knobs (packing and dynamic masking: ours only)."""
    batch_size: int
    learning_rate: float
    warmup_proportion: float
    dynamic_masking: bool = False
    optimizer: str = "adamw"      # ours: demo_bert.py pretraining --optimizer (the HF route: AdamW always)


@dataclass
class StepRate:
    startup_s: float   # launch -> first training step begins
    step_s: float      # seconds per optimizer step (median)

    def steps_in(self, seconds: float) -> int:
        return max(MIN_STEPS, int((seconds - self.startup_s) / self.step_s))


@dataclass
class RunResult:
    launched_at: float
    wall_s: float
    status: int
    checkpoints: Dict[int, Path] = field(default_factory=dict)   # step -> kept file / folder
    completed_at: Dict[int, float] = field(default_factory=dict)  # step -> seconds since launch


def child_env(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env.update(PYTHONPATH=str(REPO_ROOT) + (os.pathsep + path if path else ""), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), BERT_DISABLE_PROGRESS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def run_logged(argv: List[str], env: Dict[str, str], log: Path, deadline: float = 0.0, grace_s: float = 120.0,
               poll: Callable[[], None] = lambda: None, ok=(0,)) -> RunResult:
    """Run ``argv`` with its output in ``log``. At ``deadline`` (time.time(); 0 = none) it gets SIGTERM,
    ``grace_s`` later SIGKILL. ``poll`` is called every 0.2 s while it runs and once after."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log, "ab") as out:
        out.write(("$ " + " ".join(argv) + "\n").encode())
        out.flush()
        child = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        signalled = False
        try:
            while child.poll() is None:
                poll()
                now = time.time()
                if deadline and now >= deadline and not signalled:
                    child.send_signal(signal.SIGTERM)
                    signalled = True
                if deadline and now >= deadline + grace_s:
                    os.killpg(child.pid, signal.SIGKILL)
                time.sleep(0.2)
        except BaseException:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            raise
    poll()
    result = RunResult(launched_at=started, wall_s=time.time() - started, status=child.returncode)
    if child.returncode not in ok:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise StageFailed(f"{argv[1] if argv[1] != '-m' else argv[2]} exited with status {child.returncode} "
                          f"(log {log}):\n    " + "\n    ".join(tail))
    return result


# ---------------------------------------------------------------------------------------------- ours
def prepare_ours(corpus: Path, work_dir: Path, vocab_file: Path, shards: int, dupe_factor: int, threads: int,
                 logs: Path, pack: bool = False) -> Path:
    """The three data.prepare stages a user runs for their own corpus; returns the HDF5 folder the
    trainer reads (with ``pack``, the packed sibling that ``create_hdf5_files --pack 1`` writes)."""
    env = child_env(threads)
    common = ["--dataset", "custom", "--working_dir", str(work_dir)]
    split = ["--n_training_shards", str(shards), "--n_test_shards", "0", "--fraction_test_set", "0"]
    python = [sys.executable, "-m", "data.prepare"]
    run_logged(python + ["--action", "text_formatting", "--input_path", str(corpus)] + common, env, logs / "ours_prepare.log")
    run_logged(python + ["--action", "sharding"] + common + split, env, logs / "ours_prepare.log")
    run_logged(python + ["--action", "create_hdf5_files"] + common + split + [
        "--max_seq_length", "128", "--max_predictions_per_seq", "20", "--vocab_file", str(vocab_file),
        "--do_lower_case", "1", "--dupe_factor", str(dupe_factor), "--n_processes", str(threads),
        "--pack", "1" if pack else "0"], env, logs / "ours_prepare.log")
    folders = sorted(work_dir.glob(f"hdf5_lower_case_1_seq_len_128_*/custom{'_packed' if pack else ''}"))
    if len(folders) != 1:
        raise StageFailed(f"expected one HDF5 folder under {work_dir}, found {folders}")
    return folders[0]


def ours_argv(hdf5_dir: Path, out_dir: Path, recipe: Recipe, max_steps: int, save_steps: int, seed: int) -> List[str]:
    """The launcher command line, phase 1 (sequence length 128) only."""
    def pair(value) -> List[str]:
        return [str(value), str(value)]

    return [sys.executable, str(REPO_ROOT / "demo_bert.py"), "pretraining", "--model_name_or_path", "mini",
            "--data_type", "fp32", "--device", "cpu", "--phase", "1", "--output_dir", str(out_dir),
            "--data_dir", *pair(hdf5_dir), "--batch_size", *pair(recipe.batch_size),
            "--learning_rate", *pair(recipe.learning_rate), "--warmup", *pair(recipe.warmup_proportion),
            "--max_steps", *pair(max_steps), "--save_steps", *pair(save_steps),
            "--max_seq_length", "128", "512", "--max_predictions_per_seq", "20", "80", "--seed", str(seed),
            "--optimizer", recipe.optimizer, *(["--dynamic_masking"] if recipe.dynamic_masking else [])]


def probe_ours(hdf5_dir: Path, out_dir: Path, recipe: Recipe, steps: int, seed: int, threads: int, logs: Path) -> StepRate:
    result = run_logged(ours_argv(hdf5_dir, out_dir, recipe, steps, steps, seed), child_env(threads),
                        logs / "ours_probe.log")
    records = [r for r in read_dllogger(out_dir / "results" / "dllogger.json")
               if isinstance(r.get("step"), list) and r["step"] and "average_training_time_step" in r["data"]]
    if not records:
        raise StageFailed(f"the probe of ours logged no steps (log {logs / 'ours_probe.log'})")
    shutil.rmtree(out_dir / "results" / "checkpoints", ignore_errors=True)  # only the timings are needed
    shutil.rmtree(out_dir / "results" / "hf_export", ignore_errors=True)
    times = [r["data"]["average_training_time_step"] for r in records]
    step_s = statistics.median(times[2:] or times)
    first_start = records[0]["timestamp"] - times[0]
    return StepRate(startup_s=max(0.0, first_start - result.launched_at), step_s=step_s)


def run_ours(hdf5_dir: Path, out_dir: Path, recipe: Recipe, max_steps: int, save_steps: int, seed: int,
             threads: int, budget_s: float, logs: Path) -> RunResult:
    checkpoints = out_dir / "results" / "checkpoints"
    kept = out_dir / "kept_checkpoints"
    kept.mkdir(parents=True, exist_ok=True)

    def keep_new_checkpoints() -> None:
        for path in checkpoints.glob("ckpt_*.pt"):
            target = kept / path.name
            if not target.exists():
                try:
                    os.link(path, target)  # survives the run's keep-last-3 pruning
                except FileNotFoundError:  # pruned between glob and link: lost, rare
                    pass

    launched = time.time()
    result = run_logged(ours_argv(hdf5_dir, out_dir, recipe, max_steps, save_steps, seed), child_env(threads),
                        logs / "ours_run.log", deadline=launched + budget_s, grace_s=max(120.0, 0.2 * budget_s),
                        poll=keep_new_checkpoints, ok=(0, STOPPED_BY_SIGTERM))
    for path in sorted(kept.glob("ckpt_*.pt")):
        step = int(path.stem.split("_")[1])
        result.checkpoints[step] = path
        result.completed_at[step] = path.stat().st_mtime - result.launched_at
    return result


# ---------------------------------------------------------------------------------------------- HF route
HF_MODULE = "benchmarks.time_to_quality_hf_route"


def prepare_hf(corpus: Path, vocab_file: Path, output: Path, threads: int, logs: Path) -> None:
    run_logged([sys.executable, "-m", HF_MODULE, "prepare", "--corpus", str(corpus), "--vocab_file", str(vocab_file),
                "--output", str(output)], child_env(threads), logs / "hf_prepare.log")


def hf_argv(data: Path, vocab_file: Path, out_dir: Path, recipe: Recipe, max_steps: int, seed: int, threads: int,
            deadline: float = 0.0, checkpoint_s: float = 0.0) -> List[str]:
    return [sys.executable, "-m", HF_MODULE, "train", "--data", str(data), "--vocab_file", str(vocab_file),
            "--output_dir", str(out_dir), "--max_steps", str(max_steps), "--batch_size", str(recipe.batch_size),
            "--learning_rate", str(recipe.learning_rate), "--warmup_proportion", str(recipe.warmup_proportion),
            "--seed", str(seed), "--threads", str(threads), "--deadline", repr(deadline),
            "--checkpoint_seconds", repr(checkpoint_s)]


def probe_hf(data: Path, vocab_file: Path, out_dir: Path, recipe: Recipe, steps: int, seed: int, threads: int,
             logs: Path) -> StepRate:
    result = run_logged(hf_argv(data, vocab_file, out_dir, recipe, steps, seed, threads), child_env(threads),
                        logs / "hf_probe.log")
    timeline = json.loads((out_dir / "timeline.json").read_text(encoding="utf-8"))
    ends = [t for _, t in timeline["steps"]]
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    step_s = statistics.median(gaps[1:] or gaps or [ends[0] - timeline["start"]])
    return StepRate(startup_s=max(0.0, ends[0] - step_s - result.launched_at), step_s=step_s)


def run_hf(data: Path, vocab_file: Path, out_dir: Path, recipe: Recipe, max_steps: int, seed: int, threads: int,
           budget_s: float, checkpoint_s: float, logs: Path) -> RunResult:
    launched = time.time()
    argv = hf_argv(data, vocab_file, out_dir, recipe, max_steps, seed, threads, deadline=launched + budget_s,
                   checkpoint_s=checkpoint_s)
    # The child stops itself at the deadline; SIGTERM only if a step hangs far past it.
    result = run_logged(argv, child_env(threads), logs / "hf_run.log", deadline=launched + budget_s + max(120.0, 0.2 * budget_s))
    for folder in sorted(out_dir.glob("checkpoint-*")):
        step = int(folder.name.split("-")[1])
        result.checkpoints[step] = folder
        result.completed_at[step] = max(p.stat().st_mtime for p in folder.iterdir()) - result.launched_at
    return result


def drop_training_state(run: RunResult, side: str) -> None:
    """After scoring: keep the HF-format weights of every checkpoint, but optimizer state (and our
    ckpt_N.pt files, already exported) only for the last one (~135 MB each for mini)."""
    for step in sorted(run.checkpoints)[:-1]:
        path = run.checkpoints[step]
        if side == "ours":
            path.unlink(missing_ok=True)
        else:
            for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
                (path / name).unlink(missing_ok=True)
