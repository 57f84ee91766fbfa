"""The one-command check for the first GPU at hand: ``bash benchmarks/device_check.sh`` (issue 22).

    bash benchmarks/device_check.sh               # on a CUDA machine: ~8 minutes at most on one H200
    bash benchmarks/device_check.sh --dry_run     # the same parts on the CPU, tiny and quick (CI runs it)

Runs with the machine's own ``python3`` and the repository alone (no install, no ../shared data): torch
and transformers are needed, pytest for the tests part, accelerate for transformers' Trainer; a part
whose needs are missing says so in one line. Each part runs in its own process with a fixed number of
steps and a timeout; a part that fails or times out prints one line and the next part runs, so the
whole check ends within the sum of the timeouts (``budget_s()``, 470 s) whatever happens.

Parts:
  environment  GPU, driver, torch / CUDA / transformers versions, the bf16 matmul rate measured here
  tests        pytest -m cuda over the test files that hold CUDA tests
  phase1       BERT-Large bf16, seq 128, 20 masked: ours (eager, and compiled as --mode lazy/graph runs
               it on CUDA) vs transformers.BertForPreTraining (sdpa), same batch, MFU against both peaks
  phase2       the same at seq 512, 80 masked
  packed       benchmarks/packing_throughput.py --device cuda (phase 2 on packed rows), when present
  squad        benchmarks/finetune_squad.py --device cuda: BERT-Large SQuAD fine-tuning, seq 384, bf16,
               ours vs transformers' Trainer
Every line goes to the console and to one log file: $OUT/device_check.log when $OUT is set, else
./device_check.log (``--log`` to choose). The last lines compare the figures with the goals.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKED_SCRIPT = REPO_ROOT / "benchmarks" / "packing_throughput.py"
GOALS = ("phase 1: >= 2,000 seq/s and >= 2x transformers; phase 2 packed: >= 900 samples/s; "
         "SQuAD fine-tuning: >= 2x transformers' Trainer (one H200)")


@dataclass(frozen=True)
class Part:
    name: str
    argv: Tuple[str, ...]   # after the interpreter
    timeout_s: int
    needs: Tuple[str, ...] = ()  # importable modules the part cannot run without


def gpu_parts(matmul_tflops: Optional[float]) -> List[Part]:
    measured = ("--measured_tflops", f"{matmul_tflops:.1f}") if matmul_tflops else ()
    throughput = ("-m", "benchmarks.pretraining_throughput", "--compile", "ours", "--warmup", "2", "--steps", "6")
    return [
        # -v: a line per test as it ends, so a timeout still shows how far the tests got
        Part("tests", ("-m", "pytest", "-v", "-rfE", "-p", "no:cacheprovider", "-m", "cuda", *cuda_test_files()),
             120, ("pytest",)),
        Part("phase1", (*throughput, "--preset", "cuda-large-128", "--batch", "256", *measured), 105,
             ("transformers",)),
        Part("phase2", (*throughput, "--preset", "cuda-large-512", "--batch", "32", *measured), 95,
             ("transformers",)),
        Part("packed", ("-m", "benchmarks.packing_throughput", "--device", "cuda"), 45),
        Part("squad", ("-m", "benchmarks.finetune_squad", "--device", "cuda", "--repeats", "1"), 80,
             ("transformers",)),  # without accelerate (the Trainer's need) it reports ours alone
    ]


def dry_parts() -> List[Part]:
    """The same parts on the CPU with tiny shapes: every script, flag and report line is exercised."""
    throughput = ("-m", "benchmarks.pretraining_throughput", "--warmup", "1", "--steps", "2", "--mfu",
                  "--measured_tflops", "1")
    return [
        Part("tests", ("-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-m", "cuda", *cuda_test_files()),
             240, ("pytest",)),
        Part("phase1", (*throughput, "--preset", "dry-tiny-128"), 240, ("transformers",)),
        Part("phase2", (*throughput, "--preset", "dry-tiny-512"), 240, ("transformers",)),
        Part("squad", ("-m", "benchmarks.finetune_squad", "--device", "cpu", "--repeats", "1", "--questions", "24",
                       "--steps", "2", "--batch_size", "4", "--max_seq_length", "192"), 240,
             ("transformers",)),
    ]


ENVIRONMENT_TIMEOUT_S = 25


def budget_s() -> int:
    """The longest a GPU check can take: the sum of its parts' timeouts."""
    return ENVIRONMENT_TIMEOUT_S + sum(part.timeout_s for part in gpu_parts(None))


def cuda_test_files() -> List[str]:
    """Test files holding CUDA-marked tests; collecting only these keeps test modules whose imports
    need packages a bare GPU machine lacks (blingfire, mwparserfromhell, ...) out of the run."""
    found = []
    for path in sorted((REPO_ROOT / "tests").glob("test_*.py")):
        if re.search(r"pytest\.mark\.cuda\b", path.read_text(encoding="utf-8", errors="replace")):
            found.append(str(path.relative_to(REPO_ROOT)))
    return found


class Log:
    """Each line to the console and the log file, with the time since the start."""

    def __init__(self, path: Path):
        self.path = path
        self.start = time.monotonic()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")
        self.lines: List[Tuple[str, str]] = []  # (part, text), for the goals summary
        self.lock = threading.Lock()  # a part's output arrives on a reader thread

    def __call__(self, part: str, text: str) -> None:
        line = f"{time.monotonic() - self.start:6.0f}s [{part}] {text}"
        with self.lock:
            self.lines.append((part, text))
            print(line, flush=True)
            self.file.write(line + "\n")
            self.file.flush()

    def close(self) -> None:
        self.file.close()


def child_environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    env["BERT_DISABLE_PROGRESS"] = "1"
    return env


def missing_modules(names: Sequence[str]) -> List[str]:
    probe = "import importlib.util, sys; print(' '.join(n for n in sys.argv[1:] if importlib.util.find_spec(n) is None))"
    done = subprocess.run([sys.executable, "-c", probe, *names], capture_output=True, text=True, env=child_environment())
    return done.stdout.split()


def run_part(part: Part, log: Log) -> str:
    """Run one part, streaming its lines into the log; its status in a few words."""
    if part.name == "packed" and not PACKED_SCRIPT.exists():
        log(part.name, f"skipped: {PACKED_SCRIPT.relative_to(REPO_ROOT)} is not in this checkout yet")
        return "skipped (no script)"
    if part.name == "tests" and not cuda_test_files():
        log(part.name, "skipped: no test file holds a CUDA-marked test")
        return "skipped (no CUDA tests)"
    missing = missing_modules(part.needs)
    if missing:
        log(part.name, f"skipped: {sys.executable} cannot import {', '.join(missing)}")
        return f"skipped (no {', '.join(missing)})"
    command = [sys.executable, *part.argv]
    log(part.name, f"$ {shlex.join(command)}   (timeout {part.timeout_s} s)")
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=child_environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    reader = threading.Thread(target=lambda: [log(part.name, line.rstrip()) for line in proc.stdout], daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=part.timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(timeout=5)
        log(part.name, f"TIMED OUT after {part.timeout_s} s (its budget); going on")
        return f"timed out ({part.timeout_s} s)"
    reader.join(timeout=5)
    seconds = time.monotonic() - start
    if rc != 0:
        log(part.name, f"FAILED with exit status {rc} after {seconds:.0f} s; going on")
        return f"failed (exit {rc}, {seconds:.0f} s)"
    return f"done ({seconds:.0f} s)"


# -- the environment part (runs in its own process: --environment) --------------------------------------
def describe_environment(dry_run: bool) -> None:
    """Versions and the device; on CUDA, the bf16 matmul rate of this GPU (the MFU's second peak)."""
    import torch

    print(f"python {platform.python_version()} ({sys.executable}), torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}), transformers {module_version('transformers')}, "
          f"accelerate {module_version('accelerate')}, pytest {module_version('pytest')}")
    commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True)
    print(f"repository {REPO_ROOT} at commit {commit.stdout.strip() or 'unknown (no git history here)'}; "
          f"host {platform.node()}; {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    if not torch.cuda.is_available():
        print("no CUDA device visible to torch" + ("" if dry_run else ": nothing to measure"))
        return
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                          "--format=csv,noheader"], capture_output=True, text=True)
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        print(f"GPU {index}: {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs")
    if smi.returncode == 0:
        print(f"nvidia-smi: {smi.stdout.strip()}")
    print(f"bf16 matmul rate measured here: {matmul_tflops():.1f} TFLOP/s (8192^3, best of 3 x 20)")


def module_version(name: str) -> str:
    try:
        from importlib import metadata

        return metadata.version(name)
    except Exception:  # noqa: BLE001 (not installed)
        return "absent"


def matmul_tflops(size: int = 8192, repeats: int = 20) -> float:
    import torch

    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            a @ b
        end.record()
        end.synchronize()
        best = max(best, repeats * 2 * size ** 3 / (start.elapsed_time(end) / 1e3) / 1e12)
    return best


# -- goals --------------------------------------------------------------------------------------------
def goal_lines(lines: Sequence[Tuple[str, str]]) -> List[str]:
    """The figures the goals are about, read back from the parts' own lines, with met / not met."""
    def find(part: str, pattern: str) -> List[Tuple[float, ...]]:
        return [tuple(float(x) for x in m.groups()) for p, text in lines if p == part
                for m in [re.search(pattern, text)] if m]

    out = []
    ours = find("phase1", r": ours (?:compiled )?([\d.]+) seq/s .*?ratio ([\d.]+)x")
    if ours:
        rate, ratio = max(ours)
        met = rate >= 2000 and ratio >= 2
        out.append(f"phase 1: ours {rate:.0f} seq/s, {ratio:.2f}x transformers (goal >= 2,000 seq/s and >= 2x): "
                   f"{'met' if met else 'NOT met'}")
    else:
        out.append("phase 1: no figure")
    packed = find("packed", r"ours\b[^\d]*([\d.]+) samples/s") or find("packed", r"([\d.]+) samples/s")
    out.append(f"phase 2 packed: {max(packed)[0]:.0f} samples/s (goal >= 900): "
               f"{'met' if max(packed)[0] >= 900 else 'NOT met'}" if packed else "phase 2 packed: no figure")
    squad = find("squad", r"squad fine-tuning sequences/s: ours ([\d.]+) vs transformers Trainer \(padded.*?ratio ([\d.]+)x")
    out.append(f"SQuAD fine-tuning: {squad[0][1]:.2f}x the Trainer (goal >= 2x): "
               f"{'met' if squad[0][1] >= 2 else 'NOT met'}" if squad else "SQuAD fine-tuning: no figure")
    return out


def default_log_path() -> Path:
    out = os.environ.get("OUT")
    return Path(out) / "device_check.log" if out else Path.cwd() / "device_check.log"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bash benchmarks/device_check.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry_run", action="store_true", default=os.environ.get("DEVICE_CHECK_DRY") == "1",
                        help="the parts on the CPU with tiny shapes (also: DEVICE_CHECK_DRY=1)")
    parser.add_argument("--log", type=Path, default=None,
                        help="log file (default: $OUT/device_check.log, else ./device_check.log)")
    parser.add_argument("--only", nargs="+", default=None, metavar="PART",
                        help="run only these parts (environment, tests, phase1, phase2, packed, squad)")
    parser.add_argument("--environment", action="store_true", help=argparse.SUPPRESS)  # the environment part
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.environment:
        describe_environment(args.dry_run)
        return 0
    log = Log(args.log or default_log_path())
    wanted: Callable[[str], bool] = lambda name: args.only is None or name in args.only  # noqa: E731
    log("device_check", f"{'dry run on the CPU' if args.dry_run else 'GPU check'}; log {log.path}; "
                        f"budget {budget_s()} s; goals: {GOALS}")
    statuses, matmul = [], None
    if wanted("environment"):
        environment = Part("environment", ("-m", "benchmarks.device_check", "--environment",
                                           *(["--dry_run"] if args.dry_run else [])), ENVIRONMENT_TIMEOUT_S)
        statuses.append(("environment", run_part(environment, log)))
        measured = [m for p, text in log.lines if p == "environment"
                    for m in [re.search(r"matmul rate measured here: ([\d.]+)", text)] if m]
        matmul = float(measured[0].group(1)) if measured else None
        if not args.dry_run and not any("GPU 0:" in text for p, text in log.lines if p == "environment"):
            log("device_check", "no CUDA GPU here: nothing to measure (--dry_run rehearses the parts on the CPU)")
            log.close()
            return 1
    for part in (dry_parts() if args.dry_run else gpu_parts(matmul)):
        if wanted(part.name):
            statuses.append((part.name, run_part(part, log)))
    if args.dry_run and wanted("packed"):
        log("packed", "not rehearsed on the CPU: benchmarks/packing_throughput.py --device cuda runs on a GPU only")
    for name, status in statuses:
        log("summary", f"{name}: {status}")
    for line in goal_lines(log.lines):
        log("goals", line + (" (dry run: CPU figures of tiny models, not the goals' subject)" if args.dry_run else ""))
    log("device_check", f"finished in {time.monotonic() - log.start:.0f} s")
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
