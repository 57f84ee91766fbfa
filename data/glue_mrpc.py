"""GLUE MRPC (train.tsv, dev.tsv, test.tsv) from the Microsoft Research Paraphrase Corpus files.

Does exactly what GLUE's ``download_glue_data.py --tasks MRPC`` does, so the files are byte-identical
to the ones everybody fine-tunes on:
- train.tsv / dev.tsv: the header of ``msr_paraphrase_train.txt`` (as read, UTF-8 BOM included), then
  every row ``label, id1, id2, s1, s2`` (whitespace-stripped line, tab-split) goes to dev.tsv if its
  ``[id1, id2]`` pair is listed in ``dev_ids.tsv``, else to train.tsv; source order kept.
- test.tsv: header ``index\\t#1 ID\\t#2 ID\\t#1 String\\t#2 String``, rows numbered from 0, label dropped.
Files are written with ``\\n`` line ends, through temporary names.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, List, Tuple

from data.errors import DataPrepError

SOURCES = ("msr_paraphrase_train.txt", "msr_paraphrase_test.txt", "dev_ids.tsv")
TEST_HEADER = "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
# sha256 of the files GLUE's script writes from the published sources (checked after building)
GLUE_MRPC_SHA256 = {
    "train.tsv": "69abcedee3cf738c6ce58d772e43e1b7cdf5b4edee4aceda459c0d9f4e5599f3",
    "dev.tsv": "9e8f284788040f7c9ecde2e1b3c07237c756f926bd9ef8548ef5d34b56f69f17",
    "test.tsv": "aee460ceda833926b8ab2ad952d399f5cf8bc9335cff19afcac03dc449558622",
}


def _rows(path: Path) -> Tuple[str, List[Tuple[int, List[str]]]]:
    """(header line as read, [(line number, 5 fields)]) of an MSR paraphrase file."""
    with open(path, encoding="utf-8") as handle:
        header = handle.readline()
        rows = []
        for number, line in enumerate(handle, start=2):
            fields = line.strip().split("\t")
            if len(fields) != 5:
                raise DataPrepError(f"{path} line {number}: {len(fields)} tab-separated fields, expected 5 "
                                    "(Quality, #1 ID, #2 ID, #1 String, #2 String)")
            rows.append((number, fields))
    if not header:
        raise DataPrepError(f"{path} is empty")
    return header, rows


def _write(path: Path, lines: List[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(lines)
    os.replace(tmp, path)


def build_mrpc(source_dir, output_dir) -> Dict[str, int]:
    """Write train.tsv, dev.tsv and test.tsv into ``output_dir``; returns rows per file."""
    source_dir, output_dir = Path(source_dir), Path(output_dir)
    missing = [name for name in SOURCES if not (source_dir / name).is_file()]
    if missing:
        raise DataPrepError(f"MRPC sources missing in {source_dir}: {', '.join(missing)}")
    with open(source_dir / "dev_ids.tsv", encoding="utf-8") as handle:
        dev_ids = {tuple(line.strip().split("\t")) for line in handle if line.strip()}
    header, train_rows = _rows(source_dir / "msr_paraphrase_train.txt")
    train, dev = [header], [header]
    for _, (label, id1, id2, s1, s2) in train_rows:
        (dev if (id1, id2) in dev_ids else train).append(f"{label}\t{id1}\t{id2}\t{s1}\t{s2}\n")
    _, test_rows = _rows(source_dir / "msr_paraphrase_test.txt")
    test = [TEST_HEADER] + [f"{index}\t{id1}\t{id2}\t{s1}\t{s2}\n"
                            for index, (_, (_, id1, id2, s1, s2)) in enumerate(test_rows)]
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, lines in (("train.tsv", train), ("dev.tsv", dev), ("test.tsv", test)):
        _write(output_dir / name, lines)
    return {"train.tsv": len(train) - 1, "dev.tsv": len(dev) - 1, "test.tsv": len(test) - 1}


def matches_glue(output_dir) -> Dict[str, bool]:
    """Whether each built file is byte-identical to GLUE's."""
    result = {}
    for name, expected in GLUE_MRPC_SHA256.items():
        path = Path(output_dir) / name
        result[name] = path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == expected
    return result
