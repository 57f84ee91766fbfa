"""text_formatting: every corpus -> one document per line (``formatted_one_article_per_line/*.txt``).

- Wikipedia: a ``.xml.bz2`` (or ``.xml``) dump, streamed and rendered in ``n_processes`` workers, or
  WikiExtractor ``<doc>`` output (see data.wiki_extract).
- BookCorpus: a folder of ``.txt`` books, one book per line.
- custom: your own corpus: a folder (or file) of ``.txt`` files -- one document per line, or, when a
  file has blank lines, documents separated by blank lines -- and/or ``.jsonl`` files whose records
  carry the document in a ``text`` field.

The output is written under a temporary name and renamed when complete; an output with no documents
is an error (the reference silently produced empty files when its extractor broke).
"""
from __future__ import annotations

import bz2
import itertools
import json
import multiprocessing
import os
from pathlib import Path
from typing import Iterable, Iterator, List

from central.dllog import console, progress
from data.errors import DataPrepError
from data.wiki_extract import (PINNED_MWPARSERFROMHELL, check_extractor_version, iter_dump_pages,
                               iter_wikiextractor_docs, wikiextractor_files, wikitext_to_text)

CUSTOM_SUFFIXES = (".txt", ".jsonl")
PAGES_PER_BATCH = 512  # pages in flight at once when rendering in worker processes


def one_line(text: str) -> str:
    return " ".join(text.split())


def write_documents(documents: Iterable[str], output: Path, source) -> int:
    """Write one document per line to ``output`` (atomically); returns the count, 0 is an error."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            for document in documents:
                line = one_line(document)
                if line:
                    handle.write(line + "\n")
                    count += 1
        if count == 0:
            raise DataPrepError(f"no documents found in {source}: nothing to write to {output}")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return count


# ---------------------------------------------------------------- Wikipedia

def _peek(path: Path, size: int = 4096) -> str:
    opener = bz2.open if path.suffix == ".bz2" else open
    try:
        with opener(path, "rb") as handle:
            return handle.read(size).decode("utf-8", errors="replace")
    except PermissionError as err:
        raise DataPrepError(f"cannot read {path}: {err.strerror}") from None
    except (OSError, EOFError) as err:
        raise DataPrepError(f"{path} is corrupt or truncated: {err}") from None


def wikipedia_kind(path: Path) -> str:
    """'dump' (MediaWiki XML) or 'wikiextractor' (``<doc>`` files)."""
    if path.is_dir():
        return "wikiextractor"
    if not path.is_file():
        raise DataPrepError(f"Wikipedia input {path} does not exist")
    head = _peek(path).lstrip("\ufeff \r\n\t")
    if head.startswith("<doc "):
        return "wikiextractor"
    if "<mediawiki" in head[:1024]:
        return "dump"
    raise DataPrepError(f"{path} is neither a MediaWiki XML dump nor WikiExtractor <doc> output")


def _page_text(page) -> str:
    try:
        return wikitext_to_text(page[1])
    except Exception:  # a page the parser cannot handle is skipped, not fatal for a 20 GB dump
        return ""


def _dump_articles(path: Path, n_processes: int, show_progress: bool) -> Iterator[str]:
    version = check_extractor_version()
    if version != PINNED_MWPARSERFROMHELL:
        console(f"warning: mwparserfromhell {version} is installed, text was checked with "
                f"{PINNED_MWPARSERFROMHELL} (pip install mwparserfromhell=={PINNED_MWPARSERFROMHELL})")
    pages = iter_dump_pages(path)
    bar = progress(desc=f"pages of {path.name}", unit="page", enabled=show_progress)
    if n_processes <= 1:
        texts: Iterable[str] = map(_page_text, pages)
        for text in texts:
            bar.update()
            yield text
    else:
        # Pool.imap would read the whole dump ahead into its task queue; batches keep memory bounded.
        with multiprocessing.get_context("fork").Pool(n_processes) as pool:
            while True:
                batch = list(itertools.islice(pages, PAGES_PER_BATCH))
                if not batch:
                    break
                for text in pool.map(_page_text, batch, chunksize=8):
                    bar.update()
                    yield text
    bar.close()


def format_wikipedia(source: Path, output: Path, n_processes: int = 1, show_progress: bool = True) -> int:
    source = Path(source)
    if wikipedia_kind(source) == "dump":
        documents = _dump_articles(source, n_processes, show_progress)
    else:
        documents = iter_wikiextractor_docs(wikiextractor_files(source))
    return write_documents(documents, output, source)


# ---------------------------------------------------------------- BookCorpus and custom corpora

def corpus_files(source: Path, suffixes=CUSTOM_SUFFIXES) -> List[Path]:
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise DataPrepError(f"corpus {source} does not exist")
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix in suffixes and not p.name.startswith("."))
    if not files:
        raise DataPrepError(f"corpus folder {source} holds no {' or '.join(suffixes)} files")
    return files


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise DataPrepError(f"cannot read {path}: {err.strerror or err}") from None


def iter_books(source: Path) -> Iterator[str]:
    for path in corpus_files(source, (".txt",)):
        yield _read_text(path)


def _text_documents(path: Path) -> Iterator[str]:
    """Blank-line separated documents if the file has blank lines between text, else one per line."""
    lines = _read_text(path).splitlines()
    if any(not line.strip() for line in lines):
        block: List[str] = []
        for line in lines + [""]:
            if line.strip():
                block.append(line)
            elif block:
                yield " ".join(block)
                block = []
    else:
        yield from lines


def _jsonl_documents(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataPrepError(f"{path} line {number} is not JSON: {err.msg}") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataPrepError(f"{path} line {number}: expected an object with a string \"text\" field")
            yield record["text"]


def iter_custom_documents(source: Path) -> Iterator[str]:
    for path in corpus_files(source):
        yield from (_jsonl_documents(path) if path.suffix == ".jsonl" else _text_documents(path))


def format_books(source: Path, output: Path) -> int:
    return write_documents(iter_books(source), output, source)


def format_custom(source: Path, output: Path) -> int:
    return write_documents(iter_custom_documents(source), output, source)
