"""WordPiece vocabularies: load and validate a ``vocab.txt``, or train one from a corpus.

A vocab file is one token per line, the line number being the token id (BERT's format). The HDF5
shards pad with id 0, so ``[PAD]`` must be the first line; ``[CLS]``, ``[SEP]``, ``[MASK]`` and
``[UNK]`` must be present. Training uses the Rust WordPiece trainer of ``tokenizers``.

CLI (own corpus -> own vocab)::

    python -m data.vocab --input corpus_folder_or_files... --output vocab.txt --vocab_size 30522 [--cased]
"""
from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import numpy as np

from data.errors import DataPrepError, run_main

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
CONTINUATION_PREFIX = "##"


@dataclass(frozen=True)
class Vocab:
    path: Path
    tokens: tuple

    @property
    def size(self) -> int:
        return len(self.tokens)

    @cached_property
    def index(self) -> Dict[str, int]:
        """token -> id."""
        return {tok: i for i, tok in enumerate(self.tokens)}

    def id_of(self, token: str) -> int:
        return self.index[token]

    @property
    def pad_id(self) -> int:
        return self.id_of(PAD)

    @property
    def unk_id(self) -> int:
        return self.id_of(UNK)

    @property
    def cls_id(self) -> int:
        return self.id_of(CLS)

    @property
    def sep_id(self) -> int:
        return self.id_of(SEP)

    @property
    def mask_id(self) -> int:
        return self.id_of(MASK)

    @property
    def fingerprint(self) -> str:
        """sha256 of the token list (line endings and a trailing newline do not matter)."""
        return hashlib.sha256("\n".join(self.tokens).encode("utf-8")).hexdigest()

    def continuation_table(self) -> np.ndarray:
        """bool [vocab_size]: True where the token continues a word (``##ing``), for whole-word masking."""
        return np.array([tok.startswith(CONTINUATION_PREFIX) for tok in self.tokens], dtype=bool)


def casing_warning(vocab: Vocab, do_lower_case: bool):
    """A warning line when the text keeps its case but the vocab has no upper-case tokens (or None)."""
    if do_lower_case:
        return None
    upper = sum(tok[:1].isupper() for tok in vocab.tokens if not tok.startswith("["))
    if upper > 0.01 * vocab.size:  # cased vocabs have thousands ("The", "New"); uncased ones a stray symbol
        return None
    return (f"warning: {vocab.path} has no upper-case tokens but --do_lower_case is 0: capitalised words will "
            "mostly become [UNK] (give --do_lower_case 1 for an uncased vocab)")


def load_vocab(path) -> Vocab:
    """Read and check a vocab file; anything that is not a WordPiece vocab raises DataPrepError."""
    path = Path(path)
    if not path.is_file():
        raise DataPrepError(f"vocab file {path} does not exist" if not path.exists()
                            else f"vocab file {path} is not a file")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise DataPrepError(f"vocab file {path} is not a vocab: it is binary, expected one token per line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataPrepError(f"vocab file {path} is not a vocab: not UTF-8 text (byte {err.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    tokens = [line.strip() for line in lines]
    seen: Dict[str, int] = {}
    for number, token in enumerate(tokens, start=1):
        if len(token.split()) != 1:  # empty, or whitespace inside
            raise DataPrepError(f"vocab file {path} is not a vocab: line {number} is {lines[number - 1]!r}, "
                                "expected a single token")
        if token in seen:
            raise DataPrepError(f"vocab file {path} is not a vocab: {token!r} is on lines {seen[token]} and {number}")
        seen[token] = number
    missing = [tok for tok in SPECIAL_TOKENS if tok not in seen]
    if missing:
        raise DataPrepError(f"vocab file {path} is not a BERT vocab: it lacks {', '.join(missing)}")
    if tokens[0] != PAD:
        raise DataPrepError(f"vocab file {path}: {PAD} must be the first line (id 0, the padding id), "
                            f"found {tokens[0]!r}")
    return Vocab(path=path, tokens=tuple(tokens))


def train_vocab(files: Sequence[Path], output, vocab_size: int = 30522, lowercase: bool = True,
                min_frequency: int = 2, limit_alphabet: int = 1000) -> Vocab:
    """Train a WordPiece vocab on text files and write it as ``vocab.txt`` (``[PAD]`` first)."""
    from tokenizers import BertWordPieceTokenizer  # deferred: only vocab training needs the trainer

    files = [str(f) for f in files]
    if not files:
        raise DataPrepError("no text files to train a vocab on")
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise DataPrepError(f"--vocab_size {vocab_size} is too small (at least {len(SPECIAL_TOKENS) + 1})")
    tokenizer = BertWordPieceTokenizer(lowercase=lowercase, strip_accents=lowercase, clean_text=True,
                                       handle_chinese_chars=True)
    tokenizer.train(files, vocab_size=vocab_size, min_frequency=min_frequency, limit_alphabet=limit_alphabet,
                    special_tokens=list(SPECIAL_TOKENS), wordpieces_prefix=CONTINUATION_PREFIX, show_progress=False)
    vocab = tokenizer.get_vocab()  # token -> id; special tokens take ids 0..4 in the order given
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda item: item[1])]
    if len(tokens) <= len(SPECIAL_TOKENS):
        raise DataPrepError(f"no vocab could be trained from {', '.join(files)}: the text is empty")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    tmp.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    os.replace(tmp, output)
    return load_vocab(output)


def text_files(inputs: Iterable) -> List[Path]:
    """Expand files and folders (their ``*.txt`` files, sorted) into a list of text files."""
    found: List[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            in_dir = sorted(p for p in item.iterdir() if p.is_file() and p.suffix == ".txt")
            if not in_dir:
                raise DataPrepError(f"folder {item} holds no .txt files")
            found.extend(in_dir)
        elif item.is_file():
            found.append(item)
        else:
            raise DataPrepError(f"input {item} does not exist")
    return found


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description="Train a BERT WordPiece vocab (vocab.txt) on your own text.")
    parser.add_argument("--input", nargs="+", required=True, help="text files or folders of .txt files")
    parser.add_argument("--output", required=True, help="where to write vocab.txt")
    parser.add_argument("--vocab_size", type=int, default=30522)
    parser.add_argument("--min_frequency", type=int, default=2)
    parser.add_argument("--limit_alphabet", type=int, default=1000,
                        help="most single characters kept (raise it for scripts with many characters, e.g. 8000 for CJK)")
    parser.add_argument("--cased", action="store_true", help="keep case and accents (default: lower-case)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    vocab = train_vocab(text_files(args.input), args.output, vocab_size=args.vocab_size,
                        lowercase=not args.cased, min_frequency=args.min_frequency, limit_alphabet=args.limit_alphabet)
    print(f"wrote {vocab.path}: {vocab.size} tokens ({'cased' if args.cased else 'uncased'})")


if __name__ == "__main__":
    raise SystemExit(run_main(main))
