"""What a pre-training shard must hold, checked before training, and reading one into memory.

Two layouts, each defined once by the data side that writes it (this module only reads the tables):

  unpacked  ``data.hdf5_shards.FEATURES`` (NVIDIA/Habana): one sample per row; widths L, P, one label
  packed    ``data.packed_format.PACKED_FEATURES`` (Habana's packed format): up to K samples per row;
            widths L, P+K, K; ``input_mask`` holds the sample number 1..K of every token

A folder is packed when its shards hold ``next_sentence_positions`` (``data.packed_format.is_packed``),
and K is that dataset's width; a folder that mixes both layouts is refused. ``check_layout`` reads only
the files' metadata (names, dtypes, shapes), so every shard of a run is checked before a device is
touched; ``load_shard`` reads one shard and checks its values (ids inside the vocab, positions inside
the row, sample numbers 0..K). Arrays keep their compact dtypes (int32/int8).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Tuple, Union

import h5py
import numpy as np

from central.errors import BadInputError
from data.hdf5_shards import FEATURES
from data.packed_format import PACKED_FEATURES, PACKED_MARKER, is_packed, metadata_path

PathLike = Union[str, Path]


class ShardError(BadInputError):
    """A data folder or shard cannot be used; the message is one line naming the input."""


@dataclass(frozen=True)
class ShardShape:
    """What every shard of a run must look like."""
    max_seq_length: int        # L
    max_predictions: int       # P (per sample)
    vocab_size: int            # ids must be < this
    type_vocab_size: int = 2   # segment ids must be < this
    samples_per_pack: int = 0  # K of packed shards (the width of next_sentence_positions); 0 = unpacked

    @property
    def packed(self) -> bool:
        return self.samples_per_pack > 0

    @property
    def features(self) -> Mapping[str, tuple]:
        """{dataset: (dtype, width name)} of the layout, as the data side defines it."""
        return PACKED_FEATURES if self.packed else FEATURES

    def widths(self) -> Dict[str, int]:
        """The sizes of the width names the layout's table uses."""
        k = self.samples_per_pack
        return {"L": self.max_seq_length, "P": self.max_predictions, "P+K": self.max_predictions + k, "K": k}


def list_training_files(input_dir: PathLike) -> List[Path]:
    """Sorted shard paths in ``input_dir`` whose name contains 'training'."""
    folder = Path(input_dir)
    if not folder.is_dir():
        raise ShardError(f"--input_dir {folder}: no such directory")
    files = sorted(p for p in folder.iterdir() if "training" in p.name and p.is_file())
    if not files:
        raise ShardError(f"--input_dir {folder}: no files with 'training' in their name (expected HDF5 shards)")
    return files


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ShardError(f"{path}: not a readable HDF5 file ({err})") from None


def detect_samples_per_pack(files: List[Path]) -> int:
    """K when the shards are packed, 0 when not; refuses a folder that holds both layouts."""
    found: Dict[bool, Tuple[Path, int]] = {}
    for path in files:
        with _open(Path(path)) as handle:
            packed = is_packed(handle.keys())
            width = handle[PACKED_MARKER].shape[1] if packed and handle[PACKED_MARKER].ndim == 2 else 0
        found.setdefault(packed, (Path(path), width))
    if len(found) == 2:
        packed_file, unpacked_file = found[True][0], found[False][0]
        raise ShardError(f"{packed_file.parent}: mixes packed shards ({packed_file.name} holds {PACKED_MARKER}) "
                         f"and unpacked ones ({unpacked_file.name}); put each layout in its own folder")
    if True in found:
        path, width = found[True]
        if width < 1:
            raise ShardError(f"{path}: '{PACKED_MARKER}' must have shape [N, K] with K >= 1")
        return width
    return 0


def check_layout(path: PathLike, shape: ShardShape) -> int:
    """Check keys, dtypes and shapes from the file's metadata only; returns the number of rows."""
    path = Path(path)
    features, sizes = shape.features, shape.widths()
    flags = (f"--max_seq_length {shape.max_seq_length}, --max_predictions_per_seq {shape.max_predictions}"
             + (f", {shape.samples_per_pack} samples per pack" if shape.packed else ""))
    with _open(path) as handle:
        if is_packed(handle.keys()) != shape.packed:
            kind = "packed" if shape.packed else "unpacked"
            raise ShardError(f"{path}: not {kind} like the other shards of the folder; put each layout in its "
                             f"own folder")
        missing = [key for key in features if key not in handle]
        if missing:
            raise ShardError(f"{path}: missing dataset(s) {', '.join(missing)} "
                             f"(expected {', '.join(features)})")
        num_rows = None
        for key, (_, width) in features.items():
            data = handle[key]
            if not isinstance(data, h5py.Dataset) or data.dtype.kind not in "iu":
                raise ShardError(f"{path}: '{key}' must be an integer dataset, found {getattr(data, 'dtype', data)}")
            expected = (sizes[width],) if width else ()
            if data.ndim != 1 + len(expected) or tuple(data.shape[1:]) != expected:
                wanted = "[N" + "".join(f", {size}" for size in expected) + "]"
                raise ShardError(f"{path}: '{key}' has shape {list(data.shape)}, expected {wanted} ({flags})")
            if num_rows is None:
                num_rows = data.shape[0]
            elif data.shape[0] != num_rows:
                raise ShardError(f"{path}: '{key}' has {data.shape[0]} rows but 'input_ids' has {num_rows}")
    return int(num_rows)


def _check_range(path: Path, key: str, values: np.ndarray, upper: int, what: str) -> None:
    if values.size == 0:
        return
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= upper:
        bad = high if high >= upper else low
        raise ShardError(f"{path}: '{key}' holds {bad}, outside [0, {upper}) {what}")


def load_shard(path: PathLike, shape: ShardShape) -> Dict[str, np.ndarray]:
    """Read and validate one shard; arrays keep their compact integer dtypes (int32/int8)."""
    path = Path(path)
    check_layout(path, shape)
    arrays = {}
    with _open(path) as handle:
        for key in shape.features:
            try:
                array = handle[key][...]
            except OSError as err:
                raise ShardError(f"{path}: '{key}' cannot be read ({err})") from None
            if array.dtype.itemsize > 4:  # int64 files: the range check below makes int32 safe
                _check_range(path, key, array, 2**31, "(int32)")
                array = array.astype(np.int32)
            arrays[key] = array
    seq_len = shape.max_seq_length
    vocab_hint = f"(vocab_size {shape.vocab_size}: the shards were made with a larger vocab.txt than the model's)"
    inside = "(positions must lie inside the row)"
    checks = [("input_ids", shape.vocab_size, vocab_hint), ("masked_lm_ids", shape.vocab_size, vocab_hint),
              ("masked_lm_positions", seq_len, inside), ("segment_ids", shape.type_vocab_size, "(type_vocab_size)"),
              ("next_sentence_labels", 2, "(a 0/1 label)")]
    if shape.packed:
        k = shape.samples_per_pack
        checks += [("input_mask", k + 1, f"(sample numbers 0..{k})"), ("positions", seq_len, inside),
                   ("next_sentence_positions", seq_len, inside), ("next_sentence_weights", 2, "(a 0/1 weight)")]
    else:
        checks.append(("input_mask", 2, "(a 0/1 mask)"))
    for key, upper, what in checks:
        _check_range(path, key, arrays[key], upper, what)
    return arrays


@dataclass(frozen=True)
class SamplesPerRow:
    """How many samples a row holds on average (1 for unpacked data), and where that figure comes from."""
    value: float
    source: str

    @property
    def line(self) -> str:
        return f"{self.value:.4f} samples per row ({self.source})"


def samples_per_row(input_dir: PathLike, files: List[Path], shape: ShardShape) -> SamplesPerRow:
    """Unpacked: 1. Packed: ``avg_seq_per_sample`` of the packer's metadata JSON beside the folder
    (``<folder>_metadata.json``, as Habana's trainer reads it), else counted from the shards'
    ``next_sentence_weights`` (K numbers per row: cheap next to the shards' tokens)."""
    if not shape.packed:
        return SamplesPerRow(1.0, "unpacked shards")
    meta = metadata_path(input_dir)
    if meta.is_file():
        try:
            value = json.loads(meta.read_text(encoding="utf-8"))["avg_seq_per_sample"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise ShardError(f"{meta}: not the packer's metadata (no readable avg_seq_per_sample: {err})") from None
        if not isinstance(value, (int, float)) or not 1 <= value <= shape.samples_per_pack:
            raise ShardError(f"{meta}: avg_seq_per_sample {value!r} is not a number in [1, {shape.samples_per_pack}]")
        return SamplesPerRow(float(value), f"avg_seq_per_sample of {meta.name}")
    rows = samples = 0
    for path in files:
        with _open(Path(path)) as handle:
            weights = handle["next_sentence_weights"][...]
        rows += weights.shape[0]
        samples += int(np.count_nonzero(weights))
    if samples == 0:
        raise ShardError(f"--input_dir {input_dir}: the packed shards hold no sample (next_sentence_weights all 0)")
    return SamplesPerRow(samples / rows, f"counted in the shards' next_sentence_weights; no {meta.name}")
