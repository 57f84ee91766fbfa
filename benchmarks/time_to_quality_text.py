"""Text for benchmarks.time_to_quality: the training corpus both sides read, and the held-out yardstick.

Training text (``build_corpus``), one article per line in ``<run>/corpus/<source>.txt`` (the "custom
corpus" format of ``python -m data.prepare``, and one example per line for the HF route, as the
``text`` loader of ``run_mlm.py`` reads it):
  * ``wikipedia``: ../shared/data/wikipedia_sample/wiki_0* (WikiExtractor ``<doc>`` files, 153 articles);
  * ``wikitext2_valid``: wikitext-2-raw/wiki.valid.raw (60 articles);
  * ``wikitext103_excerpt``: the first 2.5 MiB of WikiText-103 train (its ``<unk>`` markers removed).
WikiText articles start at `` = Title = `` lines; section headings (`` = = ... = = ``) are dropped and
WikiText's `` @-@ ``, `` @,@ ``, `` @.@ `` are turned back into ``-``, ``,``, ``.`` (for the held-out text
too). The spaces WikiText puts around punctuation do not matter: BERT's tokenizer splits punctuation.

Held-out text: wikitext-2-raw/wiki.test.raw. A training article is dropped when its title is a held-out
title or when more than ``OVERLAP_SHARE`` of its word 8-grams occur in the held-out text.

The yardstick (``heldout_set``): the held-out articles, tokenized with BERT's uncased vocab (HF fast
tokenizer) and concatenated, cut into ``[CLS] 126 tokens [SEP]`` rows, masked once with the project's
own rule (data.instances.mask_block: 19 of 128 positions, 80% [MASK] / 10% random / 10% kept) from a
fixed seed. The same file is used for every checkpoint of both sides.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Set, Tuple

import numpy as np

from data.instances import InstanceOptions, mask_block

SOURCES = ("wikipedia", "wikitext2_valid", "wikitext103_excerpt")
HELDOUT = Path("wikitext-2-raw") / "wiki.test.raw"
NGRAM = 8
OVERLAP_SHARE = 0.10          # an article sharing more of its 8-grams with the held-out text is dropped
EVAL_MASKING_SEED = 20240521  # the one masking of the held-out rows (same positions for every model)
EVAL_MAX_PREDICTIONS = 20

WIKITEXT_MARKERS = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))
TITLE_LINE = re.compile(r"^ = ([^=].*?) = $")
HEADING_LINE = re.compile(r"^ = = ")
DOC_START = re.compile(r'<doc [^>]*title="([^"]*)"[^>]*>')


@dataclass
class Article:
    source: str
    title: str
    text: str       # one line


def clean_wikitext(line: str) -> str:
    for marker, plain in WIKITEXT_MARKERS:
        line = line.replace(marker, plain)
    return line


def wikitext_articles(path: Path, source: str, drop_unk: bool = False) -> List[Article]:
    """Articles of a WikiText file: a `` = Title = `` line starts one; headings are dropped."""
    articles: List[Article] = []
    title, lines = None, []
    for raw in path.read_text(encoding="utf-8").splitlines():
        match = TITLE_LINE.match(raw)
        if match and not HEADING_LINE.match(raw):
            if title is not None:
                articles.append(Article(source, title, " ".join(lines)))
            title, lines = clean_wikitext(match.group(1)).strip(), []
            continue
        text = raw.strip()
        if not text or HEADING_LINE.match(raw) or title is None:
            continue
        if drop_unk:
            text = " ".join(word for word in text.split() if word != "<unk>")
        lines.append(clean_wikitext(" " + text + " ").strip())
    if title is not None:
        articles.append(Article(source, title, " ".join(lines)))
    return [a for a in articles if a.text]


def wikiextractor_articles(paths: Sequence[Path], source: str) -> List[Article]:
    """``<doc ... title="T">`` files: the first line inside is the title again, then the paragraphs."""
    articles: List[Article] = []
    for path in paths:
        content = path.read_text(encoding="utf-8", errors="replace")
        for match in re.finditer(r'(<doc [^>]*>)\n(.*?)</doc>', content, flags=re.S):
            title_match = DOC_START.match(match.group(1))
            body = [line.strip() for line in match.group(2).split("\n")[1:] if line.strip()]
            if title_match and body:
                articles.append(Article(source, title_match.group(1), " ".join(body)))
    return articles


def read_sources(data_dir: Path, sources: Sequence[str]) -> List[Article]:
    readers = {
        "wikipedia": lambda: wikiextractor_articles(sorted((data_dir / "wikipedia_sample").glob("wiki_0*")), "wikipedia"),
        "wikitext2_valid": lambda: wikitext_articles(data_dir / "wikitext-2-raw" / "wiki.valid.raw", "wikitext2_valid"),
        "wikitext103_excerpt": lambda: wikitext_articles(
            data_dir / "wikitext-103" / "wiki.train.tokens.TRUNCATED_first_2.5MiB", "wikitext103_excerpt", drop_unk=True),
    }
    return [article for source in sources for article in readers[source]()]


def words(text: str) -> List[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def title_key(title: str) -> str:
    """Titles compared by their words: "Kiss You ( One Direction song )" == "Kiss You (One Direction song)"."""
    return " ".join(words(title))


def ngrams(text: str) -> Set[Tuple[str, ...]]:
    tokens = words(text)
    return {tuple(tokens[i:i + NGRAM]) for i in range(len(tokens) - NGRAM + 1)}


def overlap_reason(article: Article, heldout_titles: Set[str], heldout_ngrams: Set[Tuple[str, ...]]) -> str:
    """Why ``article`` overlaps the held-out text ('' if it does not)."""
    if title_key(article.title) in heldout_titles:
        return "title is a held-out title"
    grams = ngrams(article.text)
    if grams:
        share = len(grams & heldout_ngrams) / len(grams)
        if share > OVERLAP_SHARE:
            return f"{share:.0%} of its word {NGRAM}-grams are in the held-out text"
    return ""


@dataclass
class Corpus:
    files: List[Path]
    articles: int
    words: int
    dropped: List[Tuple[Article, str]]
    heldout: List[Article]


def build_corpus(data_dir: Path, sources: Sequence[str], out_dir: Path, max_articles: int = 0) -> Corpus:
    """Write ``out_dir/<source>.txt`` (one article per line) minus the articles that overlap the held-out text."""
    heldout = wikitext_articles(data_dir / HELDOUT, "heldout")
    titles = {title_key(a.title) for a in heldout}
    heldout_grams: Set[Tuple[str, ...]] = set().union(*(ngrams(a.text) for a in heldout))
    out_dir.mkdir(parents=True, exist_ok=True)
    kept: Dict[str, List[Article]] = {source: [] for source in sources}
    dropped: List[Tuple[Article, str]] = []
    for article in read_sources(data_dir, sources):
        reason = overlap_reason(article, titles, heldout_grams)
        if reason:
            dropped.append((article, reason))
        else:
            kept[article.source].append(article)
    files, n_articles, n_words = [], 0, 0
    for source, articles in kept.items():
        if max_articles:
            articles = articles[:max_articles]
        path = out_dir / f"{source}.txt"
        path.write_text("".join(a.text + "\n" for a in articles), encoding="utf-8")
        files.append(path)
        n_articles += len(articles)
        n_words += sum(len(a.text.split()) for a in articles)
    return Corpus(files, n_articles, n_words, dropped, heldout)


def fast_tokenizer(vocab_file: Path):
    """BERT's uncased WordPiece as a transformers fast tokenizer, built from the vocab file alone (the
    same builder fine-tuning uses, which knows transformers 4's and 5's constructors)."""
    from finetuning.model_loading import tokenizer_from_vocab

    return tokenizer_from_vocab(vocab_file, do_lower_case=True)


def heldout_set(articles: Sequence[Article], vocab_file: Path, max_seq_length: int = 128,
                max_sequences: int = 0) -> Dict[str, np.ndarray]:
    """The masked held-out rows: input_ids int32 [N, L] (masked), masked_lm_positions / masked_lm_ids
    int32 [N, P]. Attention covers all L positions; every row is segment 0."""
    tokenizer = fast_tokenizer(vocab_file)
    ids = np.concatenate([np.asarray(row, dtype=np.int32) for row in
                          tokenizer([a.text for a in articles], add_special_tokens=False)["input_ids"]])
    body = max_seq_length - 2
    rows = len(ids) // body
    if max_sequences:
        rows = min(rows, max_sequences)
    input_ids = np.zeros((rows, max_seq_length), dtype=np.int32)
    input_ids[:, 0] = tokenizer.cls_token_id
    input_ids[:, 1:-1] = ids[:rows * body].reshape(rows, body)
    input_ids[:, -1] = tokenizer.sep_token_id
    maskable = np.zeros_like(input_ids, dtype=bool)
    maskable[:, 1:-1] = True
    options = InstanceOptions(max_seq_length=max_seq_length, max_predictions_per_seq=EVAL_MAX_PREDICTIONS)
    positions, labels = mask_block(input_ids, maskable, np.full(rows, max_seq_length), options, len(tokenizer),
                                   tokenizer.mask_token_id, np.zeros(0, dtype=bool),
                                   np.random.default_rng(EVAL_MASKING_SEED))
    return {"input_ids": input_ids, "masked_lm_positions": positions, "masked_lm_ids": labels}


def iter_lines(files: Sequence[Path]) -> Iterator[str]:
    for path in files:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield line.rstrip("\n")
