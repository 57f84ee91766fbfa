"""sharding: one-document-per-line files -> N training + M test shards, one sentence per line.

1. Every document is split into sentences with blingfire and appended to a temporary segmented file
   (one sentence per line, blank line after the document); only (offset, size, sentence count) per
   document stays in memory.
2. Documents are split into test and training sets (a seeded shuffle, then test takes documents until
   it holds ``fraction_test_set`` of the sentences) and each set is spread over its shards by longest
   document first onto the shard with the fewest sentences so far, which balances sentence counts.
3. The segmented file is read once more and each document's lines are copied to its shard, in input
   order. Shards are written under temporary names and renamed at the end.
"""
from __future__ import annotations

import heapq
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from central.dllog import progress
from data.errors import DataPrepError
from data.layout import shard_name


@dataclass
class ShardingResult:
    training: List[Path]
    test: List[Path]
    documents: int
    sentences: int
    sentences_per_shard: Dict[str, List[int]]


def split_sentences(document: str) -> List[str]:
    import blingfire  # deferred: only sharding needs the sentence splitter

    return [s.strip() for s in blingfire.text_to_sentences(document).split("\n") if s.strip()]


def _segment(inputs: Sequence[Path], segmented: Path, show_progress: bool):
    """Step 1: (offsets, sizes, sentence counts) as int64 arrays, one entry per non-empty document."""
    offsets, sizes, counts = [], [], []
    position = 0
    total = sum(p.stat().st_size for p in inputs)
    bar = progress(total=total, desc="sentence split", unit="B", enabled=show_progress)
    with open(segmented, "wb") as out:
        for path in inputs:
            with open(path, "rb") as handle:
                for raw in handle:
                    bar.update(len(raw))
                    sentences = split_sentences(raw.decode("utf-8", errors="replace"))
                    if not sentences:
                        continue
                    block = ("\n".join(sentences) + "\n\n").encode("utf-8")
                    out.write(block)
                    offsets.append(position)
                    sizes.append(len(block))
                    counts.append(len(sentences))
                    position += len(block)
    bar.close()
    return np.array(offsets, np.int64), np.array(sizes, np.int64), np.array(counts, np.int64)


def _balance(documents: np.ndarray, counts: np.ndarray, n_shards: int) -> np.ndarray:
    """Shard index per document (of ``documents``): longest first onto the emptiest shard."""
    assignment = np.empty(len(documents), dtype=np.int64)
    heap = [(0, shard) for shard in range(n_shards)]
    order = np.argsort(-counts[documents], kind="stable")
    for position in order.tolist():
        load, shard = heapq.heappop(heap)
        assignment[position] = shard
        heapq.heappush(heap, (load + int(counts[documents[position]]), shard))
    return assignment


def _open_file_limit(needed: int) -> int:
    """How many shard files we may hold open at once (raising the soft limit if allowed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            new_soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
            soft = new_soft
        except (ValueError, OSError):
            pass
    return max(1, (needed if soft == resource.RLIM_INFINITY else soft - 64))


def shard_documents(inputs: Sequence[Path], output_dir: Path, dataset: str, n_training_shards: int,
                    n_test_shards: int, fraction_test_set: float, seed: int = 12345,
                    show_progress: bool = True) -> ShardingResult:
    inputs = [Path(p) for p in inputs]
    for path in inputs:
        if not path.is_file():
            raise DataPrepError(f"formatted input {path} does not exist (run --action text_formatting first)")
    if n_training_shards < 1:
        raise DataPrepError(f"--n_training_shards {n_training_shards} must be at least 1")
    if n_test_shards < 0 or not 0.0 <= fraction_test_set < 1.0:
        raise DataPrepError("--n_test_shards must be >= 0 and --fraction_test_set in [0, 1)")
    if (n_test_shards > 0) != (fraction_test_set > 0):
        raise DataPrepError(f"--n_test_shards {n_test_shards} with --fraction_test_set {fraction_test_set}: "
                            "give both > 0 for a test set, or both 0 for none")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    segmented = output_dir / f".{dataset}_segmented.tmp{os.getpid()}"
    temporaries: List[Path] = [segmented]
    try:
        offsets, sizes, counts = _segment(inputs, segmented, show_progress)
        n_documents = len(counts)
        if n_documents == 0:
            raise DataPrepError(f"no sentences in {', '.join(map(str, inputs))}")
        # step 2: test/training split by documents, then balance each split over its shards
        shuffled = np.random.default_rng(seed).permutation(n_documents)
        if n_test_shards:
            reach = np.cumsum(counts[shuffled]) <= fraction_test_set * counts.sum()
            n_test_docs = max(int(reach.sum()), n_test_shards)
        else:
            n_test_docs = 0
        test_docs, training_docs = np.sort(shuffled[:n_test_docs]), np.sort(shuffled[n_test_docs:])
        for split, docs, n_shards in (("training", training_docs, n_training_shards), ("test", test_docs, n_test_shards)):
            if len(docs) < n_shards:
                raise DataPrepError(f"{len(docs)} documents for {n_shards} {split} shards in {', '.join(map(str, inputs))}: "
                                    f"give fewer --n_{split}_shards (every shard needs a document)")
        shard_of = np.full(n_documents, -1, dtype=np.int64)
        shard_of[training_docs] = _balance(training_docs, counts, n_training_shards)
        shard_of[test_docs] = n_training_shards + _balance(test_docs, counts, n_test_shards)
        names = ([shard_name(dataset, "training", i, ".txt") for i in range(n_training_shards)]
                 + [shard_name(dataset, "test", i, ".txt") for i in range(n_test_shards)])
        finals = [output_dir / name for name in names]
        tmps = [final.with_name(f".{final.name}.tmp{os.getpid()}") for final in finals]
        temporaries.extend(tmps)
        # step 3: copy documents to their shards, as many shard files open at once as allowed
        group = _open_file_limit(len(names))
        with open(segmented, "rb") as source:
            for first in range(0, len(names), group):
                handles = {i: open(tmps[i], "wb") for i in range(first, min(first + group, len(names)))}
                try:
                    source.seek(0)
                    for doc in np.flatnonzero((shard_of >= first) & (shard_of < first + group)).tolist():
                        source.seek(int(offsets[doc]))
                        handles[int(shard_of[doc])].write(source.read(int(sizes[doc])))
                finally:
                    for handle in handles.values():
                        handle.close()
        for tmp, final in zip(tmps, finals):
            os.replace(tmp, final)
        per_shard = np.bincount(shard_of, weights=counts, minlength=len(names)).astype(np.int64).tolist()
        return ShardingResult(training=finals[:n_training_shards], test=finals[n_training_shards:],
                              documents=n_documents, sentences=int(counts.sum()),
                              sentences_per_shard={"training": per_shard[:n_training_shards],
                                                   "test": per_shard[n_training_shards:]})
    finally:
        for path in temporaries:
            path.unlink(missing_ok=True)
