"""GLUE task data: read the TSV files exactly as GLUE's download script writes them, then tokenize.

Each task folder holds ``train.tsv``, ``dev.tsv`` and ``test.tsv`` (MNLI: ``dev_matched.tsv`` /
``test_matched.tsv`` and the ``_mismatched`` pair). The files are tab-separated with NO quoting: a
``"`` inside a sentence is a literal character (MRPC has many), so we read with
``csv.QUOTE_NONE``. MRPC's train/dev header starts with a UTF-8 byte-order mark, so every file is
opened as ``utf-8-sig``. A file with a header must have that many columns on every row; a row that
does not is reported with its file and line number (the caller turns it into exit status 2).

One processor per task says which columns hold the texts and the label, and which label values
are allowed. Test files carry no label; their ``index`` column is what a GLUE submission file uses.
"""
from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from central.errors import BadInputError

PathLike = Union[str, Path]
SPLITS = ("train", "dev", "test")


class GlueDataError(BadInputError):
    """A GLUE file is missing or malformed; the message is one line naming the file (and line)."""


@dataclass(frozen=True)
class InputExample:
    guid: str                      # "<split>-<line number in the file>"
    text_a: str
    text_b: Optional[str]          # None for single-sentence tasks (SST-2, CoLA)
    label: Optional[Union[str, float]]  # None on the test split; float for STS-B
    index: Optional[str] = None    # the test file's `index`/`id` column (GLUE submission key)


def read_tsv(path: PathLike, has_header: bool = True) -> Tuple[Optional[List[str]], List[Tuple[int, List[str]]]]:
    """(header, [(line_number, columns), ...]) of a GLUE TSV; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise GlueDataError(f"{path}: file not found")
    header: Optional[List[str]] = None
    rows: List[Tuple[int, List[str]]] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            for columns in reader:
                if not columns or columns == [""]:
                    continue
                if has_header and header is None:
                    header = columns
                    continue
                rows.append((reader.line_num, columns))
    except UnicodeDecodeError as err:
        raise GlueDataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except (OSError, csv.Error) as err:
        raise GlueDataError(f"{path}: cannot read ({err})") from err
    if has_header and header is None:
        raise GlueDataError(f"{path}: empty file (expected a header line)")
    return header, rows


class GlueProcessor:
    """Column layout and label set of one GLUE task. Subclasses only set the class attributes."""

    name = ""
    labels: Optional[Tuple[str, ...]] = None  # None: regression (STS-B)
    metric = "accuracy"                       # a metric name of glue_metrics.task_metrics
    # column indices (negative counts from the end) in train/dev and in test rows
    text_a_col = 0
    text_b_col: Optional[int] = None
    label_col = -1
    test_text_a_col = 1
    test_text_b_col: Optional[int] = None
    test_index_col: Optional[int] = 0
    # file names and whether train/dev files start with a header line (CoLA's do not)
    files = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
    train_dev_header = True
    train_dev_columns: Optional[int] = None   # fixed column count where there is no header

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    def label_id(self, label: Union[str, float]):
        return float(label) if self.is_regression else self.labels.index(label)

    def path(self, data_dir: PathLike, split: str) -> Path:
        return Path(data_dir) / self.files[split]

    def examples(self, data_dir: PathLike, split: str) -> List[InputExample]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        path = self.path(data_dir, split)
        is_test = split == "test"
        header, rows = read_tsv(path, has_header=is_test or self.train_dev_header)
        width = len(header) if header is not None else self.train_dev_columns
        a_col, b_col = (self.test_text_a_col, self.test_text_b_col) if is_test else (self.text_a_col, self.text_b_col)
        examples = []
        for line, columns in rows:
            if width is not None and len(columns) != width:
                raise GlueDataError(f"{path}:{line}: expected {width} tab-separated columns, found {len(columns)}")
            label = None if is_test else self._parse_label(columns[self.label_col], path, line)
            examples.append(InputExample(
                guid=f"{split}-{line}",
                text_a=columns[a_col],
                text_b=None if b_col is None else columns[b_col],
                label=label,
                index=columns[self.test_index_col] if is_test and self.test_index_col is not None else None,
            ))
        if not examples:
            raise GlueDataError(f"{path}: no data rows")
        return examples

    def _parse_label(self, raw: str, path: Path, line: int):
        if self.is_regression:
            try:
                value = float(raw)
            except ValueError:
                value = float("nan")
            if not math.isfinite(value):
                raise GlueDataError(f"{path}:{line}: label {raw!r} is not a number")
            return value
        if raw not in self.labels:
            allowed = ", ".join(self.labels)
            raise GlueDataError(f"{path}:{line}: label {raw!r} is not one of {{{allowed}}}")
        return raw


class MrpcProcessor(GlueProcessor):
    # train/dev: Quality  #1 ID  #2 ID  #1 String  #2 String ; test: index  #1 ID  #2 ID  #1 String  #2 String
    name, labels, metric = "mrpc", ("0", "1"), "acc_and_f1"
    label_col, text_a_col, text_b_col = 0, 3, 4
    test_text_a_col, test_text_b_col = 3, 4


class Sst2Processor(GlueProcessor):
    # train/dev: sentence  label ; test: index  sentence
    name, labels = "sst-2", ("0", "1")
    text_a_col, label_col = 0, 1
    test_text_a_col = 1


class ColaProcessor(GlueProcessor):
    # train/dev have no header: source  label  original-label  sentence ; test: index  sentence
    name, labels, metric = "cola", ("0", "1"), "matthews"
    train_dev_header, train_dev_columns = False, 4
    text_a_col, label_col = 3, 1
    test_text_a_col = 1


class StsbProcessor(GlueProcessor):
    # train/dev: index genre filename year old_index source1 source2 sentence1 sentence2 score ; test lacks score
    name, labels, metric = "sts-b", None, "pearson_and_spearman"
    text_a_col, text_b_col, label_col = 7, 8, 9
    test_text_a_col, test_text_b_col = 7, 8


class QqpProcessor(GlueProcessor):
    # train/dev: id qid1 qid2 question1 question2 is_duplicate ; test: id question1 question2
    name, labels, metric = "qqp", ("0", "1"), "acc_and_f1"
    text_a_col, text_b_col, label_col = 3, 4, 5
    test_text_a_col, test_text_b_col = 1, 2


class MnliProcessor(GlueProcessor):
    # train has 12 columns, dev 16 (five annotator labels): sentence1/2 are columns 8/9, gold_label is last
    name, labels = "mnli", ("contradiction", "entailment", "neutral")
    text_a_col, text_b_col, label_col = 8, 9, -1
    test_text_a_col, test_text_b_col = 8, 9
    files = {"train": "train.tsv", "dev": "dev_matched.tsv", "test": "test_matched.tsv"}


class MnliMismatchedProcessor(MnliProcessor):
    name = "mnli-mm"
    files = {"train": "train.tsv", "dev": "dev_mismatched.tsv", "test": "test_mismatched.tsv"}


class QnliProcessor(GlueProcessor):
    # train/dev: index question sentence label ; test: index question sentence
    name, labels = "qnli", ("entailment", "not_entailment")
    text_a_col, text_b_col, label_col = 1, 2, 3
    test_text_a_col, test_text_b_col = 1, 2


class RteProcessor(QnliProcessor):
    # same layout as QNLI: index sentence1 sentence2 label
    name = "rte"


class WnliProcessor(QnliProcessor):
    name, labels = "wnli", ("0", "1")


PROCESSORS: Dict[str, GlueProcessor] = {
    p.name: p for p in (MrpcProcessor(), Sst2Processor(), ColaProcessor(), StsbProcessor(), QqpProcessor(),
                        MnliProcessor(), MnliMismatchedProcessor(), QnliProcessor(), RteProcessor(), WnliProcessor())
}
TASK_ALIASES = {"sst2": "sst-2", "stsb": "sts-b", "mnli_mm": "mnli-mm", "mnli-mismatched": "mnli-mm"}


def processor_for(task_name: str) -> GlueProcessor:
    name = TASK_ALIASES.get(task_name.lower(), task_name.lower())
    if name not in PROCESSORS:
        raise GlueDataError(f"--task_name {task_name!r} is not a GLUE task this toolkit reads "
                            f"(choose from {', '.join(sorted(PROCESSORS))})")
    return PROCESSORS[name]


# ---- tokenized features and batching ---------------------------------------------------------------


def tokenize_examples(examples: Sequence[InputExample], tokenizer, processor: GlueProcessor,
                      max_seq_length: int) -> List[dict]:
    """One feature per example: {input_ids, token_type_ids, attention_mask[, labels]} as unpadded lists.

    [CLS] a [SEP] (b [SEP]), truncated longest-first to max_seq_length. Padding happens per batch in
    the fine-tuning loop's collator (MRPC pairs average ~53 WordPiece tokens, far below 128).
    Labels are class ids (int), or the score (float) for regression tasks; test features have none.
    """
    texts_a = [e.text_a for e in examples]
    texts_b = None if processor.text_b_col is None else [e.text_b for e in examples]
    encoded = tokenizer(texts_a, texts_b, truncation=True, max_length=max_seq_length, padding=False,
                        return_token_type_ids=True, return_attention_mask=True)
    features = []
    for i, example in enumerate(examples):
        feature = {"input_ids": encoded["input_ids"][i], "token_type_ids": encoded["token_type_ids"][i],
                   "attention_mask": encoded["attention_mask"][i]}
        if example.label is not None:
            feature["labels"] = processor.label_id(example.label)
        features.append(feature)
    return features


class LengthGroupedBatchSampler(torch.utils.data.Sampler):
    """Random batches of similar length: shuffle, cut into mega-batches of ``mega`` batches, sort each
    mega-batch by length, cut into batches, shuffle the batch order (the one short batch stays last).

    With per-batch padding this cuts padded tokens further (MRPC at B=32: mean batch width ~80 -> ~55)
    while each epoch still draws a fresh random grouping. Yields lists of indices (a batch_sampler).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, mega: int = 50):
        self.lengths, self.batch_size, self.seed, self.mega, self.epoch = list(lengths), batch_size, seed, mega, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[List[int]]:
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        span = self.batch_size * self.mega
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=lambda i: self.lengths[i], reverse=True)
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        short = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        rng.shuffle(batches)
        return iter(batches + short)
