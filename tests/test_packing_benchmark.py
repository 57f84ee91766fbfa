"""benchmarks/packing_throughput.py: its --quick mode runs end to end on the shared Wikipedia sample, the
packed and unpacked sides hold the same samples, and the histogram shards follow the histogram."""
import re
from collections import Counter

import numpy as np
import pytest

from benchmarks import packing_throughput as bench
from data.hdf5_shards import ShardWriter
from data.pack_pretraining_data import read_samples
from data.packed_format import SampleTable, split_pack
from pretraining_shards import SEP, shard_arrays

LINE = re.compile(r"packing tiny L=(\d+) P=\d+ (\w+) .*?: (\d+) samples in \d+ packed / \d+ unpacked steps: "
                  r"packed ([\d.]+) samples/s vs unpacked ([\d.]+) samples/s: ratio ([\d.]+)x; data padding "
                  r"([\d.]+)%, mean length ([\d.]+), bound L/mean ([\d.]+)x, ratio/bound ([\d.]+)")


PACK_FIELDS = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
               "next_sentence_positions", "next_sentence_labels", "next_sentence_weights")


@pytest.fixture(scope="module")
def work(shared_data, tmp_path_factory):
    return tmp_path_factory.mktemp("packing_bench")


def test_quick_mode_prints_one_line_per_case(shared_data, work, capsys):
    assert bench.main(["--quick", "--work_dir", str(work), "--shared_data", str(shared_data)]) == 0
    lines = [LINE.search(line) for line in capsys.readouterr().out.splitlines() if line.startswith("packing tiny")]
    assert [(m.group(1), m.group(2)) for m in lines] == [("128", "wikipedia"), ("512", "histogram")]
    for match in lines:
        seq_len, samples = int(match.group(1)), int(match.group(3))
        packed, unpacked, ratio = (float(match.group(i)) for i in (4, 5, 6))
        padding, mean, bound, fraction = (float(match.group(i)) for i in (7, 8, 9, 10))
        assert samples > 8 and packed > 0 and unpacked > 0
        assert ratio == pytest.approx(packed / unpacked, abs=0.01)
        assert bound == pytest.approx(seq_len / mean, abs=0.01) and fraction == pytest.approx(ratio / bound, abs=0.01)
        assert padding == pytest.approx(100 * (1 - mean / seq_len), abs=0.1)
    assert 230 < float(lines[1].group(8)) < 290  # histogram shards: Wikipedia's mean length (255.8), about


def test_both_layouts_hold_the_same_samples(shared_data, work):
    unpacked_dir = bench.prepare_wikipedia(shared_data, work, 128, quick=True)
    matched = bench.matched_batches(unpacked_dir, 128, batch=8, packed_steps=3, pin=False)
    assert len(matched.packed) == 3
    packed = Counter()
    for batch in matched.packed:
        for row in range(batch.input_ids.shape[0]):
            pack = {name: getattr(batch, name)[row].numpy() for name in PACK_FIELDS}
            packed.update(sample.key() for sample in split_pack(pack))
    unpacked = Counter()
    for batch in matched.unpacked:
        arrays = {"input_ids": batch.input_ids.numpy(), "segment_ids": batch.segment_ids.numpy(),
                  "input_mask": np.ones_like(batch.input_ids.numpy(), dtype=np.int8) if batch.input_mask is None
                  else batch.input_mask.numpy(), "masked_lm_positions": batch.masked_lm_positions.numpy(),
                  "masked_lm_ids": batch.masked_lm_ids.numpy(),
                  "next_sentence_labels": batch.next_sentence_labels.numpy()}
        table = SampleTable.from_arrays(arrays)
        unpacked.update(table.sample(row).key() for row in range(len(table)))
    assert sum(packed.values()) == matched.samples > 24 and packed == unpacked


def test_histogram_cuts_follow_the_histogram_and_stay_valid_shards(tmp_path):
    seq_len = 64
    counts = np.zeros(seq_len)
    counts[9:40] = 1.0     # lengths 10..40 ...
    counts[-1] = 2.0       # ... and some full rows
    table = SampleTable.from_arrays(shard_arrays(3000, seq_len, 10, 96, seed=0, min_length=seq_len, bert_counts=True))
    cut = bench.cut_to_histogram(table, counts, np.random.default_rng(0))
    lengths = cut["input_mask"].sum(axis=1)
    expected_mean = (np.arange(1, seq_len + 1) * counts).sum() / counts.sum()
    assert lengths.mean() == pytest.approx(expected_mean, rel=0.03)
    assert set(np.unique(lengths)) <= set(range(10, 41)) | {seq_len}
    assert (cut["input_ids"][np.arange(len(lengths)), lengths - 1] == SEP).all()
    masked = cut["masked_lm_positions"]
    assert ((masked < (lengths - 1)[:, None]) | (masked == 0)).all() and (masked > 0).any(axis=1).mean() > 0.9
    kept = (masked > 0).sum(axis=1)  # BERT's count for the new length at most (packs fit their P+K slots)
    assert (kept <= np.minimum(10, np.maximum(1, np.rint(0.15 * lengths)))).all()
    assert (kept == np.minimum(10, np.maximum(1, np.rint(0.15 * lengths)))).mean() > 0.5
    path = tmp_path / "cut_training_0.hdf5"
    with ShardWriter(path, len(lengths), seq_len, 10) as writer:
        writer.write(0, cut)
    assert np.array_equal(read_samples(path).lengths, lengths)  # the packer accepts every row as a sample
