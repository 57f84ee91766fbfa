"""Which packs to make: a packing plan computed from a length histogram alone.

A pack is a row of L token slots holding up to K samples end to end. Given how many samples have each
length (``histogram[l - 1]`` = samples of length l), the plan is a list of pack *kinds* (the lengths of the
samples in a pack, longest first) with a count each, holding every sample exactly once in as few packs as
it can. Which sample goes into which pack is decided afterwards (data.pack_pretraining_data): the plan
needs lengths only, so its cost depends on L and K, not on the number of samples.

1. Strategies (Graphcore's NNLSHP, also Habana's and NVIDIA's): every multiset of at most K lengths that
   sums to exactly L (22,102 at L=512, K=3; 1,430 at L=128). A[l-1, j] = how often length l is in strategy j.
2. The cutting-stock linear programme (Gilmore and Gomory): minimise the number of packs sum(x) subject to
   A x >= histogram, x >= 0, solved by HiGHS (``scipy.optimize.linprog``). The integer part of x is kept;
   a slot for which no sample is left stays empty. The programme is solved again for the samples left,
   at most ``MAX_LP_ROUNDS`` times in all (a round that keeps nothing ends it).
3. The samples still left (a few hundred at most) go longest first into the pack with the least room
   that still fits them (best fit; at most K samples per pack), else into a new pack. This also fills
   the room that strategies left empty, which exact-sum strategies cannot describe.

Why a linear programme where NNLSHP solves a weighted non-negative least-squares fit A x ~ histogram:
the least-squares fit is a stand-in for "few packs" (hence its hand-tuned weight on lengths <= 8), and
scipy's NNLS (Lawson-Hanson) works on the dense L x 22,102 matrix, bringing one column into its
solution per step (~500 steps), each step costing O(L x strategies); Habana repeats it for up to 20
rounds, of which all after the third or fourth keep nothing (every entry rounds to 0) yet cost a full
solve each. The programme states the goal itself, is sparse (at most K non-zeros per column), and
HiGHS solves it in a small fraction of the time of one NNLS round. On the published Wikipedia histogram at
512 (16.3 M samples) the plan keeps 99.8 % of the slots for real tokens (NNLSHP: 99.75 %);
tests/test_packing_data.py checks both figures.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, Iterator, Tuple

import numpy as np
import scipy.sparse
from scipy.optimize import linprog

from central.errors import RuntimeFailure

MAX_LP_ROUNDS = 3
MAX_SEQUENCES_PER_PACK = 3  # Habana's trainer confines attention for 3 samples per pack; the LP grows ~L^(K-1)


@dataclass(frozen=True)
class PackPlan:
    """Pack kinds and how many packs of each; every sample of the histogram is in exactly one pack."""

    kinds: np.ndarray    # int64 [n_kinds, K]: sample lengths of a kind of pack, longest first, 0 = no sample
    counts: np.ndarray   # int64 [n_kinds]: packs of that kind
    max_length: int      # L

    @property
    def packs(self) -> int:
        return int(self.counts.sum())

    @property
    def samples(self) -> int:
        return int(((self.kinds > 0).sum(axis=1) * self.counts).sum())

    @property
    def tokens(self) -> int:
        return int((self.kinds.sum(axis=1) * self.counts).sum())

    @property
    def efficiency(self) -> float:
        """Real tokens / token slots of the packs."""
        return self.tokens / max(self.packs * self.max_length, 1)


def length_histogram(lengths: np.ndarray, max_length: int) -> np.ndarray:
    """int64 [L]: how many of ``lengths`` (each 1..L) equal 1, 2, ..., L."""
    return np.bincount(np.asarray(lengths, dtype=np.int64), minlength=max_length + 1)[1:].astype(np.int64)


def _partitions(total: int, largest: int, parts: int) -> Iterator[Tuple[int, ...]]:
    """Non-increasing tuples of 1..``parts`` positive numbers, none above ``largest``, summing to ``total``."""
    if total <= largest:
        yield (total,)
    if parts == 1:
        return
    for first in range(min(total - 1, largest), 0, -1):
        if total - first > first * (parts - 1):  # the rest no longer fits in parts-1 numbers <= first
            break
        for rest in _partitions(total - first, first, parts - 1):
            yield (first,) + rest


@functools.lru_cache(maxsize=4)
def strategies(max_length: int, max_per_pack: int) -> np.ndarray:
    """int64 [S, K]: every multiset of at most K lengths summing to exactly L, longest first, 0-padded."""
    rows = [combo + (0,) * (max_per_pack - len(combo)) for combo in _partitions(max_length, max_length, max_per_pack)]
    return np.array(rows, dtype=np.int64).reshape(-1, max_per_pack)


@functools.lru_cache(maxsize=4)
def strategy_matrix(max_length: int, max_per_pack: int) -> scipy.sparse.csr_matrix:
    """A [L, S]: A[l-1, j] = how many samples of length l strategy j holds (at most K non-zeros per column)."""
    table = strategies(max_length, max_per_pack)
    column, slot = np.nonzero(table)
    ones = np.ones(len(column), dtype=np.float64)
    return scipy.sparse.csr_matrix((ones, (table[column, slot] - 1, column)), shape=(max_length, len(table)))


def _lp_packs(matrix: scipy.sparse.csr_matrix, demand: np.ndarray) -> np.ndarray:
    """float [S]: the fewest (fractional) packs per strategy that give every length its ``demand`` slots."""
    rows = np.flatnonzero(demand)
    sub = matrix[rows]
    useful = np.flatnonzero(sub.getnnz(axis=0))  # strategies holding none of the lengths left cannot help
    result = linprog(np.ones(len(useful)), A_ub=-sub[:, useful].tocsc(), b_ub=-demand[rows].astype(np.float64),
                     bounds=(0, None), method="highs")
    if result.status != 0:
        raise RuntimeFailure(f"the packing linear programme failed: {result.message}")
    packs = np.zeros(matrix.shape[1])
    packs[useful] = result.x
    return packs


def strategy_mixture(histogram: np.ndarray, max_per_pack: int) -> np.ndarray:
    """int64 [S]: packs of each strategy (steps 1-2 of the module docstring); samples left over go to step 3."""
    max_length = len(histogram)
    table = strategies(max_length, max_per_pack)
    mixture = np.zeros(len(table), dtype=np.int64)
    if max_per_pack < 2:  # one sample per pack: no strategy covers a short sample, best fit does it all
        return mixture
    matrix = strategy_matrix(max_length, max_per_pack)
    remaining = np.asarray(histogram, dtype=np.int64).copy()
    for _ in range(MAX_LP_ROUNDS):
        if not remaining.any():
            break
        # HiGHS returns integers to within ~1e-9; without the nudge a 3 read as 2.9999999 would be floored to 2
        whole = np.floor(_lp_packs(matrix, remaining) + 1e-6).astype(np.int64)
        if not whole.any():
            break
        mixture += whole
        remaining = np.maximum(remaining - (matrix @ whole).astype(np.int64), 0)
    return mixture


def _fill_strategies(mixture: np.ndarray, table: np.ndarray, available: np.ndarray) -> Dict[tuple, int]:
    """Pack kinds from the strategies' slots, a slot kept only while samples of its length are left.

    ``available`` (int64 [L]) is used up in place; what is left in it are the samples no slot took."""
    kinds: Dict[tuple, int] = {}
    for index in np.flatnonzero(mixture):
        groups = [(int(mixture[index]), ())]  # (packs, lengths filled so far)
        for length in table[index][table[index] > 0]:
            split = []
            for count, filled in groups:
                taken = min(count, int(available[length - 1]))
                available[length - 1] -= taken
                if taken:
                    split.append((taken, filled + (int(length),)))
                if count > taken:
                    split.append((count - taken, filled))
            groups = split
        for count, filled in groups:
            if filled:
                kinds[filled] = kinds.get(filled, 0) + count
    return kinds


def _best_fit(kinds: Dict[tuple, int], leftovers: np.ndarray, max_length: int, max_per_pack: int) -> None:
    """Step 3: each leftover length, longest first, into the fullest pack it fits (in place)."""
    names = list(kinds)
    counts = np.array([kinds[k] for k in names], dtype=np.int64)
    rooms = np.array([max_length - sum(k) for k in names], dtype=np.int64)
    sizes = np.array([len(k) for k in names], dtype=np.int64)
    for length in leftovers[::-1]:  # leftovers are sorted ascending
        length = int(length)
        fits = (counts > 0) & (sizes < max_per_pack) & (rooms >= length)
        if fits.any():
            chosen = int(np.flatnonzero(fits)[np.argmin(rooms[fits])])
            counts[chosen] -= 1
            kinds[names[chosen]] -= 1
            kind = tuple(sorted(names[chosen] + (length,), reverse=True))
        else:
            kind = (length,)
        if kind in kinds:
            kinds[kind] += 1
            counts[names.index(kind)] += 1
        else:
            kinds[kind] = 1
            names.append(kind)
            counts = np.append(counts, 1)
            rooms = np.append(rooms, max_length - sum(kind))
            sizes = np.append(sizes, len(kind))


def plan_packs(histogram: np.ndarray, max_per_pack: int = MAX_SEQUENCES_PER_PACK) -> PackPlan:
    """The packing plan for ``histogram`` (int [L], entry l-1 = samples of length l), at most K per pack."""
    histogram = np.asarray(histogram, dtype=np.int64)
    max_length = len(histogram)
    if not 1 <= max_per_pack <= MAX_SEQUENCES_PER_PACK:
        raise ValueError(f"max_per_pack must be 1..{MAX_SEQUENCES_PER_PACK}, not {max_per_pack}")
    if (histogram < 0).any():
        raise ValueError("a histogram cannot hold negative counts")
    table = strategies(max_length, max_per_pack)
    available = histogram.copy()
    kinds = _fill_strategies(strategy_mixture(histogram, max_per_pack), table, available)
    leftovers = np.repeat(np.arange(1, max_length + 1), available)
    _best_fit(kinds, leftovers, max_length, max_per_pack)
    used = sorted((kind for kind, count in kinds.items() if count > 0), reverse=True)
    rows = np.zeros((len(used), max_per_pack), dtype=np.int64)
    for row, kind in enumerate(used):
        rows[row, :len(kind)] = kind
    return PackPlan(kinds=rows, counts=np.array([kinds[k] for k in used], dtype=np.int64), max_length=max_length)


def main(argv=None) -> None:
    """``python -m data.packing_plan --histogram H.json [--max_sequences_per_pack 3]``: what packing gives
    for a length histogram ({"counts": [samples of length 1, 2, ..., L]}) and the plan's CPU time."""
    import argparse
    import json
    import time

    parser = argparse.ArgumentParser(description=main.__doc__.split(":")[0])
    parser.add_argument("--histogram", required=True, help='JSON file with "counts": samples of length 1..L')
    parser.add_argument("--max_sequences_per_pack", type=int, default=MAX_SEQUENCES_PER_PACK)
    args = parser.parse_args(argv)
    with open(args.histogram, encoding="utf-8") as handle:
        histogram = np.asarray(json.load(handle)["counts"], dtype=np.int64)
    started = time.process_time()
    plan = plan_packs(histogram, args.max_sequences_per_pack)
    seconds = time.process_time() - started
    mean = plan.tokens / max(plan.samples, 1)
    print(f"L={plan.max_length} K={args.max_sequences_per_pack}: {plan.samples} samples -> {plan.packs} packs, "
          f"{plan.samples / max(plan.packs, 1):.4f} samples per pack (bound L / mean length = {plan.max_length / mean:.4f}), "
          f"{100 * plan.efficiency:.3f}% real tokens, {len(plan.counts)} kinds of pack, plan {seconds:.2f} s CPU")


if __name__ == "__main__":
    main()
