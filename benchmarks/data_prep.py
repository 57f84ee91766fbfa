"""Benchmark: the per-shard step (text shard -> HDF5 instances) on ../shared/data/wikipedia_sample.

    python -m benchmarks.data_prep [--repeat 3] [--skip_alternative] [--agreement]

Input: the 153 WikiExtractor articles of wikipedia_sample, formatted and sentence-split with blingfire
by our own text_formatting + sharding (not timed): one shard with everything, and the same text as two
shards for ``--n_processes 2``. Settings: seq 128, max_pred 20, dupe_factor 5, masked_lm_prob 0.15,
uncased vocab (../shared/data/vocab), do_lower_case. Every run is a fresh process, timed from launch to
exit (interpreter start included) with its peak resident memory from the kernel (``wait4``; for the
two-process run, the largest process). Wall time is the best of ``--repeat`` runs.

CPU seconds (user + system, all processes) are printed beside the wall time: on a shared, loaded
machine they show the work done when the wall time mostly shows waiting for a core.

Compared, in the same run:
- ours, one process (python -m data.create_pretraining_data), and two processes over two shards
  (python -m data.prepare --action create_hdf5_files --n_processes 2);
- ours with ``--tokenizer wordpiece`` (the path any non-stock vocab takes);
- the named alternative: benchmarks/reference_pretraining_data.py, the reference's structure (pure-Python
  WordPiece, one instance at a time, h5py default gzip);
- the anchor measured for the reference script on this machine kind: 12.8 s, 520 MB, 45,477 instances.
``--agreement`` also prints how often each tokenizer reproduces BERT's reference WordPiece per sentence
on the whole sample (takes ~1 minute).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared" / "data"
ANCHOR = {"seconds": 12.8, "peak_mb": 520, "instances": 45477}
GOALS = {"one_process_s": 1.3, "two_processes_s": 0.8, "peak_mb": 200}
SETTINGS = ["--max_seq_length", "128", "--max_predictions_per_seq", "20", "--dupe_factor", "5",
            "--masked_lm_prob", "0.15", "--random_seed", "12345"]


def run_measured(argv, env) -> tuple:
    """(wall seconds, peak RSS MB of the largest process, CPU seconds of all its processes) of one command."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    out, err = process.stdout.read().decode(), process.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(argv)}\n{out}{err}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # Linux reports maxrss in KiB


def best_of(repeat: int, argv, env) -> tuple:
    runs = [run_measured(argv, env) for _ in range(repeat)]
    return min(r[0] for r in runs), max(r[1] for r in runs), min(r[2] for r in runs)


def instances_in(paths) -> int:
    total = 0
    for path in paths:
        with h5py.File(path, "r") as handle:
            total += handle["next_sentence_labels"].shape[0]
    return total


def size_mb(paths) -> float:
    return sum(Path(p).stat().st_size for p in paths) / 1e6


def prepare_input(work: Path, env) -> tuple:
    """Formatted + sentence-split wikipedia_sample: one shard, and the same text as two shards."""
    def prep(*argv):
        subprocess.run([sys.executable, "-m", "data.prepare", "--working_dir", str(work), *argv], env=env,
                       check=True, stdout=subprocess.DEVNULL)
    prep("--action", "text_formatting", "--dataset", "wikicorpus_en", "--input_path", str(SHARED / "wikipedia_sample"))
    for n in (1, 2):
        prep("--action", "sharding", "--dataset", "wikicorpus_en", "--n_training_shards", str(n),
             "--n_test_shards", "0", "--fraction_test_set", "0")
    one = work / "sharded_training_shards_1_test_shards_0_fraction_0.0" / "wikicorpus_en" / "wikicorpus_en_training_0.txt"
    return one


def agreement(text: Path) -> None:
    """Share of sentences whose ids equal BERT's reference WordPiece (BertTokenizerLegacy)."""
    from transformers.models.bert import BertTokenizerLegacy

    from data.tokenization import WordPieceTokenizer, make_tokenizer
    from data.vocab import load_vocab

    lines = [line for line in text.read_text(encoding="utf-8").split("\n") if line.strip()]
    block = ("\n".join(lines) + "\n").encode("utf-8")
    import numpy as np
    starts = np.concatenate(([0], np.cumsum([len(line.encode("utf-8")) + 1 for line in lines])[:-1]))
    for case, lower in (("uncased", True), ("cased", False)):
        vocab = load_vocab(SHARED / "vocab" / f"bert-base-{case}-vocab.txt")
        reference = BertTokenizerLegacy(str(vocab.path), do_lower_case=lower)
        expected = [reference.convert_tokens_to_ids(reference.tokenize(line)) for line in lines]
        for tokenizer in (make_tokenizer(vocab, lower), WordPieceTokenizer(vocab, lower)):
            ids, counts = tokenizer.encode_block(block, starts)
            bounds = np.concatenate(([0], np.cumsum(counts)))
            same = sum(ids[bounds[i]:bounds[i + 1]].tolist() == expected[i] for i in range(len(lines)))
            print(f"tokenizer agreement ({case} vocab, {tokenizer.name}): {same}/{len(lines)} sentences "
                  f"= {100 * same / len(lines):.3f}% identical to BERT's reference WordPiece")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant; the best wall time counts")
    parser.add_argument("--skip_alternative", action="store_true", help="skip the slow reference-style run")
    parser.add_argument("--agreement", action="store_true", help="also measure tokenizer agreement (~1 min)")
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), BERT_DISABLE_PROGRESS="1", HF_HUB_OFFLINE="1")
    vocab = str(SHARED / "vocab" / "bert-base-uncased-vocab.txt")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        text = prepare_input(work, env)
        text_mb = text.stat().st_size / 1e6
        print(f"input: wikipedia_sample, {text_mb:.1f} MB of sentence-split text; seq 128, max_pred 20, dupe_factor 5, "
              f"uncased vocab; best of {args.repeat} runs; load average now {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores")
        results = {}
        out = work / "ours.hdf5"
        cmd = [sys.executable, "-m", "data.create_pretraining_data", "--input_file", str(text), "--output_file",
               str(out), "--vocab_file", vocab, "--do_lower_case", "1", *SETTINGS]
        results["ours, 1 process (blingfire)"] = best_of(args.repeat, cmd, env) + (instances_in([out]), size_mb([out]))
        cmd_wp = cmd[:-len(SETTINGS)] + SETTINGS + ["--tokenizer", "wordpiece"]
        results["ours, 1 process (--tokenizer wordpiece)"] = best_of(args.repeat, cmd_wp, env) + (
            instances_in([out]), size_mb([out]))
        two = [sys.executable, "-m", "data.prepare", "--working_dir", str(work), "--action", "create_hdf5_files",
               "--dataset", "wikicorpus_en", "--n_training_shards", "2", "--n_test_shards", "0",
               "--fraction_test_set", "0", "--n_processes", "2", "--vocab_file", vocab, "--do_lower_case", "1", *SETTINGS]
        results["ours, --n_processes 2 (2 shards)"] = best_of(args.repeat, two, env)
        outputs = sorted(work.glob("hdf5_*/wikicorpus_en/*.hdf5"))
        results["ours, --n_processes 2 (2 shards)"] += (instances_in(outputs), size_mb(outputs))
        if not args.skip_alternative:
            ref_out = work / "reference.hdf5"
            ref_cmd = [sys.executable, "-m", "benchmarks.reference_pretraining_data", "--input_file", str(text),
                       "--output_file", str(ref_out), "--vocab_file", vocab, *SETTINGS]
            results["alternative: reference-style pure Python"] = run_measured(ref_cmd, env) + (
                instances_in([ref_out]), size_mb([ref_out]))
        for name, (wall, peak, cpu, count, mb) in results.items():
            print(f"data_prep {name:42s} {wall:6.2f} s wall  {cpu:6.2f} s CPU  {peak:4.0f} MB peak  {count:6d} instances  "
                  f"{text_mb / wall:5.1f} MB/s  output {mb:.1f} MB")
        one = results["ours, 1 process (blingfire)"]
        two_p = results["ours, --n_processes 2 (2 shards)"]
        alt = results.get("alternative: reference-style pure Python")
        if alt:
            print(f"data_prep speed-up vs the reference-style alternative (same run): {alt[0] / one[0]:.1f}x one process, "
                  f"{alt[0] / two_p[0]:.1f}x two processes (wall); {alt[2] / one[2]:.1f}x less CPU time; "
                  f"peak memory {alt[1] / one[1]:.1f}x lower")
        print(f"data_prep vs the reference anchor ({ANCHOR['seconds']} s, {ANCHOR['peak_mb']} MB, "
              f"{ANCHOR['instances']} instances): {ANCHOR['seconds'] / one[0]:.1f}x one process, "
              f"{ANCHOR['seconds'] / two_p[0]:.1f}x two processes")
        verdict = lambda ok: "met" if ok else "MISSED"
        print(f"data_prep goals: <= {GOALS['one_process_s']} s one process: {verdict(one[0] <= GOALS['one_process_s'])}; "
              f"<= {GOALS['two_processes_s']} s two processes: {verdict(two_p[0] <= GOALS['two_processes_s'])}; "
              f"<= {GOALS['peak_mb']} MB peak: {verdict(max(one[1], two_p[1]) <= GOALS['peak_mb'])}")
        if args.agreement:
            agreement(text)


if __name__ == "__main__":
    main()
