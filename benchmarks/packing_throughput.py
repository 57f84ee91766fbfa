"""Packing throughput: the same real samples trained packed and unpacked, our trainer's step, in one run.

    python -m benchmarks.packing_throughput                  # CPU: mini and base at 512/80 and 128/20
    python -m benchmarks.packing_throughput --quick          # a smoke run (tiny model, two cases, 2 steps)
    python -m benchmarks.packing_throughput --device cuda    # BERT-Large bf16 phase 2 (512/80), the GPU check
    python -m benchmarks.packing_throughput --models mini --seq_lens 512 --work_dir /tmp/packing  # a subset

Data (made once under --work_dir: a temporary folder by default; given, it is kept and reused):
  wikipedia  ../shared/data/wikipedia_sample through this project's pipeline: data.prepare text_formatting,
             sharding and create_hdf5_files --pack 1 (create_pretraining_data, dupe_factor 5, then
             data.pack_pretraining_data), at each sequence length.
  histogram  (512 only: no histogram is published at 128) the wikipedia instances at 512, each cut to a
             length drawn from the published length histogram of full English Wikipedia
             (../shared/data/packing/wikipedia_length_histogram_512.json: mean 255.8, 50% padding), then
             packed by data.pack_pretraining_data: Wikipedia's lengths with real tokens.

Measurement: the first packed shard's first ``--packed_steps`` micro-batches of B packs, and exactly the
samples those packs hold, unpacked, in micro-batches of B rows (found by content in the unpacked shard
of the same name; the last unpacked batch may be smaller). Both layouts go through the trainer's own
pieces: shard reading and batch layout (pretraining.dataset), the host -> device copy and widening, the
attention dispatch of the device, CPU kernels on CPU eager, BertForPreTraining with labels, backward,
our LAMB step (pretraining.lamb, as benchmarks/pretraining_throughput.py runs it). Two models from the
same weights; their steps are interleaved in proportion (packed, unpacked, unpacked, packed, ...) so
that load from other processes hits both alike, after one untimed step each. Throughput is samples per
second over the same samples; the line also gives the data's padding fraction and the bound
L / mean length (what packing could give with no padding and free masks), and the samples per pack.
Goals (issue 20): >= 0.9 of the bound at 512 (about 1.8x on the histogram shards), >= 1.0x at 128.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from benchmarks.pretraining_throughput import synchronize, timed
from central.device import autocast, compile_for_mode
from central.host_allocator import retain_freed_memory
from data.hdf5_shards import ShardWriter
from data.packed_format import SampleTable, metadata_path, split_pack
from pretraining.attention import attention_for_device
from pretraining.bert_config import PRESETS, count_vocab
from pretraining.cpu_kernels import use_cpu_kernels
from pretraining.dataset import PretrainingBatch, arrange_batches
from pretraining.lamb import lamb_param_groups, make_lamb
from pretraining.modeling import BertForPreTraining
from pretraining.shard_layout import ShardShape, list_training_files, load_shard

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SHARED = REPO_ROOT.parent / "shared" / "data"
PHASE_SHAPES = {128: 20, 512: 80}  # L -> P


@dataclass(frozen=True)
class Case:
    model: str
    seq_len: int
    source: str          # wikipedia | histogram
    batch: int           # rows (samples or packs) per micro-batch
    packed_steps: int


def cpu_cases(quick: bool) -> List[Case]:
    if quick:
        return [Case("tiny", 128, "wikipedia", 8, 2), Case("tiny", 512, "histogram", 4, 2)]
    batches = {("mini", 128): 32, ("mini", 512): 8, ("base", 128): 8, ("base", 512): 4}
    # Enough steps that the first, slower ones (allocator, caches) do not dominate: with 4 packed steps
    # the same cases read 0.86-0.88 of the bound at 512, with 12-16 steps 0.91-0.97.
    steps = {"mini": 16, "base": 12}
    return [Case(model, seq_len, source, batches[model, seq_len], steps[model])
            for model in ("mini", "base") for seq_len in (512, 128)
            for source in (("histogram", "wikipedia") if seq_len == 512 else ("wikipedia",))]


def cuda_cases() -> List[Case]:
    return [Case("large", 512, source, 32, 8) for source in ("histogram", "wikipedia")]


# ------------------------------------------------------------------------------------------ data
def prepare_wikipedia(shared: Path, work: Path, seq_len: int, quick: bool) -> Path:
    """The unpacked HDF5 folder of wikipedia_sample at seq_len (its packed sibling is <folder>_packed)."""
    from data.prepare import main as prepare

    dupe_factor = 1 if quick else 5
    pattern = f"hdf5_*_seq_len_{seq_len}_*_dupe_factor_{dupe_factor}/wikicorpus_en"
    found = sorted(work.glob(pattern))
    if found and found[0].with_name(found[0].name + "_packed").is_dir():
        return found[0]
    corpus = shared / "wikipedia_sample"
    if quick:  # one of the four files is enough for a smoke run
        corpus = work / "corpus"
        corpus.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared / "wikipedia_sample" / "wiki_00", corpus / "wiki_00")
    os.environ.setdefault("BERT_DISABLE_PROGRESS", "1")
    common = ["--dataset", "wikicorpus_en", "--working_dir", str(work), "--n_processes", str(os.cpu_count() or 1)]
    shards = ["--n_training_shards", "1", "--n_test_shards", "1", "--fraction_test_set", "0.05"]
    if not (work / "formatted_one_article_per_line").is_dir():
        prepare(["--action", "text_formatting", "--input_path", str(corpus), *common])
        prepare(["--action", "sharding", *common, *shards])
    prepare(["--action", "create_hdf5_files", *common, *shards, "--max_seq_length", str(seq_len),
             "--max_predictions_per_seq", str(PHASE_SHAPES[seq_len]), "--vocab_file",
             str(shared / "vocab" / "bert-base-uncased-vocab.txt"), "--do_lower_case", "1",
             "--dupe_factor", str(dupe_factor), "--pack", "1"])
    return sorted(work.glob(pattern))[0]


def cut_to_histogram(table: SampleTable, counts: np.ndarray, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """As many samples as ``table`` holds, with lengths drawn from ``counts`` (samples of each length
    1..L): for each drawn length n, a real sample at least n long (drawn among those) keeps its first n-1
    tokens and ends with its [SEP], and of its masked positions inside as many as BERT's rule gives a
    sample of n tokens, min(P, max(1, round(0.15 n))) (fewer if fewer lie inside), so that packs hold
    as many masked tokens as packs of real samples. Where no sample is long enough, the longest one is
    taken whole."""
    arrays, seq_len = table.arrays, table.arrays["input_ids"].shape[1]
    drawn = rng.choice(np.arange(1, seq_len + 1), size=len(table), p=counts / counts.sum())  # [N]
    by_length = np.argsort(table.lengths, kind="stable")
    first_long_enough = np.searchsorted(table.lengths[by_length], drawn)                    # [N]
    first_long_enough = np.minimum(first_long_enough, len(table) - 1)
    source = by_length[first_long_enough + (rng.random(len(table)) * (len(table) - first_long_enough)).astype(int)]
    own = table.lengths[source]
    lengths = np.maximum(np.minimum(drawn, own), 3)                                # [N]: [CLS] x [SEP] at least
    keep = np.arange(seq_len)[None, :] < lengths[:, None]                           # [N, L]
    out = {name: np.where(keep, arrays[name][source], 0) for name in ("input_ids", "input_mask", "segment_ids")}
    sep = np.take_along_axis(arrays["input_ids"][source], (own - 1)[:, None], axis=1)  # each sample's last [SEP]
    np.put_along_axis(out["input_ids"], (lengths - 1)[:, None], sep, axis=1)
    masked = arrays["masked_lm_positions"][source]
    allowed = np.minimum(masked.shape[1], np.maximum(1, np.rint(0.15 * lengths))).astype(np.int64)  # [N]
    inside = (masked > 0) & (masked < (lengths - 1)[:, None])                      # sorted, so a prefix stays
    inside &= np.cumsum(inside, axis=1) <= allowed[:, None]
    out["masked_lm_positions"] = np.where(inside, masked, 0)
    out["masked_lm_ids"] = np.where(inside, arrays["masked_lm_ids"][source], 0)
    out["next_sentence_labels"] = arrays["next_sentence_labels"][source]
    return out


def histogram_shards(wikipedia_512: Path, histogram_file: Path, work: Path, seed: int = 0) -> Path:
    """The 512 instances cut to the published Wikipedia lengths, written and packed (``<folder>_packed``)."""
    from data.pack_pretraining_data import PackOptions, pack_dataset

    folder = work / "histogram_512" / "wikicorpus_en"
    if folder.with_name("wikicorpus_en_packed").is_dir():
        return folder
    counts = np.asarray(json.loads(histogram_file.read_text(encoding="utf-8"))["counts"], dtype=np.float64)
    rng = np.random.default_rng(seed)
    for shard in list_training_files(wikipedia_512):
        arrays = load_shard(shard, ShardShape(512, 80, 1 << 31))
        cut = cut_to_histogram(SampleTable.from_arrays(arrays), counts, rng)
        with ShardWriter(folder / shard.name, len(cut["input_ids"]), 512, 80) as writer:
            writer.write(0, cut)
    shutil.copyfile(wikipedia_512 / "vocab.txt", folder / "vocab.txt")
    pack_dataset(folder, folder.with_name("wikicorpus_en_packed"), PackOptions(512, 80), show_progress=False)
    return folder


@dataclass
class MatchedBatches:
    packed: List[PretrainingBatch]
    unpacked: List[PretrainingBatch]
    samples: int
    padding: float          # of the whole unpacked source
    mean_length: float
    samples_per_pack: float  # the packer's, over the whole source


def matched_batches(unpacked_dir: Path, seq_len: int, batch: int, packed_steps: int, pin: bool) -> MatchedBatches:
    """``packed_steps`` batches of packs and the same samples unpacked (see the module docstring)."""
    packed_dir = unpacked_dir.with_name(unpacked_dir.name + "_packed")
    predictions = PHASE_SHAPES[seq_len]
    packed_file = list_training_files(packed_dir)[0]
    packs = load_shard(packed_file, ShardShape(seq_len, predictions, 1 << 31, samples_per_pack=3))
    table = SampleTable.from_arrays(load_shard(unpacked_dir / packed_file.name, ShardShape(seq_len, predictions,
                                                                                         1 << 31)))
    count = min(packed_steps, len(packs["input_ids"]) // batch) * batch
    if count == 0:
        raise SystemExit(f"{packed_file}: fewer than {batch} packs")
    row_of = {table.sample(row).key(): row for row in range(len(table))}
    rows = [row_of[sample.key()] for pack in range(count)
            for sample in split_pack({name: values[pack] for name, values in packs.items()})]
    whole = np.asarray(rows[: len(rows) // batch * batch]).reshape(-1, batch)
    unpacked = arrange_batches(table.arrays, whole, pin_memory=pin)
    unpacked_batches = [unpacked.batch(b) for b in range(unpacked.num_batches)]
    if len(rows) % batch:
        rest = arrange_batches(table.arrays, np.asarray(rows[len(whole) * batch:])[None, :], pin_memory=pin)
        unpacked_batches.append(rest.batch(0))
    packed = arrange_batches(packs, np.arange(count).reshape(-1, batch), pin_memory=pin)
    meta = json.loads(metadata_path(packed_dir).read_text(encoding="utf-8"))
    lengths = np.concatenate([SampleTable.from_arrays(load_shard(f, ShardShape(seq_len, predictions, 1 << 31))).lengths
                              for f in list_training_files(unpacked_dir)])
    return MatchedBatches([packed.batch(b) for b in range(packed.num_batches)], unpacked_batches, len(rows),
                          padding=1 - lengths.sum() / (len(lengths) * seq_len), mean_length=float(lengths.mean()),
                          samples_per_pack=float(meta["avg_seq_per_sample"]))


# ------------------------------------------------------------------------------------------ the step
def trainer_step(model: BertForPreTraining, device: torch.device, precision: str, mode: str
                 ) -> Callable[[PretrainingBatch], None]:
    """One optimizer step on one micro-batch, as pretraining/training.py runs it (no accumulation)."""
    optimizer = make_lamb(lamb_param_groups(model), 1e-4, device.type, use_fused=False)
    forward = compile_for_mode(model, device.type, mode)

    def step(batch: PretrainingBatch) -> None:
        inputs, packed_inputs = batch.to(device).model_inputs()
        with autocast(device.type, precision):
            loss = forward(*inputs, **packed_inputs)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def build_models(name: str, vocab_size: int, device: torch.device, precision: str, mode: str
                 ) -> Tuple[List[BertForPreTraining], str]:
    """Two models with the same weights, set up as the trainer sets them up; and the attention line."""
    config = PRESETS[name].with_vocab_size(vocab_size)
    attention, line = attention_for_device(device.type, precision, config.attention_probs_dropout_prob)
    torch.manual_seed(0)
    models = [BertForPreTraining(config).to(device).train() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    for model in models:
        model.kernels = dataclasses.replace(model.kernels, attention=attention)
        if device.type == "cpu" and mode == "eager":
            use_cpu_kernels(model)
    return models, line


def interleaved_times(runs: Sequence[Tuple[Callable, List[PretrainingBatch]]], device: torch.device
                      ) -> List[float]:
    """Total step time of each run over its batches, the runs' steps interleaved in proportion to their
    counts (so that each is equally far along at any time), after one untimed step per batch shape
    (kernels and buffers are set up for each shape once: a smaller last batch must not pay it timed)."""
    for step, batches in runs:
        for first in {tuple(b.input_ids.shape): b for b in batches}.values():
            step(first)
    synchronize(device)
    done, totals = [0] * len(runs), [0.0] * len(runs)
    while any(d < len(b) for d, (_, b) in zip(done, runs)):
        index = min((i for i, (_, b) in enumerate(runs) if done[i] < len(b)),
                    key=lambda i: done[i] / len(runs[i][1]))
        step, batches = runs[index]
        totals[index] += timed(lambda: step(batches[done[index]]), device, time.perf_counter)
        done[index] += 1
    return totals


def run_case(case: Case, data: Path, args, device: torch.device, vocab_size: int) -> str:
    predictions = PHASE_SHAPES[case.seq_len]
    matched = matched_batches(data, case.seq_len, case.batch, case.packed_steps, pin=device.type == "cuda")
    (packed_model, unpacked_model), attention_line = build_models(case.model, vocab_size, device, args.precision,
                                                                  args.mode)
    packed_time, unpacked_time = interleaved_times(
        [(trainer_step(packed_model, device, args.precision, args.mode), matched.packed),
         (trainer_step(unpacked_model, device, args.precision, args.mode), matched.unpacked)], device)
    packed_rate, unpacked_rate = matched.samples / packed_time, matched.samples / unpacked_time
    ratio, bound = packed_rate / unpacked_rate, case.seq_len / matched.mean_length
    goal = "goal >= 0.9 of the bound" if case.seq_len == 512 else "goal >= 1.0x"
    return (f"packing {case.model} L={case.seq_len} P={predictions} {case.source} ({device.type}, {args.precision}, "
            f"{args.mode}, batch {case.batch} rows): {matched.samples} samples in {len(matched.packed)} packed / "
            f"{len(matched.unpacked)} unpacked steps: packed {packed_rate:.2f} samples/s vs unpacked "
            f"{unpacked_rate:.2f} samples/s: ratio {ratio:.2f}x; data padding {100 * matched.padding:.1f}%, "
            f"mean length {matched.mean_length:.1f}, bound L/mean {bound:.2f}x, ratio/bound {ratio / bound:.2f} "
            f"({goal}); {matched.samples_per_pack:.3f} samples per pack; {attention_line}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.packing_throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true",
                        help="CPU smoke run: tiny model, 2 packed steps at 128/20 (wikipedia) and 512/80 (histogram)")
    parser.add_argument("--mode", choices=("eager", "graph"), default="eager",
                        help="graph: torch.compile both models (CUDA: adds a minute or more of compilation)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--models", nargs="+", choices=("mini", "base"), default=None,
                        help="CPU: only these models (default: both)")
    parser.add_argument("--seq_lens", nargs="+", type=int, choices=sorted(PHASE_SHAPES), default=None,
                        help="CPU: only these sequence lengths (default: 512 and 128)")
    parser.add_argument("--packed_steps", type=int, default=None, help="timed packed steps per case")
    parser.add_argument("--batch", type=int, default=None, help="rows per micro-batch (default: per case)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--work_dir", default=None, help="where the shards are made (kept and reused when given)")
    parser.add_argument("--shared_data", default=str(DEFAULT_SHARED),
                        help="the shared data folder (wikipedia_sample, vocab, packing histogram)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    shared = Path(args.shared_data)
    if not (shared / "wikipedia_sample").is_dir():
        print(f"error: --shared_data {shared}: no wikipedia_sample in it", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("packing: skipped (no CUDA device visible to PyTorch on this machine)")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        retain_freed_memory()  # as training on CPU does
    cases = cuda_cases() if args.device == "cuda" else cpu_cases(args.quick)
    if args.device == "cpu" and not args.quick:
        cases = [c for c in cases
                 if c.model in (args.models or [c.model]) and c.seq_len in (args.seq_lens or [c.seq_len])]
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="packing_throughput_"))
    try:
        folders: Dict[Tuple[int, str], Path] = {}
        for case in cases:
            if (case.seq_len, "wikipedia") not in folders:
                folders[case.seq_len, "wikipedia"] = prepare_wikipedia(shared, work, case.seq_len, args.quick)
            if case.source == "histogram" and (512, "histogram") not in folders:
                folders[512, "histogram"] = histogram_shards(
                    folders[512, "wikipedia"], shared / "packing" / "wikipedia_length_histogram_512.json", work)
        vocab_size = count_vocab(shared / "vocab" / "bert-base-uncased-vocab.txt")
        print(f"packing throughput: {torch.get_num_threads()} threads" if device.type == "cpu"
              else f"packing throughput: {torch.cuda.get_device_name(device)}", flush=True)
        for case in cases:
            case = Case(case.model, case.seq_len, case.source, args.batch or case.batch,
                        args.packed_steps or case.packed_steps)
            print(run_case(case, folders[case.seq_len, case.source], args, device, vocab_size), flush=True)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
