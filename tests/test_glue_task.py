"""GLUE fine-tuning end to end (finetuning.run_glue -> glue_task on the shared loop), tiny models only."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from central.dllog import read_dllogger
from finetuning import glue_task, run_glue

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BERT_DISABLE_PROGRESS", "1")

MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
TEST_HEADER = "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


@pytest.fixture(scope="module")
def vocab(shared_data):
    return str(shared_data / "vocab" / "bert-base-uncased-vocab.txt")


def base_argv(data_dir, output_dir, vocab, *extra):
    return ["--task_name", "mrpc", "--model_name_or_path", "tiny", "--vocab_file", vocab,
            "--data_dir", str(data_dir), "--output_dir", str(output_dir), "--device", "cpu",
            "--disable_progress_bar", *extra]


def read_tsv(path):
    with open(path, encoding="utf-8") as handle:
        return list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def write_mrpc(directory: Path, train_rows, dev_rows=None, test_rows=None):
    """Synthetic MRPC folder in GLUE's exact layout (BOM header on train/dev, index column on test)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows, header in (("train.tsv", train_rows, MRPC_HEADER), ("dev.tsv", dev_rows or train_rows, MRPC_HEADER),
                               ("test.tsv", test_rows, TEST_HEADER)):
        if rows is None:
            rows = [[str(i), "1", "2", "a .", "b ."] for i in range(len(train_rows))]
        (directory / name).write_text(header + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return directory


def test_tiny_model_trains_on_real_mrpc_rows_and_writes_all_outputs(tmp_path, shared_data, vocab, child_env):
    """The CLI as the launcher runs it: a few steps on real MRPC rows, eval during and after, test predictions."""
    out = tmp_path / "mrpc"
    data_dir = shared_data / "glue_data" / "MRPC"
    argv = base_argv(data_dir, out, vocab, "--do_train", "--do_eval", "--do_predict", "--max_train_samples", "48",
                     "--max_steps", "4", "--eval_steps", "2", "--logging_steps", "1",
                     "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "64")
    proc = subprocess.run([sys.executable, "-m", "finetuning.run_glue", *argv], env=child_env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]

    results = json.loads((out / "eval_results.json").read_text())
    assert set(results) >= {"accuracy", "f1", "acc_and_f1", "eval_loss"}
    assert results["num_examples"] == 408 and results["global_step"] == 4
    assert 0.0 <= results["accuracy"] <= 1.0 and results["acc_and_f1"] == pytest.approx(
        (results["accuracy"] + results["f1"]) / 2)

    rows = read_tsv(out / "test_results_mrpc.tsv")
    assert rows[0] == ["index", "prediction"]
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(1725)]
    assert {r[1] for r in rows[1:]} <= {"0", "1"}

    # the fine-tuned model reloads with transformers and the training log has loss + mid-training evals
    from transformers import BertForSequenceClassification

    reloaded = BertForSequenceClassification.from_pretrained(out)
    assert reloaded.config.num_labels == 2
    records = read_dllogger(out / "dllogger.json")
    losses = [r["data"]["loss"] for r in records if "loss" in r["data"]]
    assert len(losses) == 4 and all(l == l for l in losses)  # finite, one per step
    assert [r["step"][1] for r in records if "eval_accuracy" in r["data"] and r["step"]] == [2]


def test_learns_a_separable_synthetic_task_and_predicts_in_test_order(tmp_path, monkeypatch):
    """Label 1 exactly when the second sentence starts with 'yes': a tiny model must get dev right.
    Batches are padded to their longest pair, never to --max_seq_length."""
    from finetuning.batches import PaddingCollator

    widths = []
    collate = PaddingCollator.__call__
    monkeypatch.setattr(PaddingCollator, "__call__",
                        lambda self, features: widths.append(collate(self, features)["input_ids"].shape[1])
                        or collate(self, features))
    words = ["red", "blue", "green", "stone", "river", "cloud", "house", "tree"]
    small_vocab = tmp_path / "vocab.txt"  # a 16-token vocabulary keeps the model (and the test) small
    small_vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "yes", "no", "."] + words) + "\n")
    train = []
    for i in range(48):
        label = (i // 3) % 2
        a = f"{words[i % 8]} {words[(i * 3) % 8]} ."
        b = ("yes " if label else "no ") + " ".join(words[(i + k) % 8] for k in range(1 + i % 5)) + " ."
        train.append([str(label), str(i), str(i + 1), a, b])
    test = [["7", "1", "2"] + train[4][3:], ["3", "1", "2"] + train[1][3:]]  # labels 1 then 0
    data_dir = write_mrpc(tmp_path / "data", train, dev_rows=train[:24], test_rows=test)
    argv = base_argv(data_dir, tmp_path / "out", str(small_vocab), "--do_train", "--do_eval", "--do_predict",
                     "--learning_rate", "3e-3", "--num_train_epochs", "5", "--per_device_train_batch_size", "8",
                     "--warmup_proportion", "0.1", "--seed", "1", "--group_by_length")
    assert run_glue.main(argv) == 0
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert results["accuracy"] == 1.0 and results["f1"] == 1.0
    assert read_tsv(tmp_path / "out" / "test_results_mrpc.tsv") == [["index", "prediction"], ["7", "1"], ["3", "0"]]
    # pairs here are 8 to 13 tokens long: every batch is that wide, not 128
    assert widths and max(widths) <= 13 and min(widths) >= 8


def test_length_sorted_evaluation_matches_plain_order(tmp_path, vocab):
    """Eval batches are formed from length-sorted pairs; the logits must come back in the original order."""
    from transformers import BertForSequenceClassification

    from central.distributed import DistEnv
    from central.runtime import Runtime
    from finetuning.batches import PaddingCollator
    from finetuning.glue_data import processor_for, tokenize_examples
    from finetuning.inference import predict
    from finetuning.model_loading import load_model

    rows = [[str(i % 2), "1", "2", "word " * (1 + (7 * i) % 13), "other " * (1 + (5 * i) % 9)] for i in range(20)]
    data_dir = write_mrpc(tmp_path / "data", rows)
    processor = processor_for("mrpc")
    torch.manual_seed(0)
    loaded = load_model("tiny", BertForSequenceClassification, vocab_file=vocab, num_labels=2)
    features = tokenize_examples(processor.examples(data_dir, "dev"), loaded.tokenizer, processor, 64)
    runtime = Runtime("cpu", "eager", "fp32", torch.device("cpu"), DistEnv())
    collate = PaddingCollator(loaded.tokenizer.pad_token_id)
    sorted_logits, loss = glue_task._logits_in_order(loaded.model, features, runtime, 4, collate)
    one_by_one = torch.cat([out["logits"] for _, out in predict(loaded.model, features, runtime, 1, collate)])
    torch.testing.assert_close(sorted_logits, one_by_one, atol=1e-5, rtol=1e-4)
    assert loss > 0


def test_regression_task_end_to_end(tmp_path, vocab):
    """STS-B: one output, float scores, 3-decimal predictions, pearson/spearman in eval_results.json."""
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    rows = "".join(f"{i}\tg\tf\ty\to\tn\tn\tthe cat {'sat ' * (i % 4)}.\tthe cat .\t{i % 4 + 0.5}\n" for i in range(16))
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / name).write_text(header + rows, encoding="utf-8")
    (tmp_path / "test.tsv").write_text(header.replace("\tscore", "") + "0\tg\tf\ty\to\tn\tn\ta .\tb .\n",
                                       encoding="utf-8")
    argv = ["--task_name", "sts-b", "--model_name_or_path", "tiny", "--vocab_file", vocab, "--data_dir", str(tmp_path),
            "--output_dir", str(tmp_path / "out"), "--device", "cpu", "--do_train", "--do_eval", "--do_predict",
            "--max_steps", "3", "--disable_progress_bar"]
    assert run_glue.main(argv) == 0
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert set(results) >= {"pearson", "spearmanr", "corr", "eval_loss"}
    rows = read_tsv(tmp_path / "out" / "test_results_sts-b.tsv")
    assert rows[0] == ["index", "prediction"] and rows[1][0] == "0" and len(rows[1][1].split(".")[1]) == 3


# ---- bad input: exit 2, one line naming the input ---------------------------------------------------

def one_error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_missing_tsv_exits_2(tmp_path, vocab, capsys):
    data_dir = tmp_path / "MRPC"
    data_dir.mkdir()
    (data_dir / "train.tsv").write_text(MRPC_HEADER + "1\t1\t2\ta .\tb .\n", encoding="utf-8")
    status = run_glue.main(base_argv(data_dir, tmp_path / "out", vocab, "--do_train", "--do_eval"))
    assert status == 2
    assert one_error_line(capsys) == f"error: {data_dir / 'dev.tsv'}: file not found"
    assert not (tmp_path / "out").exists()  # failed before writing anything


def test_wrong_column_count_exits_2_with_file_and_line(tmp_path, vocab, capsys):
    rows = [["1", "1", "2", "a .", "b ."], ["0", "1", "2", "a .", "b .", "extra"]]
    data_dir = write_mrpc(tmp_path / "MRPC", rows)
    assert run_glue.main(base_argv(data_dir, tmp_path / "out", vocab, "--do_train")) == 2
    assert one_error_line(capsys) == (f"error: {data_dir / 'train.tsv'}:3: expected 5 tab-separated "
                                      f"columns, found 6")


def test_label_outside_0_1_exits_2(tmp_path, vocab, capsys):
    rows = [["1", "1", "2", "a .", "b ."], ["1", "1", "2", "a .", "b ."], ["yes", "1", "2", "a .", "b ."]]
    data_dir = write_mrpc(tmp_path / "MRPC", rows)
    assert run_glue.main(base_argv(data_dir, tmp_path / "out", vocab, "--do_eval")) == 2
    assert one_error_line(capsys) == (f"error: {data_dir / 'dev.tsv'}:4: label 'yes' is not one of "
                                      f"{{0, 1}}")


def test_debug_shows_the_traceback(tmp_path, vocab):
    from finetuning.glue_data import GlueDataError

    with pytest.raises(GlueDataError):
        run_glue.main(base_argv(tmp_path / "nowhere", tmp_path / "out", vocab, "--do_eval", "--debug"))


def test_existing_model_is_not_overwritten_without_the_flag(tmp_path, vocab, capsys):
    data_dir = write_mrpc(tmp_path / "MRPC", [["1", "1", "2", "a .", "b ."], ["0", "3", "4", "c .", "d ."]])
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"previous run")
    assert run_glue.main(base_argv(data_dir, out, vocab, "--do_train")) == 2
    assert "--overwrite_output_dir" in one_error_line(capsys)
    assert (out / "model.safetensors").read_bytes() == b"previous run"


def test_nothing_to_do_and_unknown_task_exit_2(tmp_path, vocab, capsys):
    assert run_glue.main(base_argv(tmp_path, tmp_path / "out", vocab)) == 2
    assert "nothing to do" in one_error_line(capsys)
    argv = base_argv(tmp_path, tmp_path / "out", vocab, "--do_eval")
    argv[argv.index("mrpc")] = "squad2"
    assert run_glue.main(argv) == 2
    assert "not a GLUE task" in one_error_line(capsys)


def test_pretraining_checkpoint_fine_tunes_on_mrpc(tmp_path, shared_data, vocab):
    """A ckpt_N.pt as this project's pre-training writes it ({'model': state_dict, 'config': dict}) fine-tunes on
    real MRPC rows; the saved encoder is the checkpoint's, moved only by the few training steps."""
    from safetensors.torch import load_file

    from pretraining.bert_config import BertConfig, count_vocab
    from pretraining.modeling import BertForPreTraining

    config = BertConfig(vocab_size=count_vocab(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(3)
    pretrained = BertForPreTraining(config)
    checkpoint = tmp_path / "checkpoints" / "ckpt_7.pt"
    checkpoint.parent.mkdir()
    torch.save({"model": pretrained.state_dict(), "config": config.to_dict(), "global_step": 7}, checkpoint)

    out = tmp_path / "mrpc"
    argv = ["--task_name", "mrpc", "--model_name_or_path", str(checkpoint), "--vocab_file", vocab,
            "--data_dir", str(shared_data / "glue_data" / "MRPC"), "--output_dir", str(out), "--device", "cpu",
            "--do_train", "--do_eval", "--max_train_samples", "32", "--max_eval_samples", "64", "--max_steps", "3",
            "--learning_rate", "1e-4", "--disable_progress_bar"]
    assert run_glue.main(argv) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert results["num_examples"] == 64 and 0.0 <= results["accuracy"] <= 1.0

    saved = load_file(out / "model.safetensors")
    source = pretrained.state_dict()
    for key in ("bert.encoder.layer.1.attention.self.query.weight", "bert.embeddings.word_embeddings.weight"):
        start = source[key][: saved[key].shape[0]]
        moved = (saved[key] - start).abs().max().item()
        assert 0.0 < moved < 1e-3, (key, moved)  # 3 AdamW steps of 1e-4 from the checkpoint, not a fresh init
    assert saved["classifier.weight"].shape == (2, 32)


def test_stop_signal_saves_skips_evaluation_and_exits_128_plus_signal(tmp_path, vocab, monkeypatch):
    real_train = glue_task.train

    def interrupted(*args, **kwargs):
        result = real_train(*args, **kwargs)
        result.stopped_by_signal = 15  # as if SIGTERM arrived during the last step
        return result

    monkeypatch.setattr(glue_task, "train", interrupted)
    data_dir = write_mrpc(tmp_path / "MRPC", [["1", "1", "2", "a b .", "b ."], ["0", "3", "4", "c .", "d e ."]])
    out = tmp_path / "out"
    assert run_glue.main(base_argv(data_dir, out, vocab, "--do_train", "--do_eval", "--max_steps", "1")) == 128 + 15
    assert (out / "model.safetensors").is_file() and not (out / "eval_results.json").exists()
