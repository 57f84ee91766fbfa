"""GLUE TSV reading: real MRPC counts, one synthetic file set per task, bad input, batching."""
from pathlib import Path

import pytest
from finetuning import glue_data
from finetuning.glue_data import GlueDataError, processor_for

BOM = "\ufeff"


def write_tsv(path: Path, lines, bom=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((BOM if bom else "") + "".join("\t".join(cols) + "\n" for cols in lines), encoding="utf-8")
    return path


MRPC_HEADER = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
MRPC_TEST_HEADER = ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"]


def mrpc_dir(tmp_path, train_rows=None):
    d = tmp_path / "MRPC"
    write_tsv(d / "train.tsv", [MRPC_HEADER] + (train_rows or [
        ["1", "1", "2", 'He said " yes " .', "He agreed ."],
        ["0", "3", "4", "Dogs bark .", "Cats sleep ."],
    ]), bom=True)
    write_tsv(d / "dev.tsv", [MRPC_HEADER, ["1", "5", "6", "A b .", "A b c ."]], bom=True)
    write_tsv(d / "test.tsv", [MRPC_TEST_HEADER, ["0", "7", "8", "X .", "Y ."], ["1", "9", "10", "Z .", "W ."]])
    return d


# ---- the real MRPC files -----------------------------------------------------------------------------

def test_real_mrpc_counts_and_fields(shared_data):
    processor = processor_for("MRPC")
    data_dir = shared_data / "glue_data" / "MRPC"
    train = processor.examples(data_dir, "train")
    dev = processor.examples(data_dir, "dev")
    test = processor.examples(data_dir, "test")
    assert (len(train), len(dev), len(test)) == (3668, 408, 1725)
    assert sum(e.label == "1" for e in train) == 2474
    assert sum(e.label == "1" for e in dev) == 279
    # the BOM is not part of the first header name, and quotes stay literal characters
    assert train[0].label == "1" and train[0].text_a.startswith("Amrozi accused his brother")
    assert '" the witness "' in train[0].text_a
    assert dev[0].text_b.startswith('" The foodservice pie business')
    assert all(e.label is None for e in test)
    assert [e.index for e in test[:3]] == ["0", "1", "2"] and test[-1].index == "1724"


# ---- synthetic files for every task ------------------------------------------------------------------

def test_mrpc_synthetic_bom_and_quotes(tmp_path):
    d = mrpc_dir(tmp_path)
    train = processor_for("mrpc").examples(d, "train")
    assert [e.label for e in train] == ["1", "0"]
    assert train[0].text_a == 'He said " yes " .' and train[0].text_b == "He agreed ."
    assert train[0].guid == "train-2"
    test = processor_for("mrpc").examples(d, "test")
    assert [(e.index, e.text_a, e.text_b) for e in test] == [("0", "X .", "Y ."), ("1", "Z .", "W .")]


@pytest.mark.parametrize("task, train_lines, test_lines, expected, expected_test", [
    ("sst-2", [["sentence", "label"], ["a fine film ", "1"], ["dull", "0"]],
     [["index", "sentence"], ["0", "great"]],
     [("a fine film ", None, "1"), ("dull", None, "0")], [("0", "great", None)]),
    ("cola", [["gj04", "1", "", "The book was read ."], ["gj04", "0", "*", "Book the read was ."]],
     [["index", "sentence"], ["0", "Read it ."]],
     [("The book was read .", None, "1"), ("Book the read was .", None, "0")], [("0", "Read it .", None)]),
    ("sts-b", [["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
                "score"], ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "A plane.", "A jet.",
                           "5.000"], ["1", "g", "f", "y", "2", "n", "n", "A man.", "A dog.", "0.5"]],
     [["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"],
      ["0", "g", "f", "y", "o", "n", "n", "S1.", "S2."]],
     [("A plane.", "A jet.", 5.0), ("A man.", "A dog.", 0.5)], [("0", "S1.", "S2.")]),
    ("qqp", [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
             ["201", "1", "2", "How do I cook?", "How to cook?", "1"]],
     [["id", "question1", "question2"], ["0", "Why?", "Why not?"]],
     [("How do I cook?", "How to cook?", "1")], [("0", "Why?", "Why not?")]),
    ("qnli", [["index", "question", "sentence", "label"], ["0", "Who?", "Him.", "entailment"],
              ["1", "When?", "Blue.", "not_entailment"]],
     [["index", "question", "sentence"], ["0", "Where?", "Here."]],
     [("Who?", "Him.", "entailment"), ("When?", "Blue.", "not_entailment")], [("0", "Where?", "Here.")]),
    ("rte", [["index", "sentence1", "sentence2", "label"], ["0", "It rains.", "It is wet.", "entailment"]],
     [["index", "sentence1", "sentence2"], ["0", "P.", "H."]],
     [("It rains.", "It is wet.", "entailment")], [("0", "P.", "H.")]),
])
def test_task_processors_read_their_layout(tmp_path, task, train_lines, test_lines, expected, expected_test):
    processor = processor_for(task)
    write_tsv(tmp_path / "train.tsv", train_lines)
    write_tsv(tmp_path / "dev.tsv", train_lines)
    write_tsv(tmp_path / "test.tsv", test_lines)
    for split in ("train", "dev"):
        got = [(e.text_a, e.text_b, e.label) for e in processor.examples(tmp_path, split)]
        assert got == expected
    assert [(e.index, e.text_a, e.text_b) for e in processor.examples(tmp_path, "test")] == expected_test
    assert processor.num_labels == (1 if task == "sts-b" else 2)


def test_mnli_train_and_dev_have_different_widths(tmp_path):
    base = ["index", "promptID", "pairID", "genre", "s1_bin", "s2_bin", "s1_parse", "s2_parse", "sentence1",
            "sentence2"]
    write_tsv(tmp_path / "train.tsv", [base + ["label1", "gold_label"],
                                       ["0"] * 8 + ["Premise.", "Hypothesis.", "neutral", "neutral"]])
    write_tsv(tmp_path / "dev_matched.tsv", [base + [f"label{i}" for i in range(1, 6)] + ["gold_label"],
                                             ["0"] * 8 + ["P.", "H."] + ["entailment"] * 5 + ["entailment"]])
    write_tsv(tmp_path / "dev_mismatched.tsv", [base + ["label1", "gold_label"],
                                                ["0"] * 8 + ["P2.", "H2.", "contradiction", "contradiction"]])
    mnli, mm = processor_for("mnli"), processor_for("mnli-mm")
    assert [(e.text_a, e.label) for e in mnli.examples(tmp_path, "train")] == [("Premise.", "neutral")]
    assert [(e.text_b, e.label) for e in mnli.examples(tmp_path, "dev")] == [("H.", "entailment")]
    assert [(e.text_a, e.label) for e in mm.examples(tmp_path, "dev")] == [("P2.", "contradiction")]
    assert mnli.num_labels == 3 and mnli.label_id("neutral") == 2


# ---- bad input --------------------------------------------------------------------------------------

def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(GlueDataError, match=r"MRPC/train\.tsv: file not found"):
        processor_for("mrpc").examples(tmp_path / "MRPC", "train")


def test_wrong_column_count_names_file_and_line(tmp_path):
    d = mrpc_dir(tmp_path, train_rows=[["1", "1", "2", "ok .", "ok ."], ["0", "3", "4", "only four cols"]])
    with pytest.raises(GlueDataError) as err:
        processor_for("mrpc").examples(d, "train")
    message = str(err.value)
    assert message == f"{d / 'train.tsv'}:3: expected 5 tab-separated columns, found 4"
    assert "\n" not in message


def test_label_outside_set_is_reported(tmp_path):
    d = mrpc_dir(tmp_path, train_rows=[["1", "1", "2", "a .", "b ."], ["2", "3", "4", "c .", "d ."]])
    with pytest.raises(GlueDataError, match=r"train\.tsv:3: label '2' is not one of \{0, 1\}"):
        processor_for("mrpc").examples(d, "train")


def test_header_only_and_unknown_task(tmp_path):
    write_tsv(tmp_path / "train.tsv", [MRPC_HEADER], bom=True)
    with pytest.raises(GlueDataError, match="no data rows"):
        processor_for("mrpc").examples(tmp_path, "train")
    with pytest.raises(GlueDataError, match="not a GLUE task"):
        processor_for("squad")


def test_stsb_score_must_be_a_number(tmp_path):
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
              "score"]
    write_tsv(tmp_path / "train.tsv", [header, ["0", "g", "f", "y", "o", "n", "n", "a", "b", "high"]])
    with pytest.raises(GlueDataError, match=r"train\.tsv:2: label 'high' is not a number"):
        processor_for("stsb").examples(tmp_path, "train")


# ---- tokenization and batching ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(shared_data):
    from transformers import BertTokenizer

    return BertTokenizer(vocab=str(shared_data / "vocab" / "bert-base-uncased-vocab.txt"), do_lower_case=True)


def test_tokenize_pairs_truncates_longest_first(tmp_path, tokenizer):
    processor = processor_for("mrpc")
    examples = processor.examples(mrpc_dir(tmp_path), "train")
    features = glue_data.tokenize_examples(examples, tokenizer, processor, max_seq_length=8)
    # 'He said " yes " .' + 'He agreed .' is 6 + 3 word pieces + 3 specials = 12 -> truncated to 8
    assert [len(f["input_ids"]) for f in features] == [8, 8]
    assert features[0]["input_ids"][0] == tokenizer.cls_token_id and features[0]["labels"] == 1
    full = glue_data.tokenize_examples(examples, tokenizer, processor, max_seq_length=128)
    assert [len(f["input_ids"]) for f in full] == [12, 9]     # unpadded: padding is per batch
    assert full[1]["token_type_ids"] == [0] * 5 + [1] * 4
    assert full[1]["attention_mask"] == [1] * 9 and full[1]["labels"] == 0
    assert tokenizer.decode(full[1]["input_ids"]) == "[CLS] dogs bark. [SEP] cats sleep. [SEP]"


def test_test_split_features_have_no_labels(tmp_path, tokenizer):
    processor = processor_for("mrpc")
    features = glue_data.tokenize_examples(processor.examples(mrpc_dir(tmp_path), "test"), tokenizer, processor, 32)
    assert len(features) == 2 and all("labels" not in f for f in features)


def test_regression_labels_are_floats(tmp_path, tokenizer):
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
              "score"]
    write_tsv(tmp_path / "train.tsv", [header, ["0", "g", "f", "y", "o", "n", "n", "a b", "c", "3.2"]])
    processor = processor_for("sts-b")
    features = glue_data.tokenize_examples(processor.examples(tmp_path, "train"), tokenizer, processor, 32)
    assert features[0]["labels"] == pytest.approx(3.2) and isinstance(features[0]["labels"], float)


def test_length_grouped_batches_cover_every_index_once():
    lengths = [(i * 37) % 101 + 1 for i in range(1000)]
    sampler = glue_data.LengthGroupedBatchSampler(lengths, batch_size=32, seed=3, mega=4)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 32
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert [len(b) for b in batches[:-1]] == [32] * 31 and len(batches[-1]) == 1000 - 31 * 32
    # grouping cuts padding: mean batch width well below that of random batches
    grouped = sum(max(lengths[i] for i in b) for b in batches) / len(batches)
    assert grouped < 0.8 * 101
    sampler.set_epoch(1)
    assert list(sampler) != batches                  # a fresh grouping each epoch
    sampler.set_epoch(0)
    assert list(sampler) == batches                  # and reproducible
