"""Data preparation stages (the reference's bertPrep.py), each runnable alone::

    python -m data.prepare --action download          --dataset wikicorpus_en
    python -m data.prepare --action text_formatting   --dataset wikicorpus_en
    python -m data.prepare --action sharding          --dataset wikicorpus_en
    python -m data.prepare --action create_hdf5_files --dataset wikicorpus_en --max_seq_length 128 \
        --max_predictions_per_seq 20 --vocab_file vocab.txt --do_lower_case 1 [--pack 1]

Datasets: wikicorpus_en, bookscorpus, books_wiki_en_corpus, custom (your own corpus), squad, mrpc,
google_pretrained_weights (the BERT uncased vocab). Folders: data.layout, under $BERT_PREP_WORKING_DIR.

``--pack 1`` also packs the new training shards (data.pack_pretraining_data, up to
``--max_sequences_per_pack`` samples per row) into the sibling folder ``<dataset>_packed``. It is off by
default: the unpacked NVIDIA/Habana format is what every tool reads (NVIDIA's and Habana's unpacked
trainers, checkers, converters, and the packer itself), packing is a separate step that can run later on
the same shards, and it pays mostly at 512 (about 2x fewer rows on Wikipedia; about 1.1-1.2x at 128).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional

from central.dllog import progress
from data.create_pretraining_data import ShardStats, add_instance_arguments, create_shard, instance_options, parse_bool
from data.errors import DataPrepError, run_main
from data.layout import CORPUS_PARTS, DATASETS, FINETUNING_DATASETS, WEIGHTS_DATASET, Layout, working_dir
from data.vocab import casing_warning, load_vocab, train_vocab

# The download, formatting, sharding and packing modules are imported by the action that uses them, so that
# create_hdf5_files (run once per phase over hundreds of shards) starts without loading them.

ACTIONS = ("download", "text_formatting", "sharding", "create_hdf5_files")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="BERT data preparation: download, text_formatting, sharding, "
                                                 "create_hdf5_files (working directory: $BERT_PREP_WORKING_DIR)")
    parser.add_argument("--action", required=True, choices=ACTIONS)
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--working_dir", default=None, help="default: $BERT_PREP_WORKING_DIR, else the current directory")
    parser.add_argument("--input_path", default=None,
                        help="text_formatting: a dump / WikiExtractor output / folder of books or of your corpus "
                             "(default: the dataset's download folder)")
    parser.add_argument("--wiki_dump_url", default=None,
                        help="Wikimedia dump to download (default: the latest English one; another language or "
                             "date works the same)")
    parser.add_argument("--skip_wikiextractor", type=int, default=0,
                        help="1: format the WikiExtractor output in extracted/wikicorpus_en instead of the dump")
    parser.add_argument("--n_training_shards", type=int, default=256)
    parser.add_argument("--n_test_shards", type=int, default=256)
    parser.add_argument("--fraction_test_set", type=float, default=0.1)
    parser.add_argument("--n_processes", type=int, default=4, help="worker processes (one shard each at a time)")
    parser.add_argument("--vocab_size", type=int, default=30522, help="size of the vocab trained when no --vocab_file")
    add_instance_arguments(parser, dupe_factor_default=5, max_seq_length_default=512)
    parser.add_argument("--pack", type=parse_bool, nargs="?", const=True, default=False,
                        help="create_hdf5_files: also pack the training shards into <dataset>_packed (default 0)")
    parser.add_argument("--max_sequences_per_pack", type=int, default=3, help="with --pack: samples per pack, 1..3")
    return parser


# ---------------------------------------------------------------- download

def _local_corpus(args, layout: Layout) -> None:
    """BookCorpus and custom corpora are local folders: check there is something to format."""
    from data.formatting import corpus_files

    folder = Path(args.input_path) if args.input_path else layout.download(args.dataset)
    if not folder.exists():
        if args.dataset == "bookscorpus":
            raise DataPrepError(f"BookCorpus has no official download any more: put one .txt file per book in {folder} "
                                "(or pass --input_path FOLDER), then run text_formatting")
        raise DataPrepError(f"put your corpus (.txt / .jsonl files) in {folder} or pass --input_path FOLDER")
    files = corpus_files(folder, (".txt",) if args.dataset == "bookscorpus" else (".txt", ".jsonl"))
    print(f"{args.dataset}: {len(files)} files in {folder}, nothing to download; text_formatting reads them from there")


def action_download(args, layout: Layout) -> None:
    from data import download as downloads
    from data.glue_mrpc import build_mrpc, matches_glue

    dataset = args.dataset
    if dataset == "wikicorpus_en":
        dest = layout.download(dataset) / "wikicorpus_en.xml.bz2"
        url = args.wiki_dump_url or downloads.WIKI_DUMP_URL
        try:
            checksum = downloads.wiki_checksum(url)
        except DataPrepError as err:
            if dest.is_file():  # offline with the dump already in place: go on, unverified
                print(f"warning: {err}; keeping {dest} unverified")
                return
            raise DataPrepError(f"{err}; without network, put the dump at {dest} and run text_formatting") from None
        downloads.fetch(url, dest, checksum)
    elif dataset in ("bookscorpus", "custom"):
        _local_corpus(args, layout)
    elif dataset == "books_wiki_en_corpus":
        raise DataPrepError("download wikicorpus_en and bookscorpus separately (books_wiki_en_corpus is their union)")
    elif dataset == "squad":
        for remote in downloads.FIXED_REMOTES["squad"]:
            downloads.fetch(remote.url, layout.squad() / remote.name, remote.checksum)
    elif dataset == "mrpc":
        for remote in downloads.FIXED_REMOTES["mrpc"]:
            downloads.fetch(remote.url, layout.mrpc() / remote.name, remote.checksum)
        rows = build_mrpc(layout.mrpc(), layout.mrpc())
        identical = matches_glue(layout.mrpc())
        if not all(identical.values()):
            raise DataPrepError(f"built MRPC files in {layout.mrpc()} differ from GLUE's: "
                                f"{', '.join(n for n, ok in identical.items() if not ok)}")
        print(f"MRPC in {layout.mrpc()}: " + ", ".join(f"{n} {c} rows" for n, c in rows.items())
              + " (byte-identical to GLUE's)")
    elif dataset == WEIGHTS_DATASET:
        remote = downloads.FIXED_REMOTES[WEIGHTS_DATASET][0]
        downloads.fetch(remote.url, layout.reference_vocab(), remote.checksum)


# ---------------------------------------------------------------- text_formatting

def _wikipedia_source(args, layout: Layout) -> Path:
    if args.input_path:
        return Path(args.input_path)
    extracted = layout.extracted("wikicorpus_en")
    if args.skip_wikiextractor:
        if not extracted.is_dir():
            raise DataPrepError(f"--skip_wikiextractor 1 but {extracted} does not exist")
        return extracted
    for name in ("wikicorpus_en.xml.bz2", "wikicorpus_en.xml"):
        if (layout.download("wikicorpus_en") / name).is_file():
            return layout.download("wikicorpus_en") / name
    raise DataPrepError(f"no Wikipedia dump in {layout.download('wikicorpus_en')}: run --action download "
                        "--dataset wikicorpus_en, or give --input_path DUMP.xml.bz2|WIKIEXTRACTOR_OUTPUT")


def action_text_formatting(args, layout: Layout) -> None:
    from data.formatting import format_books, format_custom, format_wikipedia

    if args.dataset in FINETUNING_DATASETS + (WEIGHTS_DATASET,):
        raise DataPrepError(f"{args.dataset} needs no text_formatting (run --action download)")
    if args.dataset == "books_wiki_en_corpus" and args.input_path:
        raise DataPrepError("--input_path is ambiguous for books_wiki_en_corpus: format wikicorpus_en and bookscorpus separately")
    show = os.environ.get("BERT_DISABLE_PROGRESS") != "1"
    for part in CORPUS_PARTS[args.dataset]:
        started = time.perf_counter()
        output = layout.formatted(part)
        if part == "wikicorpus_en":
            source = _wikipedia_source(args, layout)
            count = format_wikipedia(source, output, n_processes=args.n_processes, show_progress=show)
        else:
            source = Path(args.input_path) if args.input_path else layout.download(part)
            count = (format_books if part == "bookscorpus" else format_custom)(source, output)
        print(f"formatted {source} -> {output}: {count} documents in {time.perf_counter() - started:.1f} s")


# ---------------------------------------------------------------- sharding

def _corpus_dataset(args) -> None:
    if args.dataset not in CORPUS_PARTS:
        raise DataPrepError(f"--action {args.action} is for pre-training corpora ({', '.join(CORPUS_PARTS)}), "
                            f"not {args.dataset}")


def action_sharding(args, layout: Layout) -> None:
    from data.sharding import shard_documents

    _corpus_dataset(args)
    inputs = [layout.formatted(part) for part in CORPUS_PARTS[args.dataset]]
    output_dir = layout.sharded(args.dataset, args.n_training_shards, args.n_test_shards, args.fraction_test_set)
    started = time.perf_counter()
    result = shard_documents(inputs, output_dir, args.dataset, args.n_training_shards, args.n_test_shards,
                             args.fraction_test_set, seed=args.random_seed,
                             show_progress=os.environ.get("BERT_DISABLE_PROGRESS") != "1")
    training = result.sentences_per_shard["training"]
    print(f"sharded {result.documents} documents, {result.sentences} sentences into {output_dir}: "
          f"{len(result.training)} training shards ({min(training)}..{max(training)} sentences), "
          f"{len(result.test)} test shards in {time.perf_counter() - started:.1f} s")


# ---------------------------------------------------------------- create_hdf5_files

def _shard_job(job) -> ShardStats:
    text_path, output, vocab_path, options, seed, do_lower_case, tokenizer, gzip_level = job
    return create_shard([text_path], output, load_vocab(vocab_path), options, seed, do_lower_case, tokenizer, gzip_level)


def _shard_number(path: Path) -> tuple:
    suffix = path.stem.rpartition("_")[2]
    return (int(suffix), path.name) if suffix.isdigit() else (-1, path.name)


def _worker_init() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per shard already uses the cores


def action_create_hdf5_files(args, layout: Layout) -> None:
    _corpus_dataset(args)
    options = instance_options(args)
    if args.n_processes < 1:
        raise DataPrepError(f"--n_processes {args.n_processes} must be at least 1")
    shard_dir = layout.sharded(args.dataset, args.n_training_shards, args.n_test_shards, args.fraction_test_set)
    shards = [shard for split in ("training", "test")  # numeric order: shard i gets seed random_seed + i
              for shard in sorted(shard_dir.glob(f"{args.dataset}_{split}_*.txt"), key=_shard_number)]
    if not shards:
        raise DataPrepError(f"no text shards in {shard_dir}: run --action sharding with the same --n_training_shards, "
                            "--n_test_shards and --fraction_test_set first")
    lower = int(args.do_lower_case)
    if args.vocab_file:
        vocab = load_vocab(args.vocab_file)
    else:
        vocab_path = layout.trained_vocab(args.dataset, lower, args.vocab_size)
        if vocab_path.is_file():
            vocab = load_vocab(vocab_path)
            print(f"using the vocab trained before: {vocab_path}")
        else:
            training = [p for p in shards if "_training_" in p.name]
            vocab = train_vocab(training, vocab_path, vocab_size=args.vocab_size, lowercase=bool(lower))
            print(f"trained a {'lower-cased' if lower else 'cased'} WordPiece vocab of {vocab.size} tokens: {vocab_path}")
    warning = casing_warning(vocab, bool(lower))
    if warning:
        print(warning, file=sys.stderr)
    output_dir = layout.hdf5(args.dataset, lower, args.max_seq_length, args.max_predictions_per_seq,
                             args.masked_lm_prob, args.random_seed, args.dupe_factor, args.whole_word_masking)
    if args.pack:  # refuse before hours of work, not after
        _check_pack_target(args, output_dir, layout.packed(output_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(shard, output_dir / (shard.stem + ".hdf5"), vocab.path, options, args.random_seed + index,
             bool(lower), args.tokenizer, args.gzip_level) for index, shard in enumerate(shards)]
    started = time.perf_counter()
    bar = progress(total=len(jobs), desc="hdf5 shards", unit="shard",
                   enabled=os.environ.get("BERT_DISABLE_PROGRESS") != "1")
    results: List[ShardStats] = []
    try:
        if args.n_processes == 1 or len(jobs) == 1:
            for job in jobs:
                results.append(_shard_job(job))
                bar.update()
        else:
            context = multiprocessing.get_context("fork")
            with context.Pool(min(args.n_processes, len(jobs)), initializer=_worker_init) as pool:
                for stats in pool.imap_unordered(_shard_job, jobs):
                    results.append(stats)
                    bar.update()
    except BaseException:
        # workers stopped mid-shard leave temporaries (never complete-looking names): clear them
        for job in jobs:
            for stale in job[1].parent.glob(f".{job[1].name}.tmp*"):
                stale.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    _copy_atomic(vocab.path, output_dir / "vocab.txt")
    instances = sum(r.instances for r in results)
    print(f"wrote {len(results)} HDF5 shards ({instances} instances, tokenizer {results[0].tokenizer}) and vocab.txt "
          f"to {output_dir} in {time.perf_counter() - started:.1f} s")
    if args.pack:
        _pack(args, output_dir, layout.packed(output_dir))


def _pack_options(args):
    from data.pack_pretraining_data import PackOptions

    return PackOptions(args.max_seq_length, args.max_predictions_per_seq, args.max_sequences_per_pack,
                       args.random_seed, args.gzip_level)


def _check_pack_target(args, unpacked: Path, packed: Path) -> None:
    from data.pack_pretraining_data import check_options, check_output_dir

    check_options(_pack_options(args), args.n_processes)
    check_output_dir(packed, unpacked)


def _pack(args, unpacked: Path, packed: Path) -> None:
    from data.pack_pretraining_data import pack_dataset

    started = time.perf_counter()
    summary = pack_dataset(unpacked, packed, _pack_options(args), args.n_processes,
                           show_progress=os.environ.get("BERT_DISABLE_PROGRESS") != "1")
    print(f"packed {summary['original_number_of_samples']} training instances into {summary['new_number_of_samples']} "
          f"packs ({summary['avg_seq_per_sample']:.3f} per pack, {100 * summary['packing_efficiency']:.2f}% real tokens) "
          f"in {packed} in {time.perf_counter() - started:.1f} s")


def _copy_atomic(source: Path, dest: Path) -> None:
    if Path(source).resolve() == Path(dest).resolve():
        return
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, dest)


def main(argv: Optional[List[str]]) -> None:
    args = build_parser().parse_args(argv)
    layout = Layout(working_dir(args.working_dir))
    {"download": action_download, "text_formatting": action_text_formatting, "sharding": action_sharding,
     "create_hdf5_files": action_create_hdf5_files}[args.action](args, layout)


def cli() -> int:
    """The console command (pyproject.toml): errors as one line and their exit status."""
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(cli())
