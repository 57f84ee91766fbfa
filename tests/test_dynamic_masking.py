"""pretraining.dynamic_masking: a fresh masking of static-shard micro-batches, unpacked and packed.

The static rows are made here with the project's own instance code (data.instances.mask_block), the
packed rows by laying such samples end to end as Habana's packer does (input_mask = sample number,
positions offset into the row, P + K slots). The masking rule is written out in the test
(``expected_count``) rather than imported, so a change of the rule in either place shows.
"""
import numpy as np
import pytest

from data.instances import InstanceOptions, mask_block
from pretraining.dynamic_masking import MaskingRule, masking_generator, remask, restore_original

VOCAB, PAD, CLS, SEP, MASK = 1000, 0, 101, 102, 103
L, P = 64, 10
RULE = MaskingRule(vocab_size=VOCAB, mask_id=MASK, special_ids=(PAD, CLS, SEP), max_predictions_per_seq=P)
NO_CONTINUATION = np.zeros(0, dtype=bool)


def expected_count(length: int, maskable: int) -> int:
    """Google BERT's rule: min(P, max(1, round(length * 0.15))), never more than the maskable tokens."""
    return min(P, max(1, int(np.rint(length * 0.15))), maskable)


def original_rows(rows: int, seed: int, min_len: int = 8, max_len: int = L):
    """[CLS] A [SEP] B [SEP] + padding with random word ids (>= 1000 is never special): ids, mask, maskable."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((rows, max_len), dtype=np.int32)
    mask = np.zeros((rows, max_len), dtype=np.int8)
    for r in range(rows):
        length = int(rng.integers(min_len, max_len + 1))
        a_len = int(rng.integers(1, length - 3))
        ids[r, :length] = rng.integers(999, VOCAB, size=length)
        ids[r, 0], ids[r, a_len + 1], ids[r, length - 1] = CLS, SEP, SEP
        mask[r, :length] = 1
    maskable = (mask > 0) & ~np.isin(ids, (PAD, CLS, SEP))
    return ids, mask, maskable


def static_rows(rows: int, seed: int, **kwargs):
    """Rows as a static shard holds them: (masked ids, mask, positions, labels, original ids)."""
    original, mask, maskable = original_rows(rows, seed, **kwargs)
    masked = original.copy()
    positions, labels = mask_block(masked, maskable, mask.sum(axis=1), InstanceOptions(max_predictions_per_seq=P),
                                   VOCAB, MASK, NO_CONTINUATION, np.random.default_rng(seed + 1))
    return masked, mask, positions, labels, original


def pack(samples, width: int):
    """Habana's packed layout for one batch: samples (each from static_rows' row lists) laid end to end."""
    rows = len(samples)
    ids = np.zeros((rows, L), dtype=np.int32)
    mask = np.zeros((rows, L), dtype=np.int32)
    original = np.zeros((rows, L), dtype=np.int32)
    positions = np.zeros((rows, width), dtype=np.int32)
    labels = np.zeros((rows, width), dtype=np.int32)
    for r, row_samples in enumerate(samples):
        start = slot = 0
        for number, (s_ids, s_mask, s_pos, s_lab, s_orig) in enumerate(row_samples, start=1):
            length = int(s_mask.sum())
            ids[r, start:start + length] = s_ids[:length]
            original[r, start:start + length] = s_orig[:length]
            mask[r, start:start + length] = number
            real = s_pos > 0
            count = int(real.sum())
            positions[r, slot:slot + count] = s_pos[real] + start
            labels[r, slot:slot + count] = s_lab[real]
            start, slot = start + length, slot + count
    return ids, mask, positions, labels, original


def packed_batch(rows: int, seed: int, max_samples: int = 3):
    """rows packs of 1..max_samples samples whose lengths sum to at most L."""
    rng = np.random.default_rng(seed)
    masked, mask, positions, labels, original = static_rows(rows * max_samples, seed, min_len=6, max_len=L // max_samples)
    samples, i = [], 0
    for _ in range(rows):
        k = int(rng.integers(1, max_samples + 1))
        samples.append([(masked[j], mask[j], positions[j], labels[j], original[j]) for j in range(i, i + k)])
        i += k
    return pack(samples, P + max_samples)


def check_masking(new_ids, positions, labels, original, mask):
    """The rule, sample by sample: count, no specials, labels = originals, untouched elsewhere, sorted slots."""
    for r in range(len(original)):
        real = positions[r][positions[r] > 0]
        assert np.all(np.diff(real) > 0), "positions ascending and distinct, padding after them"
        assert np.all(positions[r][len(real):] == 0) and np.all(labels[r][len(real):] == 0)
        np.testing.assert_array_equal(labels[r][:len(real)], original[r, real])
        assert not np.isin(original[r, real], (PAD, CLS, SEP)).any(), "a special token was masked"
        untouched = np.ones(L, dtype=bool)
        untouched[real] = False
        np.testing.assert_array_equal(new_ids[r, untouched], original[r, untouched])
        for number in range(1, int(mask[r].max()) + 1):
            in_sample = mask[r] == number
            maskable = in_sample & ~np.isin(original[r], (PAD, CLS, SEP))
            chosen = in_sample[real].sum()
            assert chosen == expected_count(int(in_sample.sum()), int(maskable.sum())), (r, number)


def test_restore_puts_the_original_tokens_back():
    masked, _, positions, labels, original = static_rows(200, seed=1)
    assert not np.array_equal(masked, original)  # the static masking changed something to restore
    restored = restore_original(masked, positions, labels)
    np.testing.assert_array_equal(restored, original)
    assert not np.shares_memory(restored, masked)


def test_unpacked_rows_follow_the_rule_and_leave_inputs_alone():
    masked, mask, positions, labels, original = static_rows(300, seed=2)
    before = [a.copy() for a in (masked, mask, positions, labels)]
    new_ids, new_positions, new_labels = remask(masked, mask, positions, labels, RULE, np.random.default_rng(5))
    for kept, now in zip(before, (masked, mask, positions, labels)):
        np.testing.assert_array_equal(kept, now)
    assert new_ids.dtype == masked.dtype and new_positions.dtype == positions.dtype
    assert new_positions.shape == positions.shape and new_labels.shape == labels.shape
    check_masking(new_ids, new_positions, new_labels, original, mask)
    assert not np.array_equal(new_positions, positions), "a fresh draw, not the shard's masking"


def test_unpacked_rows_draw_exactly_what_the_shard_maker_draws():
    masked, mask, positions, labels, original = static_rows(100, seed=3)
    new_ids, new_positions, new_labels = remask(masked, mask, positions, labels, RULE, np.random.default_rng(9))
    reference = original.copy()
    maskable = (mask > 0) & ~np.isin(original, (PAD, CLS, SEP))
    ref_positions, ref_labels = mask_block(reference, maskable, mask.sum(axis=1), InstanceOptions(max_predictions_per_seq=P),
                                           VOCAB, MASK, NO_CONTINUATION, np.random.default_rng(9))
    np.testing.assert_array_equal(new_ids, reference)
    np.testing.assert_array_equal(new_positions, ref_positions)
    np.testing.assert_array_equal(new_labels, ref_labels)


def test_same_generator_same_masking_other_generator_other_masking():
    masked, mask, positions, labels, _ = static_rows(50, seed=4)
    first = remask(masked, mask, positions, labels, RULE, masking_generator(42, epoch=1, slot=2, rank=0, batch=7))
    again = remask(masked, mask, positions, labels, RULE, masking_generator(42, epoch=1, slot=2, rank=0, batch=7))
    other = remask(masked, mask, positions, labels, RULE, masking_generator(42, epoch=1, slot=2, rank=0, batch=8))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])


def test_replacements_split_80_10_10():
    masked, mask, positions, labels, original = static_rows(4000, seed=6, min_len=L, max_len=L)
    new_ids, new_positions, new_labels = remask(masked, mask, positions, labels, RULE, np.random.default_rng(11))
    real = new_positions > 0
    now = np.take_along_axis(new_ids, new_positions.astype(np.int64), axis=1)[real]
    was = new_labels[real]
    total = real.sum()
    assert total == 4000 * expected_count(L, L - 3)
    as_mask, kept = (now == MASK).mean(), (now == was).mean()
    other = ((now != MASK) & (now != was)).mean()
    # ~40k masked tokens: one standard deviation of each share is <= 0.2 points; allow 1.5 points.
    assert abs(as_mask - 0.8) < 0.015 and abs(kept - 0.1) < 0.015 and abs(other - 0.1) < 0.015, (as_mask, kept, other)
    assert np.unique(now[(now != MASK) & (now != was)]).size > 100, "random replacements spread over the vocab"


def test_packed_rows_mask_every_sample_by_the_rule():
    ids, mask, positions, labels, original = packed_batch(300, seed=7)
    assert (mask.max(axis=1) == 3).sum() > 50 and (mask.max(axis=1) == 1).sum() > 50  # real packs and single rows
    np.testing.assert_array_equal(restore_original(ids, positions, labels), original)
    new_ids, new_positions, new_labels = remask(ids, mask, positions, labels, RULE, np.random.default_rng(13))
    assert new_positions.shape == (300, P + 3) and new_ids.dtype == np.int32
    check_masking(new_ids, new_positions, new_labels, original, mask)
    np.testing.assert_array_equal(restore_original(new_ids, new_positions, new_labels), original)


def test_rows_that_need_more_slots_than_the_layout_has_are_refused():
    ids, mask, positions, labels, _ = packed_batch(40, seed=8)
    wide = (positions > 0).sum(axis=1).max()
    with pytest.raises(ValueError, match="masked slots"):
        remask(ids, mask, positions[:, :wide - 1], labels[:, :wide - 1], RULE, np.random.default_rng(0))


def test_arrays_that_do_not_fit_together_are_refused():
    masked, mask, positions, labels, _ = static_rows(4, seed=9)
    with pytest.raises(ValueError, match="do not fit"):
        restore_original(masked, positions[:, :5], labels)
