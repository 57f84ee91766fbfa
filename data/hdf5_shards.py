"""The HDF5 pre-training shard format (NVIDIA/Habana layout) and an atomic writer for it.

One file holds N instances: gzip datasets ``input_ids`` int32 [N,L], ``input_mask`` int8 [N,L],
``segment_ids`` int8 [N,L], ``masked_lm_positions`` int32 [N,P], ``masked_lm_ids`` int32 [N,P],
``next_sentence_labels`` int8 [N] (1 = B is a random sentence); zero padding.

The file is written under a temporary name in the target folder and renamed when complete, so an
interrupted run never leaves a shard that looks finished. The writer and reader also serve the packed
format (data.packed_format): they take any ``features`` table of the same shape.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Dict, Mapping, Optional

import h5py
import numpy as np

# name -> (dtype, width): "L" = max_seq_length, "P" = max_predictions_per_seq, None = one value per row
# (other tables name other widths and give their sizes to ShardWriter as ``widths``)
FEATURES: Dict[str, tuple] = {
    "input_ids": (np.int32, "L"),
    "input_mask": (np.int8, "L"),
    "segment_ids": (np.int8, "L"),
    "masked_lm_positions": (np.int32, "P"),
    "masked_lm_ids": (np.int32, "P"),
    "next_sentence_labels": (np.int8, None),
}
CHUNK_ROWS = 1024          # rows per HDF5 chunk; blocks are written in multiples of it
DEFAULT_GZIP_LEVEL = 1     # same gzip (deflate) format as h5py's default level 4, written faster


def deflate_function(level: int):
    """bytes -> zlib stream, which is what HDF5's gzip filter stores (any zlib reads it back).

    The standard library's zlib: its output is a function of the input and level alone, so the same seed
    gives byte-identical files. ISA-L (the ``isal`` package), faster at level 1, was used before and
    dropped: it now and then encoded the same chunk differently from one run to the next (both streams
    decode to the same bytes; seen on a 239-byte ``next_sentence_labels`` chunk, 1 run in ~10)."""
    return lambda data: zlib.compress(data, level)


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


class ShardWriter:
    """``with ShardWriter(path, n, L, P) as w: w.write(start, block)``; renamed to ``path`` on success.

    Chunks are compressed here (``deflate_function``) and handed to HDF5 whole (``write_direct_chunk``),
    so the compressor is ours to choose and pin; HDF5's gzip filter reads the zlib streams back.
    ``start`` must be a multiple of CHUNK_ROWS; only the last block may be shorter (its last chunk is
    zero-padded, as HDF5 stores edge chunks full-size).
    ``block`` has one array per feature, as attributes or as a mapping. ``features`` / ``widths``: another
    table of datasets and the sizes of the widths it names beyond "L" and "P" (the packed format)."""

    def __init__(self, path, n_rows: int, max_seq_length: int, max_predictions: int,
                 gzip_level: int = DEFAULT_GZIP_LEVEL, features: Mapping[str, tuple] = FEATURES,
                 widths: Optional[Mapping[str, int]] = None):
        self.path = Path(path)
        self.tmp = temporary_name(self.path)
        self.n_rows = n_rows
        self.features = dict(features)
        self._deflate = deflate_function(gzip_level)
        widths = {"L": max_seq_length, "P": max_predictions, **(widths or {})}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self.tmp, "w")
        self._datasets = {}
        for name, (dtype, width) in self.features.items():
            shape = (n_rows, widths[width]) if width else (n_rows,)
            chunks = (min(CHUNK_ROWS, max(n_rows, 1)),) + shape[1:]
            maxshape = None if n_rows else (None,) + shape[1:]  # HDF5 takes a chunk larger than 0 rows only so
            self._datasets[name] = self._file.create_dataset(
                name, shape=shape, dtype=dtype, chunks=chunks, maxshape=maxshape, compression="gzip",
                compression_opts=gzip_level, track_times=False)  # no timestamps: the same seed gives byte-identical files

    def write(self, start: int, block) -> None:
        for name, (dtype, _) in self.features.items():
            dataset = self._datasets[name]
            values = block[name] if isinstance(block, Mapping) else getattr(block, name)
            values = np.ascontiguousarray(values, dtype=dtype)
            chunk_rows = dataset.chunks[0]
            if start % chunk_rows:
                raise ValueError(f"block start {start} is not a multiple of the chunk size {chunk_rows}")
            for offset in range(0, len(values), chunk_rows):
                chunk = values[offset:offset + chunk_rows]
                if len(chunk) < chunk_rows:
                    padded = np.zeros((chunk_rows,) + chunk.shape[1:], dtype=dtype)
                    padded[:len(chunk)] = chunk
                    chunk = padded
                origin = (start + offset,) + (0,) * (chunk.ndim - 1)
                dataset.id.write_direct_chunk(origin, self._deflate(chunk.tobytes()))

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def read_shard(path, features: Mapping[str, tuple] = FEATURES) -> Dict[str, np.ndarray]:
    """All datasets of a shard as numpy arrays (for tests and checks)."""
    with h5py.File(path, "r") as handle:
        return {name: handle[name][()] for name in features}
