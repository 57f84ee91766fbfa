"""The stages on their own: custom corpora, books, sharding, create_hdf5_files, bad input, atomic outputs."""
import filecmp
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

import data.create_pretraining_data as cpd
from data.errors import run_main
from data.formatting import format_books, format_custom
from data.hdf5_shards import read_shard
from data.prepare import main as prepare_main


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("BERT_DISABLE_PROGRESS", "1")


def prepare(*argv):
    return run_main(prepare_main, [str(a) for a in argv])


@pytest.fixture(scope="module")
def custom_corpus(shared_data, tmp_path_factory):
    """A user's own corpus in all three accepted shapes, from WikiText-103 text."""
    folder = tmp_path_factory.mktemp("corpus")
    with open(shared_data / "wikitext-103" / "wiki.valid.tokens", encoding="utf-8") as handle:
        paragraphs = [line.strip() for line in itertools.islice(handle, 3000)
                      if line.strip() and not line.strip().startswith("=")]
    lines_file = folder / "a_one_per_line.txt"            # one document per line
    lines_file.write_text("\n".join(paragraphs[:150]) + "\n", encoding="utf-8")
    blocks_file = folder / "b_blocks.txt"                 # documents = blocks separated by blank lines
    blocks = ["\n".join(paragraphs[i:i + 3]) for i in range(150, 300, 3)]
    blocks_file.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    records = folder / "c_records.jsonl"                  # {"text": ...} records
    records.write_text("".join(json.dumps({"text": p, "id": i}) + "\n" for i, p in enumerate(paragraphs[300:400])),
                       encoding="utf-8")
    (folder / "notes.md").write_text("not part of the corpus")
    return folder, paragraphs


def test_custom_corpus_formats(custom_corpus, tmp_path):
    folder, paragraphs = custom_corpus
    out = tmp_path / "custom.txt"
    assert format_custom(folder, out) == 150 + 50 + 100
    lines = out.read_text(encoding="utf-8").split("\n")[:-1]
    assert lines[0] == " ".join(paragraphs[0].split())
    assert lines[150] == " ".join(" ".join(paragraphs[150:153]).split())
    assert lines[200] == " ".join(paragraphs[300].split())


def test_books_are_one_line_each(custom_corpus, tmp_path):
    folder, _ = custom_corpus
    assert format_books(folder, tmp_path / "books.txt") == 2  # the two .txt files; .jsonl/.md are not books


def test_bad_jsonl_is_one_line(tmp_path, capsys):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "x.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    assert prepare("--action", "text_formatting", "--dataset", "custom", "--working_dir", tmp_path,
                   "--input_path", tmp_path / "corpus") == 2
    err = capsys.readouterr().err
    assert "x.jsonl line 2" in err and err.count("\n") == 1


def test_sharding_balances_sentences(shared_data, tmp_path):
    assert prepare("--action", "text_formatting", "--dataset", "wikicorpus_en", "--working_dir", tmp_path,
                   "--input_path", shared_data / "wikipedia_sample" / "wiki_00") == 0
    assert prepare("--action", "sharding", "--dataset", "wikicorpus_en", "--working_dir", tmp_path,
                   "--n_training_shards", 3, "--n_test_shards", 1, "--fraction_test_set", 0.1) == 0
    folder = tmp_path / "sharded_training_shards_3_test_shards_1_fraction_0.1" / "wikicorpus_en"
    assert sorted(p.name for p in folder.iterdir()) == [
        "wikicorpus_en_test_0.txt", "wikicorpus_en_training_0.txt", "wikicorpus_en_training_1.txt",
        "wikicorpus_en_training_2.txt"]
    formatted = (tmp_path / "formatted_one_article_per_line" / "wikicorpus_en_one_article_per_line.txt")
    n_articles = len(formatted.read_text(encoding="utf-8").splitlines())
    sentences, documents = {}, 0
    for shard in folder.iterdir():
        text = shard.read_text(encoding="utf-8")
        assert text.endswith("\n\n") and "\n\n\n" not in text  # a blank line after every document
        docs = text[:-2].split("\n\n")
        documents += len(docs)
        sentences[shard.name] = sum(len(doc.split("\n")) for doc in docs)
    assert documents == n_articles
    training = [v for k, v in sentences.items() if "training" in k]
    biggest_doc = max(len(doc.split("\n")) for shard in folder.iterdir()
                      for doc in shard.read_text(encoding="utf-8")[:-2].split("\n\n"))
    assert max(training) - min(training) <= biggest_doc  # balanced up to one document
    share = sentences["wikicorpus_en_test_0.txt"] / sum(sentences.values())
    assert 0.05 < share < 0.3


def test_custom_corpus_to_hdf5_with_a_trained_cased_vocab(custom_corpus, tmp_path):
    """The walk-through of docs/data-preparation.md: own corpus -> own vocab -> shards -> HDF5 (cased)."""
    folder, _ = custom_corpus
    common = ["--dataset", "custom", "--working_dir", tmp_path, "--n_training_shards", 2, "--n_test_shards", 0,
              "--fraction_test_set", 0]
    assert prepare("--action", "text_formatting", "--input_path", folder, *common) == 0
    assert prepare("--action", "sharding", *common) == 0
    hdf5 = ["--max_seq_length", 64, "--max_predictions_per_seq", 10, "--do_lower_case", 0, "--vocab_size", 2000,
            "--dupe_factor", 2]
    assert prepare("--action", "create_hdf5_files", "--n_processes", 2, *hdf5, *common) == 0
    out = (tmp_path / "hdf5_lower_case_0_seq_len_64_max_pred_10_masked_lm_prob_0.15_random_seed_12345_dupe_factor_2"
           / "custom")
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert vocab[0] == "[PAD]" and any(tok[:1].isupper() for tok in vocab)
    assert (tmp_path / "vocab" / "custom_lower_case_0_vocab_size_2000.txt").is_file()
    shard = read_shard(out / "custom_training_0.hdf5")
    assert shard["input_ids"].shape[1] == 64 and shard["input_ids"].max() < len([t for t in vocab if t])
    # made in worker processes or alone, a shard is the same bytes (each shard has its own seed: base + index)
    shards = tmp_path / "sharded_training_shards_2_test_shards_0_fraction_0.0" / "custom"
    for index in (0, 1):
        alone = cpd.create_shard([shards / f"custom_training_{index}.txt"], tmp_path / f"alone_{index}.hdf5",
                                 cpd.load_vocab(out / "vocab.txt"), cpd.InstanceOptions(64, 10, dupe_factor=2),
                                 random_seed=12345 + index, do_lower_case=False)
        assert filecmp.cmp(alone.output, out / f"custom_training_{index}.hdf5", shallow=False)


@pytest.mark.parametrize("argv, message", [
    (["--input_file", "{tmp}/missing.txt"], "does not exist"),
    (["--input_file", "{tmp}/empty_folder"], "holds no .txt files"),
    (["--input_file", "{tmp}/blank.txt"], "holds no text"),
    (["--input_file", "{text}", "--vocab_file", "{tmp}/not_vocab.txt"], "is not a"),
    (["--input_file", "{text}", "--max_predictions_per_seq", "200"], "does not fit --max_seq_length 128"),
    (["--input_file", "{text}", "--max_seq_length", "4"], "too short"),
    (["--input_file", "{text}", "--masked_lm_prob", "0"], "masked_lm_prob"),
])
def test_bad_input_exits_2_with_one_line(shared_data, tmp_path, capsys, argv, message):
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    (tmp_path / "not_vocab.txt").write_bytes(b"\x00\x01binary")
    values = {"tmp": tmp_path, "text": shared_data / "bert_sample_text" / "sample_text.txt"}
    full = [a.format(**values) for a in argv]
    if "--vocab_file" not in full:
        full += ["--vocab_file", str(shared_data / "vocab" / "bert-base-uncased-vocab.txt")]
    status = run_main(cpd.main, full + ["--output_file", str(tmp_path / "out" / "x.hdf5")])
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out" / "x.hdf5").exists()


def test_stage_order_mistakes_are_one_line(tmp_path, capsys):
    for argv, message in (
        (["--action", "sharding", "--dataset", "wikicorpus_en"], "run --action text_formatting first"),
        (["--action", "create_hdf5_files", "--dataset", "wikicorpus_en"], "run --action sharding"),
        (["--action", "text_formatting", "--dataset", "wikicorpus_en"], "no Wikipedia dump"),
        (["--action", "text_formatting", "--dataset", "custom"], "does not exist"),
        (["--action", "sharding", "--dataset", "squad"], "pre-training corpora"),
    ):
        assert prepare(*argv, "--working_dir", tmp_path) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_a_failure_mid_shard_leaves_no_file_that_looks_complete(shared_data, tmp_path, monkeypatch):
    text = shared_data / "wikitext-103" / "wiki.valid.tokens"  # a few thousand instances: several blocks
    vocab = cpd.load_vocab(shared_data / "vocab" / "bert-base-uncased-vocab.txt")
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    real = cpd.build_block
    monkeypatch.setattr(cpd, "BLOCK_ROWS", 1024)
    monkeypatch.setattr(cpd, "build_block", failing)
    with pytest.raises(OSError):
        cpd.create_shard([text], tmp_path / "x.hdf5", vocab, cpd.InstanceOptions(dupe_factor=1))
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


def test_script_entry_point_exit_status(shared_data, tmp_path, child_env):
    result = subprocess.run([sys.executable, "-m", "data.create_pretraining_data", "--input_file",
                             str(tmp_path / "nothing.txt"), "--output_file", str(tmp_path / "x.hdf5"),
                             "--vocab_file", str(shared_data / "vocab" / "bert-base-uncased-vocab.txt")],
                            env=child_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: input ") and result.stderr.count("\n") == 1
    ok = subprocess.run([sys.executable, "-m", "data.create_pretraining_data", "--input_file",
                         str(shared_data / "bert_sample_text" / "sample_text.txt"), "--output_file",
                         str(tmp_path / "x.hdf5"), "--vocab_file", str(shared_data / "vocab" / "bert-base-uncased-vocab.txt"),
                         "--do_lower_case", "--random_seed", "1", "--dupe_factor", "3"],
                        env=child_env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    shard = read_shard(tmp_path / "x.hdf5")
    assert len(shard["next_sentence_labels"]) > 10 and np.isin(shard["next_sentence_labels"], [0, 1]).all()


def test_books_and_wikipedia_are_sharded_together(custom_corpus, shared_data, tmp_path):
    folder, _ = custom_corpus
    assert prepare("--action", "text_formatting", "--dataset", "bookscorpus", "--working_dir", tmp_path,
                   "--input_path", folder) == 0
    assert prepare("--action", "text_formatting", "--dataset", "wikicorpus_en", "--working_dir", tmp_path,
                   "--input_path", shared_data / "wikipedia_sample" / "wiki_03") == 0
    assert prepare("--action", "sharding", "--dataset", "books_wiki_en_corpus", "--working_dir", tmp_path,
                   "--n_training_shards", 2, "--n_test_shards", 1) == 0
    shards = tmp_path / "sharded_training_shards_2_test_shards_1_fraction_0.1" / "books_wiki_en_corpus"
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(shards.glob("books_wiki_en_corpus_*.txt")))
    assert text.count("\n\n") == 2 + 32  # two books and the 32 articles of wiki_03, each one document
