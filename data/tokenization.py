"""Shard text -> token ids, fast: whole blocks of lines per native call, numpy for the bookkeeping.

Input format (the sharding step's output, and the classic create_pretraining_data input): one sentence
per line, a blank line between documents. The result is a ``TokenizedCorpus``: one flat int32 array of
token ids with sentence and document offsets, so the instance builder never touches Python lists of
tokens.

Two tokenizers, chosen by ``--tokenizer`` (default ``auto``):
- ``blingfire``: blingfire's bundled BERT WordPiece models (``bert_base_tok.bin`` for the stock
  uncased vocab, ``bert_base_cased_tok.bin`` for the stock cased vocab), faster than ``tokenizers``
  (docs/performance.md).
  Only used when the vocab file *is* that stock vocab (checked by fingerprint) and the casing matches.
  It gives the reference (BERT ``BasicTokenizer`` + WordPiece) ids for ~99.9% of sentences; the rest
  are words with combining marks (docs/performance.md, "Tokenizers").
- ``wordpiece``: ``tokenizers``' BertWordPieceTokenizer on any vocab, cased or uncased.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import numpy as np

from data.errors import DataPrepError
from data.vocab import Vocab

# vocab fingerprint (data.vocab.Vocab.fingerprint) -> (blingfire model file, lower-cases?)
BLINGFIRE_MODELS = {
    "0f052197aac305fe42f378b5c61554b7bacb34b8be4af83fec2cfdcdffbc9973": ("bert_base_tok.bin", True),
    "9dd1dce5943e4cdda015102aa80afbf7df7b09cb6902ea212276a853acae9789": ("bert_base_cased_tok.bin", False),
}
TOKENIZER_CHOICES = ("auto", "blingfire", "wordpiece")
BLOCK_BYTES = 256 << 10  # text per native call: blingfire needs ~50x this in scratch memory


@dataclass
class TokenizedCorpus:
    """All documents of a shard. Sentence s is tokens[sentence_starts[s]:sentence_starts[s+1]];
    document d is sentences document_starts[d] .. document_starts[d+1]-1. Empty sentences and
    documents are dropped (as the reference does)."""

    tokens: np.ndarray           # int32 [T]
    sentence_starts: np.ndarray  # int64 [S+1]
    document_starts: np.ndarray  # int64 [D+1]

    @property
    def n_documents(self) -> int:
        return len(self.document_starts) - 1

    @property
    def n_sentences(self) -> int:
        return len(self.sentence_starts) - 1


class BlingfireTokenizer:
    name = "blingfire"

    def __init__(self, vocab: Vocab, model_file: str):
        import blingfire  # deferred: only this backend needs it

        self._blingfire = blingfire
        model_path = os.path.join(os.path.dirname(blingfire.__file__), model_file)
        if not os.path.isfile(model_path):
            raise DataPrepError(f"blingfire model {model_path} is missing (reinstall blingfire or use --tokenizer wordpiece)")
        self._model = blingfire.load_model(model_path)
        self._unk = vocab.unk_id
        self.model_file = model_file

    def __del__(self):  # the model lives in native memory: free it with the tokenizer (workers make many)
        model, self._model = getattr(self, "_model", None), None
        if model:
            self._blingfire.free_model(model)

    def encode_block(self, block: bytes, line_starts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """ids int32 [T] of the whole block and the number of tokens on each line, int64 [n_lines]."""
        capacity = len(block) + 1  # a token covers at least one byte; a full buffer means "retry bigger"
        while True:
            ids, starts, _ = self._blingfire.utf8text_to_ids_with_offsets(self._model, block, capacity, self._unk, True)
            if len(ids) < capacity:
                break
            capacity *= 2
        # token offsets are ascending, so each line's first token is found by one binary search per line
        first_token = np.searchsorted(starts, line_starts, side="left")
        counts = np.diff(first_token, append=len(ids)).astype(np.int64)
        return ids.astype(np.int32), counts


class WordPieceTokenizer:
    name = "wordpiece"

    def __init__(self, vocab: Vocab, lowercase: bool):
        from tokenizers import BertWordPieceTokenizer  # deferred: heavy-ish import, only this backend

        self._tokenizer = BertWordPieceTokenizer(str(vocab.path), lowercase=lowercase, strip_accents=lowercase,
                                                 clean_text=True, handle_chinese_chars=True)

    def encode_block(self, block: bytes, line_starts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        lines = block.decode("utf-8").split("\n")[: len(line_starts)]
        encodings = self._tokenizer.encode_batch(lines, add_special_tokens=False)
        counts = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        ids = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int32, count=int(counts.sum()))
        return ids, counts


def make_tokenizer(vocab: Vocab, do_lower_case: bool, choice: str = "auto"):
    """The fastest tokenizer that reproduces ``vocab`` + ``do_lower_case`` (see module docstring)."""
    if choice not in TOKENIZER_CHOICES:
        raise DataPrepError(f"--tokenizer {choice!r}: choose one of {', '.join(TOKENIZER_CHOICES)}")
    model = BLINGFIRE_MODELS.get(vocab.fingerprint)
    blingfire_fits = model is not None and model[1] == bool(do_lower_case)
    if choice == "blingfire" and not blingfire_fits:
        raise DataPrepError(f"--tokenizer blingfire only fits the stock BERT uncased vocab with lower-casing or the "
                            f"stock cased vocab without; {vocab.path} with do_lower_case={int(do_lower_case)} is neither")
    if choice in ("auto", "blingfire") and blingfire_fits:
        return BlingfireTokenizer(vocab, model[0])
    return WordPieceTokenizer(vocab, lowercase=bool(do_lower_case))


def _blocks(paths: Sequence[Path], block_bytes: int) -> Iterator[bytes]:
    """Whole lines, about ``block_bytes`` at a time; each file ends with a document break."""
    for path in paths:
        with open(path, "rb") as handle:
            while True:
                block = handle.read(block_bytes)
                if not block:
                    break
                if not block.endswith(b"\n"):
                    block += handle.readline()
                yield _valid_utf8(block)
        yield b"\n"  # documents never span two input files


def _valid_utf8(block: bytes) -> bytes:
    try:
        block.decode("utf-8")
        return block
    except UnicodeDecodeError:  # undecodable bytes become U+FFFD, as a text reader with errors="replace" would
        return block.decode("utf-8", errors="replace").encode("utf-8")


def _line_starts(block: bytes) -> np.ndarray:
    """Byte offset of each line of ``block`` (a final line without a newline counts)."""
    newlines = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
    starts = np.concatenate(([0], newlines + 1))
    if starts[-1] == len(block):  # the block ends with "\n": no line after it
        starts = starts[:-1]
    return starts.astype(np.int64)


def tokenize_files(paths: Sequence[Path], tokenizer, block_bytes: int = BLOCK_BYTES) -> TokenizedCorpus:
    """Tokenize one-sentence-per-line files (blank line = new document) into a TokenizedCorpus."""
    token_parts: List[np.ndarray] = []
    count_parts: List[np.ndarray] = []
    blank_parts: List[np.ndarray] = []
    for block in _blocks(paths, block_bytes):
        starts = _line_starts(block)
        ids, counts = tokenizer.encode_block(block, starts)
        # A line without tokens is a document break only if it is blank (the reference strips the line);
        # a line of, say, control characters is simply skipped.
        blank = np.zeros(len(starts), dtype=bool)
        ends = np.append(starts[1:], len(block))
        for line in np.flatnonzero(counts == 0):
            blank[line] = not block[starts[line]:ends[line]].decode("utf-8").strip()
        token_parts.append(ids)
        count_parts.append(counts)
        blank_parts.append(blank)
    if not token_parts:
        return TokenizedCorpus(np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(1, np.int64))
    tokens = np.concatenate(token_parts)
    counts = np.concatenate(count_parts)
    blank = np.concatenate(blank_parts)
    document_of_line = np.cumsum(blank)          # blank lines open a new document
    kept = counts > 0                            # sentences with at least one token
    sentence_lengths = counts[kept]
    sentence_documents = document_of_line[kept]
    sentence_starts = np.concatenate(([0], np.cumsum(sentence_lengths))).astype(np.int64)
    # a document starts at every sentence whose document id differs from its predecessor's
    new_document = np.flatnonzero(np.diff(sentence_documents)) + 1
    n_sentences = len(sentence_lengths)
    document_starts = np.concatenate(([0], new_document, [n_sentences])).astype(np.int64)
    if n_sentences == 0:
        document_starts = np.zeros(1, np.int64)
    return TokenizedCorpus(tokens=tokens, sentence_starts=sentence_starts, document_starts=document_starts)
