"""Tokenizers against BERT's reference WordPiece, corpus structure, vocab checks and vocab training."""
import itertools
import os

import numpy as np
import pytest

from data.errors import DataPrepError
from data.sharding import split_sentences
from data.tokenization import BlingfireTokenizer, WordPieceTokenizer, make_tokenizer, tokenize_files
from data.vocab import SPECIAL_TOKENS, casing_warning, load_vocab, train_vocab
from data.wiki_extract import iter_wikiextractor_docs

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def sentences(shared_data):
    """Every 20th sentence of two Wikipedia sample files (~1,400 sentences)."""
    docs = iter_wikiextractor_docs([shared_data / "wikipedia_sample" / "wiki_00", shared_data / "wikipedia_sample" / "wiki_02"])
    every = [s for doc in docs for s in split_sentences(doc)]
    return every[::20]


def reference_ids(vocab_path, lower, lines):
    """BERT's reference tokenization: BasicTokenizer + WordPiece in pure Python (Google's tokenization.py)."""
    from transformers.models.bert import BertTokenizerLegacy

    reference = BertTokenizerLegacy(str(vocab_path), do_lower_case=lower)
    return [reference.convert_tokens_to_ids(reference.tokenize(line)) for line in lines]


def per_line_ids(tokenizer, lines):
    block = ("\n".join(lines) + "\n").encode("utf-8")
    starts = np.concatenate(([0], np.cumsum([len(line.encode("utf-8")) + 1 for line in lines])[:-1]))
    ids, counts = tokenizer.encode_block(block, starts)
    bounds = np.concatenate(([0], np.cumsum(counts)))
    return [ids[bounds[i]:bounds[i + 1]].tolist() for i in range(len(lines))]


@pytest.mark.parametrize("case", ["uncased", "cased"])
def test_tokenizers_agree_with_the_reference_wordpiece(shared_data, sentences, case):
    vocab = load_vocab(shared_data / "vocab" / f"bert-base-{case}-vocab.txt")
    lower = case == "uncased"
    expected = reference_ids(vocab.path, lower, sentences)
    fast = make_tokenizer(vocab, lower)  # auto: blingfire for the stock vocabs
    assert isinstance(fast, BlingfireTokenizer)
    agree_fast = np.mean([a == b for a, b in zip(per_line_ids(fast, sentences), expected)])
    agree_wordpiece = np.mean([a == b for a, b in zip(per_line_ids(WordPieceTokenizer(vocab, lower), sentences), expected)])
    # on the whole sample: blingfire 99.92% / 99.92%, tokenizers 99.997% / 100% (docs/performance.md)
    assert agree_fast >= 0.995
    assert agree_wordpiece >= 0.999


def test_block_size_does_not_change_the_corpus(shared_data, tmp_path):
    vocab = load_vocab(shared_data / "vocab" / "bert-base-uncased-vocab.txt")
    text = shared_data / "bert_sample_text" / "sample_text.txt"
    for tokenizer in (make_tokenizer(vocab, True), make_tokenizer(vocab, True, "wordpiece")):
        whole = tokenize_files([text], tokenizer)
        small = tokenize_files([text], tokenizer, block_bytes=300)
        assert np.array_equal(whole.tokens, small.tokens)
        assert np.array_equal(whole.sentence_starts, small.sentence_starts)
        assert np.array_equal(whole.document_starts, small.document_starts)


def test_documents_and_sentences_follow_blank_lines(shared_data, tmp_path):
    vocab = load_vocab(shared_data / "vocab" / "bert-base-uncased-vocab.txt")
    path = shared_data / "bert_sample_text" / "sample_text.txt"
    lines = path.read_text(encoding="utf-8").split("\n")
    documents = [list(group) for blank, group in itertools.groupby(lines, key=lambda l: not l.strip()) if not blank]
    corpus = tokenize_files([path], make_tokenizer(vocab, True))
    assert corpus.n_documents == len(documents)
    assert corpus.n_sentences == sum(len(doc) for doc in documents)
    expected = per_line_ids(make_tokenizer(vocab, True), [line for doc in documents for line in doc])
    got = [corpus.tokens[corpus.sentence_starts[i]:corpus.sentence_starts[i + 1]].tolist()
           for i in range(corpus.n_sentences)]
    assert got == expected
    # whitespace-only lines separate documents; a line without tokens (control characters) does not;
    # a file end closes a document
    odd = tmp_path / "odd.txt"
    odd.write_text("First one.\n \t \nSecond doc.\n\x07\nstill second.\n", encoding="utf-8")
    other = tmp_path / "other.txt"
    other.write_text("Third doc.", encoding="utf-8")
    corpus = tokenize_files([odd, other], make_tokenizer(vocab, True))
    assert corpus.n_documents == 3 and corpus.n_sentences == 4


def test_automatic_tokenizer_choice(shared_data, tmp_path):
    uncased = load_vocab(shared_data / "vocab" / "bert-base-uncased-vocab.txt")
    cased = load_vocab(shared_data / "vocab" / "bert-base-cased-vocab.txt")
    assert make_tokenizer(uncased, True).model_file == "bert_base_tok.bin"
    assert make_tokenizer(cased, False).model_file == "bert_base_cased_tok.bin"
    assert isinstance(make_tokenizer(uncased, False), WordPieceTokenizer)  # casing differs: no blingfire
    assert isinstance(make_tokenizer(uncased, True, "wordpiece"), WordPieceTokenizer)
    edited = tmp_path / "vocab.txt"
    edited.write_text("\n".join(uncased.tokens[:-1]) + "\n", encoding="utf-8")
    assert isinstance(make_tokenizer(load_vocab(edited), True), WordPieceTokenizer)
    with pytest.raises(DataPrepError, match="blingfire only fits"):
        make_tokenizer(load_vocab(edited), True, "blingfire")


@pytest.mark.parametrize("content, message", [
    (b"\x89HDF\r\n\x1a\n\x00\x00binary", "binary"),
    (b'{"version": "1.0", "model": {"vocab": {}}}\n', "single token"),
    (b"hello\nworld\n[CLS]\n[SEP]\n", "lacks"),
    (b"[UNK]\n[PAD]\n[CLS]\n[SEP]\n[MASK]\n", "must be the first line"),
    (b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n[CLS]\n", "lines 3 and 6"),
    (b"\xff\xfe[\x00P\x00", "binary"),
    (b"", "lacks"),
])
def test_not_a_vocab_is_refused(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    path.write_bytes(content)
    with pytest.raises(DataPrepError, match=message) as info:
        load_vocab(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_vocab_file(tmp_path):
    with pytest.raises(DataPrepError, match="does not exist"):
        load_vocab(tmp_path / "nope.txt")


@pytest.mark.parametrize("lower", [True, False])
def test_trained_vocab_is_a_usable_bert_vocab(shared_data, tmp_path, lower):
    text = tmp_path / "train.txt"
    with open(shared_data / "wikitext-2-raw" / "wiki.valid.raw", encoding="utf-8") as handle:
        text.write_text("".join(itertools.islice(handle, 1500)), encoding="utf-8")
    vocab = train_vocab([text], tmp_path / "vocab.txt", vocab_size=3000, lowercase=lower)
    assert vocab.tokens[:len(SPECIAL_TOKENS)] == SPECIAL_TOKENS and vocab.pad_id == 0
    assert 2000 < vocab.size <= 3000
    assert any(tok.startswith("##") for tok in vocab.tokens)
    has_upper = any(any(c.isupper() for c in tok) for tok in vocab.tokens[len(SPECIAL_TOKENS):])
    assert has_upper != lower
    corpus = tokenize_files([text], make_tokenizer(vocab, lower))
    assert corpus.tokens.max() < vocab.size
    assert (corpus.tokens == vocab.unk_id).mean() < 0.01


def test_casing_warning_for_an_uncased_vocab_with_case_kept(shared_data):
    uncased = load_vocab(shared_data / "vocab" / "bert-base-uncased-vocab.txt")
    cased = load_vocab(shared_data / "vocab" / "bert-base-cased-vocab.txt")
    assert "no upper-case tokens" in casing_warning(uncased, False)
    assert casing_warning(uncased, True) is None and casing_warning(cased, False) is None
