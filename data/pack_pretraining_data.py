"""Pack pre-training samples into Habana's packed HDF5 format: up to 3 samples per row, ~2x fewer rows at 512.

Usage (Habana Model-References' command line)::

    python -m data.pack_pretraining_data --input_dir D --output_dir E \
        --max_sequence_length 512 --max_predictions_per_sequence 80 [--max_sequences_per_pack 3] [--seed 42]

D holds unpacked NVIDIA/Habana shards (every file whose name contains ``training``; data.hdf5_shards);
E gets one packed shard per input shard, under the same file name (data.packed_format), D's ``vocab.txt``,
and beside E the metadata ``<E>_metadata.json`` (avg_seq_per_sample, packing_efficiency, ...). L and P
must be the ones the shards were made with. ``python -m data.prepare --action create_hdf5_files --pack``
does this right after making the shards. Packing pays at phase 2 (Wikipedia at 512: mean 256 real tokens,
about 2x fewer rows); at 128 most samples are nearly full (about 1.1-1.2x). It needs a trainer that reads
the packed format; every other tool (NVIDIA's and Habana's unpacked trainers, converters) reads D.

Design:
- Each input shard is packed on its own, from its own length histogram (data.packing_plan: the plan
  depends on L and K only, so a shard's plan costs what a global one would); its samples go into packs
  with samples of the same shard only. Memory is bounded by one shard (times ``--n_processes``) and does
  not grow with the number of shards. The global histogram is the sum of the shards' and gives the
  metadata; no step needs more than one shard's samples. Per-shard plans lose little: 60,000 samples
  drawn from the published Wikipedia histogram pack at 99.9 % real tokens, within 0.1 % of the fewest
  packs possible (the whole 16.3 M-sample histogram: 99.8 %); shards of a few thousand samples lose 1-2 %.
- One output file per input file keeps the file count that the trainer deals out to ranks, writes the
  last (smaller) shard like any other, and lets a bad shard be traced back by name.
- Determinism: shard i uses the generator ``(seed, i)`` (i = index in sorted name order) to deal the
  samples of each length into the plan's packs and to shuffle the packs; the writer compresses with zlib,
  so the same input and seed give byte-identical files, with or without ``--n_processes``.
- Every sample is written exactly once (none dropped); lengths are int64 counts of input_mask.
- Bad input (exit 2, one line): no training shards, L or P unlike the shards', shards that are already
  packed, a row whose mask, tokens or masked positions are inconsistent, an output folder that already
  holds training shards. Layouts are checked before anything is written; if a shard fails later, the
  packed shards this run wrote are removed again (the folder held none before), nothing else is touched.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import h5py
import numpy as np

from central.checkpoint import atomic_write_text
from central.dllog import progress
from central.errors import RuntimeFailure
from data.errors import DataPrepError, run_main
from data.hdf5_shards import CHUNK_ROWS, DEFAULT_GZIP_LEVEL, FEATURES, ShardWriter, temporary_name
from data.packed_format import (PACKED_FEATURES, SampleTable, is_packed, max_masked_per_pack, metadata_path,
                                pack_rows, packed_widths)
from data.packing_plan import MAX_SEQUENCES_PER_PACK, PackPlan, length_histogram, plan_packs

BLOCK_PACKS = 4 * CHUNK_ROWS  # packs built and written at once (bounds the temporaries to ~50 MB at L=512)


class PackingError(DataPrepError):
    """The input cannot be packed as asked; the message names the file (and row) and what is wrong."""


@dataclass
class PackOptions:
    max_sequence_length: int = 512     # L
    max_predictions: int = 80          # P (per original sample)
    max_sequences_per_pack: int = 3    # K
    seed: int = 42
    gzip_level: int = DEFAULT_GZIP_LEVEL


@dataclass
class ShardResult:
    output: Path
    samples: int
    packs: int
    tokens: int
    split_packs: int                    # packs split because their masked tokens exceeded P+K-1
    kinds: Counter = field(default_factory=Counter)  # (lengths...) -> packs


# ---------------------------------------------------------------- input

def training_shards(input_dir: Path) -> List[Path]:
    if not input_dir.is_dir():
        raise PackingError(f"--input_dir {input_dir}: no such folder")
    shards = sorted(p for p in input_dir.iterdir() if "training" in p.name and p.is_file())
    if not shards:
        raise PackingError(f"--input_dir {input_dir}: no files with 'training' in their name (expected the "
                           "HDF5 shards of data.prepare --action create_hdf5_files)")
    return shards


def check_layout(path: Path, options: PackOptions) -> None:
    """Datasets, dtypes and widths of an unpacked shard, from the file's metadata only."""
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise PackingError(f"{path}: not a readable HDF5 file ({err})") from None
    with handle:
        if is_packed(handle.keys()):
            raise PackingError(f"{path} is already packed (it has next_sentence_positions): give the unpacked shards")
        missing = [name for name in FEATURES if name not in handle]
        if missing:
            raise PackingError(f"{path}: missing dataset(s) {', '.join(missing)} (expected {', '.join(FEATURES)})")
        rows = handle["input_ids"].shape[0]
        widths = {"L": (options.max_sequence_length, "--max_sequence_length"),
                  "P": (options.max_predictions, "--max_predictions_per_sequence")}
        for name, (_, width) in FEATURES.items():
            data = handle[name]
            if data.dtype.kind not in "iu":
                raise PackingError(f"{path}: '{name}' must hold integers, not {data.dtype}")
            if data.shape[0] != rows or data.ndim != (2 if width else 1):
                raise PackingError(f"{path}: '{name}' has shape {list(data.shape)}, expected [{rows}"
                                   + (f", {widths[width][0]}]" if width else "]"))
            if width and data.shape[1] != widths[width][0]:
                size, flag = widths[width]
                raise PackingError(f"{path}: '{name}' is [{rows}, {data.shape[1]}] but {flag} is {size}: "
                                   f"give the {flag} the shards were made with ({data.shape[1]})")


def _bad_row(path: Path, rows: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(rows)
    if len(bad):
        raise PackingError(f"{path}: row {bad[0]} {what}" + (f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""))


def read_samples(path: Path) -> SampleTable:
    """Read an unpacked shard (layout already checked) and check that every row is one whole sample."""
    with h5py.File(path, "r") as handle:
        table = SampleTable.from_arrays({name: handle[name][()] for name in FEATURES})
    a, seq_len = table.arrays, table.arrays["input_ids"].shape[1]
    mask = a["input_mask"]
    _bad_row(path, (mask != 0) & (mask != 1), "has an input_mask value other than 0/1 (a packed or corrupt shard?)")
    _bad_row(path, table.lengths == 0, "has an empty input_mask (no tokens)")
    prefix = np.arange(seq_len)[None, :] < table.lengths[:, None]
    _bad_row(path, (prefix != (mask != 0)).any(axis=1), "has an input_mask that is not 1s followed by 0s")
    _bad_row(path, ((a["input_ids"] != 0) & ~prefix).any(axis=1), "has tokens after its input_mask ends: "
             "the sample is longer than its mask says")
    positions = a["masked_lm_positions"]
    counts = table.masked_counts
    listed = np.arange(positions.shape[1])[None, :] < counts[:, None]
    _bad_row(path, (listed != (positions != 0)).any(axis=1), "has masked_lm_positions that are not non-zero "
             "positions followed by zeros")
    _bad_row(path, (listed & (positions >= table.lengths[:, None])).any(axis=1), "masks a position outside its "
             "own tokens (masked_lm_positions beyond its input_mask)")
    _bad_row(path, ((a["masked_lm_ids"] != 0) & ~listed).any(axis=1), "has more masked_lm_ids than "
             "masked_lm_positions")
    _bad_row(path, (a["next_sentence_labels"] != 0) & (a["next_sentence_labels"] != 1),
             "has a next_sentence_label other than 0/1")
    return table


# ---------------------------------------------------------------- packing one shard

def deal_samples(plan: PackPlan, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """int64 [packs, K] sample rows (-1 = none, real ones first): the plan's packs, each slot given a
    random sample of its length, packs in random order."""
    slot_lengths = np.repeat(plan.kinds, plan.counts, axis=0)                  # [packs, K]
    flat = slot_lengths.reshape(-1)
    filled = np.flatnonzero(flat > 0)
    if len(filled) != len(lengths):
        raise RuntimeFailure(f"the packing plan holds {len(filled)} samples, the shard {len(lengths)}")
    by_length = filled[np.argsort(flat[filled], kind="stable")]             # slots by length
    samples = np.lexsort((rng.random(len(lengths)), lengths))                 # samples by length, random within one
    members = np.full(flat.shape, -1, dtype=np.int64)
    members[by_length] = samples
    members = members.reshape(slot_lengths.shape)
    return members[rng.permutation(len(members))]


def split_overflowing(members: np.ndarray, masked_counts: np.ndarray, limit: int) -> Tuple[np.ndarray, int]:
    """Packs whose samples hold more than ``limit`` masked tokens keep the samples that fit; the others
    get packs of their own (denser masking than P per L tokens; never with the stock settings)."""
    totals = np.where(members >= 0, masked_counts[np.maximum(members, 0)], 0).sum(axis=1)
    over = np.flatnonzero(totals > limit)
    extra = []
    for pack in over:
        kept, used = [], 0
        for row in members[pack][members[pack] >= 0]:
            if used + masked_counts[row] <= limit:
                kept.append(row)
                used += masked_counts[row]
            else:
                extra.append(row)
        members[pack] = -1
        members[pack, :len(kept)] = kept
    if extra:
        alone = np.full((len(extra), members.shape[1]), -1, dtype=np.int64)
        alone[:, 0] = extra
        members = np.concatenate([members, alone])
    return members, len(over)


def pack_shard(source: Path, output: Path, index: int, options: PackOptions) -> ShardResult:
    """Pack one unpacked shard into ``output`` (written atomically)."""
    table = read_samples(source)
    L, K = options.max_sequence_length, options.max_sequences_per_pack
    plan = plan_packs(length_histogram(table.lengths, L), K)
    rng = np.random.default_rng([options.seed % 2**32, index])
    members = deal_samples(plan, table.lengths, rng)
    members, split = split_overflowing(members, table.masked_counts, max_masked_per_pack(options.max_predictions, K))
    with ShardWriter(output, len(members), L, options.max_predictions, options.gzip_level, features=PACKED_FEATURES,
                     widths=packed_widths(options.max_predictions, K)) as writer:
        for start in range(0, len(members), BLOCK_PACKS):
            writer.write(start, pack_rows(table, members[start:start + BLOCK_PACKS], options.max_predictions))
    lengths = np.where(members >= 0, table.lengths[np.maximum(members, 0)], 0)
    kinds = Counter(tuple(int(n) for n in sorted(row[row > 0], reverse=True)) for row in lengths)
    return ShardResult(output, len(table), len(members), int(table.lengths.sum()), split, kinds)


def _pack_job(job) -> ShardResult:
    return pack_shard(*job)


# ---------------------------------------------------------------- the dataset

def metadata(results: Sequence[ShardResult], options: PackOptions) -> dict:
    """Habana's metadata keys (top_8_strategies: the 8 most used packs' sample lengths, where Habana gives
    indices into its own strategy list), plus the L, P and K the packs were made with."""
    samples = sum(r.samples for r in results)
    packs = sum(r.packs for r in results)
    tokens = sum(r.tokens for r in results)
    kinds = Counter()
    for result in results:
        kinds.update(result.kinds)
    L = options.max_sequence_length
    return {
        "number_of_sequences_dropped": 0,
        "number_of_strategies_utilized": len(kinds),
        "new_number_of_samples": packs,
        "original_number_of_samples": samples,
        "compression_ratio": 1 - packs / samples if samples else 0.0,
        "expected_speed_up": samples / packs if packs else 1.0,
        "theoretical_speed_up": samples * L / tokens if tokens else 1.0,
        "avg_seq_per_sample": samples / packs if packs else 1.0,
        "padding_tokens_packed_dataset": packs * L - tokens,
        "padding_tokens_original_dataset": samples * L - tokens,
        "packing_efficiency": tokens / (packs * L) if packs else 1.0,
        "top_8_strategies": [list(kind) for kind, _ in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))[:8]],
        "max_sequence_length": L,
        "max_predictions_per_sequence": options.max_predictions,
        "max_sequences_per_pack": options.max_sequences_per_pack,
    }


def check_output_dir(output_dir: Path, input_dir: Path) -> None:
    """Refuse a folder that already holds training shards (they would be mixed with, or replaced by, ours)."""
    if output_dir.resolve() == input_dir.resolve():
        raise PackingError(f"--output_dir {output_dir} is the --input_dir: give another folder")
    if output_dir.is_dir():
        present = sorted(p.name for p in output_dir.iterdir() if "training" in p.name)
        if present:
            raise PackingError(f"--output_dir {output_dir} already holds training shards ({', '.join(present[:3])}"
                               f"{', ...' if len(present) > 3 else ''}): remove them (and "
                               f"{metadata_path(output_dir).name}) or choose another folder; nothing was written")
    elif output_dir.exists():
        raise PackingError(f"--output_dir {output_dir} exists and is not a folder")


def check_options(options: PackOptions, n_processes: int = 1) -> None:
    if not 1 <= options.max_sequences_per_pack <= MAX_SEQUENCES_PER_PACK:
        raise PackingError(f"--max_sequences_per_pack {options.max_sequences_per_pack} must be 1.."
                           f"{MAX_SEQUENCES_PER_PACK} (the packed trainers confine attention for up to 3 samples)")
    if options.max_sequence_length < 1 or options.max_predictions < 1:
        raise PackingError("--max_sequence_length and --max_predictions_per_sequence must be positive")
    if n_processes < 1:
        raise PackingError(f"--n_processes {n_processes} must be at least 1")


def pack_dataset(input_dir, output_dir, options: PackOptions, n_processes: int = 1,
                 show_progress: bool = True) -> dict:
    """Pack every training shard of ``input_dir`` into ``output_dir``; returns the metadata written."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    check_options(options, n_processes)
    shards = training_shards(input_dir)
    check_output_dir(output_dir, input_dir)
    for shard in shards:  # every layout before anything is written
        check_layout(shard, options)
    output_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(shard, output_dir / shard.name, index, options) for index, shard in enumerate(shards)]
    results: List[ShardResult] = []
    bar = progress(total=len(jobs), desc="packing", unit="shard", enabled=show_progress)
    try:
        if n_processes == 1 or len(jobs) == 1:
            for job in jobs:
                results.append(_pack_job(job))
                bar.update()
        else:
            with multiprocessing.get_context("fork").Pool(min(n_processes, len(jobs))) as pool:
                for result in pool.imap_unordered(_pack_job, jobs):
                    results.append(result)
                    bar.update()
    except BaseException:
        for _, output, _, _ in jobs:  # ours only: the folder held no training shards when we started
            output.unlink(missing_ok=True)
            for stale in output.parent.glob(f".{output.name}.tmp*"):
                stale.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    summary = metadata(results, options)
    vocab = input_dir / "vocab.txt"
    if vocab.is_file():
        tmp = temporary_name(output_dir / "vocab.txt")
        shutil.copyfile(vocab, tmp)
        os.replace(tmp, output_dir / "vocab.txt")
    atomic_write_text(metadata_path(output_dir), json.dumps(summary, indent=2, sort_keys=True) + "\n")
    split = sum(r.split_packs for r in results)
    if split:
        print(f"warning: {split} packs held more than P+K-1 = {max_masked_per_pack(options.max_predictions, options.max_sequences_per_pack)} "
              "masked tokens and were split (the shards mask more densely than P per L tokens)")
    return summary


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_dir", required=True, help="folder of unpacked HDF5 shards (files named *training*)")
    parser.add_argument("--output_dir", required=True, help="folder for the packed shards (created; must not hold "
                                                            "training shards); metadata goes to <output_dir>_metadata.json")
    parser.add_argument("--max_sequence_length", type=int, default=512, help="L of the shards (default 512)")
    parser.add_argument("--max_predictions_per_sequence", type=int, default=80,
                        help="P of the shards: masked slots per sample (default 80); packs get P+K slots")
    parser.add_argument("--max_sequences_per_pack", type=int, default=3, help="K: samples per pack, 1..3 (default 3)")
    parser.add_argument("--seed", type=int, default=42, help="deals samples into packs and shuffles them (default 42)")
    parser.add_argument("--n_processes", type=int, default=1, help="shards packed at once (memory: one shard each)")
    parser.add_argument("--gzip_level", type=int, choices=range(0, 10), default=DEFAULT_GZIP_LEVEL, metavar="0-9",
                        help=f"gzip level of the HDF5 datasets (default {DEFAULT_GZIP_LEVEL})")
    parser.add_argument("--disable_progress_bar", action="store_true", help="no progress bar")
    # Habana's packer takes these too; accepted so its command lines run, without effect here
    parser.add_argument("--train_batch_size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def main(argv: Optional[List[str]]) -> None:
    args = build_parser().parse_args(argv)
    options = PackOptions(args.max_sequence_length, args.max_predictions_per_sequence, args.max_sequences_per_pack,
                          args.seed, args.gzip_level)
    started = time.perf_counter()
    summary = pack_dataset(args.input_dir, args.output_dir, options, args.n_processes,
                           show_progress=not args.disable_progress_bar)
    print(f"packed {summary['original_number_of_samples']} samples into {summary['new_number_of_samples']} packs "
          f"of {options.max_sequence_length} in {args.output_dir}: {summary['avg_seq_per_sample']:.3f} samples per pack "
          f"(bound {summary['theoretical_speed_up']:.3f}), {100 * summary['packing_efficiency']:.2f}% real tokens, "
          f"{time.perf_counter() - started:.1f} s; metadata {metadata_path(args.output_dir)}")


if __name__ == "__main__":
    raise SystemExit(run_main(main))
