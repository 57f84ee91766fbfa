"""HDF5 shard reading: layout checks, per-rank file order, prefetch, resumable position, bad input."""
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from data.vocab import load_vocab
from pretraining import dataset as ds
from pretraining.dataset import (DataPosition, ShardError, ShardShape, ShardStream, epoch_file_order,
                                 list_training_files, load_shard, rank_file, slots_per_epoch)
from pretraining.dynamic_masking import restore_original, rule_for_vocab
from pretraining.run_pretraining import main
from pretraining_runs import single_thread  # noqa: F401  (autouse fixture)
from pretraining_shards import VOCAB_SIZE, make_dataset, make_packed_dataset, shard_arrays, write_shard

SHAPE = ShardShape(max_seq_length=32, max_predictions=5, vocab_size=VOCAB_SIZE)


def take(stream, count):
    return [next(stream) for _ in range(count)]


def test_training_files_sorted_and_filtered(tmp_path):
    data = make_dataset(tmp_path / "d", num_files=3)
    (data / "notes.txt").write_text("not a shard")
    assert [p.name for p in list_training_files(data)] == [f"wiki_training_{i}.hdf5" for i in range(3)]


def test_each_rank_reads_its_own_files_once_per_epoch():
    files = [Path(f"f_training_{i}") for i in range(8)]
    for epoch in range(3):
        order = epoch_file_order(files, seed=7, epoch=epoch)
        assert sorted(order) == files
        per_rank = [[rank_file(order, slot, rank, 4) for slot in range(slots_per_epoch(8, 4))] for rank in range(4)]
        flat = [f for reads in per_rank for f in reads]
        assert sorted(flat) == files  # disjoint, and every file read exactly once this epoch
    assert epoch_file_order(files, 7, 0) != epoch_file_order(files, 7, 1)  # reshuffled per epoch
    assert epoch_file_order(files, 7, 0) == epoch_file_order(list(files), 7, 0)  # deterministic


def test_arrays_stay_compact_on_the_host_and_become_int64_on_the_device(tmp_path):
    """Issue 22 finding 9: the host keeps int32/int8 (less to copy); the device copy is widened."""
    data = make_dataset(tmp_path / "d", num_files=1, samples=10)
    arrays = load_shard(data / "wiki_training_0.hdf5", SHAPE)
    assert arrays["input_ids"].dtype == np.int32 and arrays["input_mask"].dtype == np.int8
    host = next(ShardStream(list_training_files(data), SHAPE, batch_size=4, seed=1))
    assert host.input_ids.dtype == torch.int32 and host.segment_ids.dtype == torch.int8
    assert not host.input_ids.is_pinned()  # pinned only for CUDA
    batch = host.to(torch.device("cpu"))
    assert all(t.dtype == torch.int64 for t in (batch.input_ids, batch.segment_ids, batch.input_mask,
                                                 batch.masked_lm_positions, batch.masked_lm_ids,
                                                 batch.next_sentence_labels))
    assert torch.equal(batch.input_ids, host.input_ids.long()) and batch.input_ids.shape == (4, 32)
    assert batch.masked_lm_positions.shape == (4, 5) and batch.next_sentence_labels.shape == (4,)
    # every row of the batch is a row of the file (with its own labels)
    rows = {tuple(r) for r in arrays["input_ids"].tolist()}
    assert all(tuple(r) in rows for r in batch.input_ids.tolist())


def test_int64_files_are_accepted_as_int32(tmp_path):
    arrays = {k: v.astype(np.int64) for k, v in shard_arrays(6, 32, 5, VOCAB_SIZE, 0).items()}
    path = write_shard(tmp_path / "x_training_0.hdf5", arrays)
    assert load_shard(path, SHAPE)["input_ids"].dtype == np.int32


def test_stream_resumes_at_any_batch(tmp_path):
    # sizes 10/7/13 with batch 3: files of 3, 2 and 4 batches, remainders dropped
    data = make_dataset(tmp_path / "d", num_files=3, sizes=[10, 7, 13])
    files = list_training_files(data)
    full = ShardStream(files, SHAPE, 3, seed=5)
    reference = take(full, 20)  # crosses files and an epoch boundary (9 batches per epoch)
    assert full.position.epoch == 2
    for stop in (1, 4, 9, 11):
        first = ShardStream(files, SHAPE, 3, seed=5)
        take(first, stop)
        resumed = ShardStream(files, SHAPE, 3, seed=5, position=DataPosition.from_dict(first.position.to_dict()))
        for expected, got in zip(reference[stop:], take(resumed, 20 - stop)):
            assert torch.equal(expected.input_ids, got.input_ids)
            assert torch.equal(expected.masked_lm_ids, got.masked_lm_ids)
        first.close()
        resumed.close()
    other_seed = take(ShardStream(files, SHAPE, 3, seed=6), 3)
    assert not all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(reference, other_seed))


def test_two_ranks_read_different_samples(tmp_path):
    data = make_dataset(tmp_path / "d", num_files=2, samples=12)
    files = list_training_files(data)
    rank0 = take(ShardStream(files, SHAPE, 4, seed=3, rank=0, world_size=2), 3)
    rank1 = take(ShardStream(files, SHAPE, 4, seed=3, rank=1, world_size=2), 3)
    rows0 = {tuple(r) for b in rank0 for r in b.input_ids.tolist()}
    rows1 = {tuple(r) for b in rank1 for r in b.input_ids.tolist()}
    assert not rows0 & rows1


def test_next_file_is_loaded_in_a_background_thread(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d", num_files=3, samples=8)
    loaded_by = []
    real_load = ds.load_shard

    def recording_load(path, shape):
        loaded_by.append((Path(path).name, threading.current_thread() is threading.main_thread()))
        return real_load(path, shape)

    monkeypatch.setattr(ds, "load_shard", recording_load)
    stream = ShardStream(list_training_files(data), SHAPE, 4, seed=0)
    next(stream)  # first file: loaded, and the second one requested before any training happens
    stream._pending[(0, 1)].result()
    assert len(loaded_by) == 2 and not any(in_main for _, in_main in loaded_by)
    assert loaded_by[1][0] != loaded_by[0][0]
    stream.close()


def test_files_too_small_for_a_batch_are_skipped_or_refused(tmp_path):
    data = make_dataset(tmp_path / "d", num_files=3, sizes=[2, 9, 1])
    stream = ShardStream(list_training_files(data), SHAPE, 4, seed=0)
    assert len({tuple(r) for b in take(stream, 6) for r in b.input_ids.tolist()}) > 0
    small = make_dataset(tmp_path / "s", num_files=2, sizes=[2, 3])
    with pytest.raises(ShardError, match="holds a full micro-batch of 4"):
        take(ShardStream(list_training_files(small), SHAPE, 4, seed=0), 1)


def _broken(tmp_path, mutate):
    arrays = shard_arrays(6, 32, 5, VOCAB_SIZE, 0)
    mutate(arrays)
    folder = tmp_path / "bad"
    folder.mkdir()
    return write_shard(folder / "wiki_training_0.hdf5", arrays)


@pytest.mark.parametrize("mutate, message", [
    (lambda a: a.pop("masked_lm_ids"), "missing dataset\\(s\\) masked_lm_ids"),
    (lambda a: a.update(input_ids=a["input_ids"][:, :16]), "'input_ids' has shape \\[6, 16\\], expected \\[N, 32\\]"),
    (lambda a: a.update(masked_lm_positions=a["masked_lm_positions"][:, :3]), "'masked_lm_positions' has shape"),
    (lambda a: a.update(segment_ids=a["segment_ids"].astype(np.float32)), "'segment_ids' must be an integer"),
    (lambda a: a.update(next_sentence_labels=a["next_sentence_labels"][:4]), "has 4 rows but"),
])
def test_layout_errors_name_the_file(tmp_path, mutate, message):
    path = _broken(tmp_path, mutate)
    with pytest.raises(ShardError, match=message) as err:
        load_shard(path, SHAPE)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_ids_outside_the_vocab_are_refused(tmp_path):
    def too_big(arrays):
        arrays["masked_lm_ids"][2, 0] = VOCAB_SIZE + 3
    path = _broken(tmp_path, too_big)
    with pytest.raises(ShardError, match=f"'masked_lm_ids' holds {VOCAB_SIZE + 3}, outside \\[0, {VOCAB_SIZE}\\)"):
        load_shard(path, SHAPE)


def test_not_an_hdf5_file(tmp_path):
    (tmp_path / "wiki_training_0.hdf5").write_bytes(b"plain text, no HDF5 signature")
    with pytest.raises(ShardError, match="not a readable HDF5 file"):
        load_shard(tmp_path / "wiki_training_0.hdf5", SHAPE)


def _run_args(data, out, *extra):
    return ["--input_dir", str(data), "--config_file", "tiny", "--output_dir", str(out / "ckpt"),
            "--max_seq_length", "32", "--max_predictions_per_seq", "5", "--train_batch_size", "4",
            "--max_steps", "2", "--json-summary", str(out / "dll.json"), "--device", "cpu",
            "--disable_progress_bar", *extra]


def _shards_from_a_bigger_vocab(data):
    make_dataset(data, num_files=1, vocab_size=VOCAB_SIZE + 50)
    (data / "vocab.txt").write_text("\n".join(f"t{i}" for i in range(VOCAB_SIZE)) + "\n")


BAD_INPUTS = {
    # case: (make the data folder, extra flags, message)
    "missing_dir": (lambda data: None, [], "no such directory"),
    "empty_dir": (lambda data: data.mkdir(), [], "no files with 'training' in their name"),
    "wrong_seq_len": (lambda data: make_dataset(data, num_files=1, seq_len=24), [], "expected \\[N, 32\\]"),
    "ids_outside_vocab": (_shards_from_a_bigger_vocab, [], "outside \\[0, 96\\)"),
    "batch_arithmetic": (lambda data: make_dataset(data, num_files=1), ["--gradient_accumulation_steps", "3"],
                         "--train_batch_size 4 is not a multiple of --gradient_accumulation_steps 3"),
    "unknown_preset": (lambda data: make_dataset(data, num_files=1), ["--config_file", "huge"],
                       "--config_file huge: neither a preset"),
    "missing_vocab_file": (lambda data: make_dataset(data, num_files=1), ["--vocab_file", "/nonexistent/vocab.txt"],
                           "--vocab_file /nonexistent/vocab.txt: no such file"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case):
    prepare, extra, message = BAD_INPUTS[case]
    data = tmp_path / "data"
    prepare(data)
    assert main(_run_args(data, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and re.search(message, err[0]), err
    assert not list((tmp_path / "out").glob("ckpt/ckpt_*.pt"))


# -- dynamic masking and the host side of the batch path -------------------------------------------------------
def _by_original_tokens(batches):
    """{a row's original tokens (masks undone): its masked positions} over the batches."""
    found = {}
    for batch in batches:
        positions = batch.masked_lm_positions.numpy()
        original = restore_original(batch.input_ids.numpy(), positions, batch.masked_lm_ids.numpy())
        for row in range(len(original)):
            found[original[row].tobytes()] = positions[row].copy()
    return found


def _rule(data, max_predictions):
    return rule_for_vocab(load_vocab(data / "vocab.txt"), max_predictions)


def test_dynamic_masking_draws_new_masks_each_epoch_from_the_same_tokens(tmp_path):
    data = make_dataset(tmp_path / "d", num_files=1, samples=12, min_length=16, bert_counts=True)
    files, rule = list_training_files(data), _rule(data, 5)
    dynamic = ShardStream(files, SHAPE, 4, seed=1, masking=rule)
    epoch0, epoch1 = _by_original_tokens(take(dynamic, 3)), _by_original_tokens(take(dynamic, 3))
    static = _by_original_tokens(take(ShardStream(files, SHAPE, 4, seed=1), 3))
    assert epoch0.keys() == epoch1.keys() == static.keys() and len(static) == 12  # the same samples and tokens
    assert sum(not np.array_equal(epoch0[row], epoch1[row]) for row in epoch0) >= 9  # new masks each epoch
    assert sum(not np.array_equal(epoch0[row], static[row]) for row in epoch0) >= 9
    again = ShardStream(files, SHAPE, 4, seed=1, masking=rule)
    assert all(np.array_equal(epoch0[row], mask) for row, mask in _by_original_tokens(take(again, 3)).items())


def test_dynamic_masking_of_packed_rows_masks_each_sample_on_its_own(tmp_path):
    unpacked = make_dataset(tmp_path / "u", num_files=1, samples=30, seq_len=64, max_pred=10, min_length=8,
                            bert_counts=True)
    packed = make_packed_dataset(unpacked, tmp_path / "p", 64, 10)
    shape = ShardShape(64, 10, VOCAB_SIZE, samples_per_pack=3)
    stream = ShardStream(list_training_files(packed), shape, 4, seed=2, masking=_rule(unpacked, 10))
    checked = 0
    for batch in take(stream, 4):
        positions, mask = batch.masked_lm_positions.numpy(), batch.input_mask.numpy()
        original = restore_original(batch.input_ids.numpy(), positions, batch.masked_lm_ids.numpy())
        for row in range(len(positions)):
            used = positions[row][positions[row] > 0]
            assert np.all(np.diff(used) > 0)  # ascending, as the packed format stores them
            assert not np.isin(original[row, used], (0, 2, 3)).any()  # never [PAD], [CLS], [SEP]
            for sample in range(1, int(mask[row].max()) + 1):
                length = int((mask[row] == sample).sum())
                mine = int((mask[row, used] == sample).sum())
                assert mine == min(10, max(1, round(0.15 * length)))  # BERT's count, per sample
                checked += 1
    assert checked > 16


def test_cuda_batches_are_pinned_in_the_prefetch_thread(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d", num_files=2, samples=8)
    pinned_in_main = []

    def record_pin(tensor):
        pinned_in_main.append(threading.current_thread() is threading.main_thread())
        return tensor

    monkeypatch.setattr(torch.Tensor, "pin_memory", record_pin)  # a CPU-only torch cannot pin
    take(ShardStream(list_training_files(data), SHAPE, 4, seed=0), 1)
    assert pinned_in_main == []
    stream = ShardStream(list_training_files(data), SHAPE, 4, seed=0, pin_memory=True)
    take(stream, 1)
    stream._pending[(0, 1)].result()
    assert pinned_in_main == [False] * 12  # 6 datasets of 2 files, off the training thread
    stream.close()


def test_the_host_knows_which_unpacked_batches_have_padding(tmp_path):
    full = make_dataset(tmp_path / "full", num_files=1, samples=8, min_length=32)
    assert all(b.input_mask is None for b in take(ShardStream(list_training_files(full), SHAPE, 4, seed=0), 2))
    mixed = make_dataset(tmp_path / "mixed", num_files=1, samples=8, min_length=8)
    batches = take(ShardStream(list_training_files(mixed), SHAPE, 4, seed=0), 2)
    assert all(b.input_mask is not None and (b.input_mask == 0).any() for b in batches)
