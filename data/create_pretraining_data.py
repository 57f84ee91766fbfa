"""Text shard(s) -> one HDF5 file of BERT pre-training instances (masked LM + next sentence).

Keeps the reference script's command line, so existing scripts keep working::

    python -m data.create_pretraining_data --input_file shard.txt --output_file shard.hdf5 \
        --vocab_file vocab.txt --do_lower_case --max_seq_length 128 --max_predictions_per_seq 20 \
        --masked_lm_prob 0.15 --random_seed 12345 --dupe_factor 5

Differences: ``--do_lower_case`` is honoured (``--do_lower_case 0`` keeps case; the reference could not
turn it off), ``--whole_word_masking`` is available, and it is much faster: whole blocks of text per
native tokenizer call and numpy over thousands of instances at once instead of Python per token (see
data.tokenization and data.instances; the figures: docs/performance.md).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

import numpy as np

from data.errors import DataPrepError, run_main
from data.hdf5_shards import CHUNK_ROWS, DEFAULT_GZIP_LEVEL, ShardWriter
from data.instances import InstanceOptions, build_block, pair_spans, truncate_spans
from data.tokenization import TOKENIZER_CHOICES, make_tokenizer, tokenize_files
from data.vocab import Vocab, casing_warning, load_vocab, text_files

BLOCK_ROWS = 4 * CHUNK_ROWS  # instances packed and masked at once: bounds memory (~10 MB per block at L=128)


@dataclass
class ShardStats:
    output: Path
    instances: int
    documents: int
    sentences: int
    tokens: int
    input_bytes: int
    seconds: float
    tokenizer: str


def create_shard(input_paths: Sequence[Path], output_file, vocab: Vocab, options: InstanceOptions,
                 random_seed: int = 12345, do_lower_case: bool = True, tokenizer: str = "auto",
                 gzip_level: int = DEFAULT_GZIP_LEVEL) -> ShardStats:
    """Tokenize ``input_paths``, build the instances and write ``output_file`` atomically."""
    started = time.perf_counter()
    options.validate()
    backend = make_tokenizer(vocab, do_lower_case, tokenizer)
    corpus = tokenize_files(input_paths, backend)
    if corpus.n_documents == 0:
        raise DataPrepError(f"{', '.join(str(p) for p in input_paths)} holds no text to make instances from")
    walk_rng = random.Random(random_seed)
    rng = np.random.default_rng(random_seed)
    spans = pair_spans(corpus, options, walk_rng)
    spans = truncate_spans(spans.take(rng.permutation(len(spans))), options.max_num_tokens, rng)
    continuation = vocab.continuation_table() if options.whole_word_masking else np.zeros(0, bool)
    with ShardWriter(output_file, len(spans), options.max_seq_length, options.max_predictions_per_seq,
                     gzip_level) as writer:
        for start in range(0, len(spans), BLOCK_ROWS):
            rows = np.arange(start, min(start + BLOCK_ROWS, len(spans)))
            block = build_block(corpus.tokens, spans.take(rows), options, vocab.size, vocab.cls_id, vocab.sep_id,
                                vocab.mask_id, continuation, rng)
            writer.write(start, block)
    return ShardStats(output=Path(output_file), instances=len(spans), documents=corpus.n_documents,
                      sentences=corpus.n_sentences, tokens=len(corpus.tokens),
                      input_bytes=sum(Path(p).stat().st_size for p in input_paths),
                      seconds=time.perf_counter() - started, tokenizer=backend.name)


def input_files(spec: str) -> List[Path]:
    """``--input_file``: a file, a folder (its .txt files), or a comma-separated list of those."""
    found = text_files(part.strip() for part in spec.split(",") if part.strip())
    if not found:
        raise DataPrepError("--input_file is empty")
    return found


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "y", "t"):
        return True
    if value in ("0", "false", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected 0/1/true/false, got {text!r}")


def add_instance_arguments(parser: argparse.ArgumentParser, dupe_factor_default: int,
                           max_seq_length_default: int) -> None:
    """Options shared with ``python -m data.prepare --action create_hdf5_files`` (same names, same meaning)."""
    parser.add_argument("--vocab_file", default=None, help="WordPiece vocab.txt")
    parser.add_argument("--do_lower_case", type=parse_bool, nargs="?", const=True, default=True,
                        help="lower-case and strip accents (default 1; give 0 for a cased vocab)")
    parser.add_argument("--max_seq_length", type=int, default=max_seq_length_default)
    parser.add_argument("--max_predictions_per_seq", type=int, default=20)
    parser.add_argument("--masked_lm_prob", type=float, default=0.15)
    parser.add_argument("--short_seq_prob", type=float, default=0.1)
    parser.add_argument("--dupe_factor", type=int, default=dupe_factor_default)
    parser.add_argument("--random_seed", type=int, default=12345)
    parser.add_argument("--whole_word_masking", "--do_whole_word_mask", type=parse_bool, nargs="?", const=True,
                        default=False, help="mask whole words (all ## pieces of a word together)")
    parser.add_argument("--tokenizer", choices=TOKENIZER_CHOICES, default="auto",
                        help="auto: blingfire for the stock BERT vocabs, tokenizers' WordPiece otherwise")
    parser.add_argument("--gzip_level", type=int, choices=range(0, 10), default=DEFAULT_GZIP_LEVEL, metavar="0-9",
                        help=f"gzip level of the HDF5 datasets (default {DEFAULT_GZIP_LEVEL})")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def instance_options(args) -> InstanceOptions:
    options = InstanceOptions(max_seq_length=args.max_seq_length, max_predictions_per_seq=args.max_predictions_per_seq,
                              masked_lm_prob=args.masked_lm_prob, short_seq_prob=args.short_seq_prob,
                              dupe_factor=args.dupe_factor, whole_word_masking=args.whole_word_masking)
    options.validate()
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_file", required=True,
                        help="text file, folder of .txt files, or comma-separated list (one sentence per line, "
                             "blank line between documents)")
    parser.add_argument("--output_file", required=True, help="HDF5 file to write")
    add_instance_arguments(parser, dupe_factor_default=10, max_seq_length_default=128)
    return parser


def main(argv: List[str]) -> None:
    args = build_parser().parse_args(argv)
    if not args.vocab_file:
        raise DataPrepError("--vocab_file is required (train one with: python -m data.vocab --input ... --output vocab.txt)")
    options = instance_options(args)
    vocab = load_vocab(args.vocab_file)
    warning = casing_warning(vocab, args.do_lower_case)
    if warning:
        print(warning, file=sys.stderr)
    stats = create_shard(input_files(args.input_file), args.output_file, vocab, options, args.random_seed,
                         args.do_lower_case, args.tokenizer, args.gzip_level)
    print(f"wrote {stats.output}: {stats.instances} instances from {stats.documents} documents, "
          f"{stats.tokens} tokens ({stats.tokenizer}) in {stats.seconds:.2f} s")


def cli() -> int:
    """The console command (pyproject.toml): errors as one line and their exit status."""
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(cli())
