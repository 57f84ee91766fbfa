"""SQuAD end to end on CPU (finetuning/run_squad.py -> squad_task.run), from a preset, a saved model and a
pre-training checkpoint; and every kind of bad input ending with exit status 2 and one line."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from central.dllog import read_dllogger
from finetuning.run_squad import main
from finetuning.squad_data import gold_answers, read_squad
from finetuning.squad_metrics import evaluate

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BERT_DISABLE_PROGRESS", "1")

TRAIN_ARTICLES = ("Jacksonville,_Florida", "Construction")
PREDICT_ARTICLES = ("Intergovernmental_Panel_on_Climate_Change", "Packet_switching")


@pytest.fixture(scope="module")
def squad_dir(shared_data, tmp_path_factory):
    """A --data_dir with the default names: train = two dev articles, dev = two other dev articles."""
    with open(shared_data / "squad" / "dev-v1.1.json", encoding="utf-8") as handle:
        dev = json.load(handle)
    by_title = {article["title"]: article for article in dev["data"]}
    folder = tmp_path_factory.mktemp("squad")
    for name, titles in (("train-v1.1.json", TRAIN_ARTICLES), ("dev-v1.1.json", PREDICT_ARTICLES)):
        subset = {"version": "1.1", "data": [by_title[title] for title in titles]}
        (folder / name).write_text(json.dumps(subset), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def vocab(shared_data):
    return str(shared_data / "vocab" / "bert-base-uncased-vocab.txt")


def common(data_dir, output_dir, *extra):
    return ["--data_dir", str(data_dir), "--output_dir", str(output_dir), "--device", "cpu",
            "--max_seq_length", "128", "--doc_stride", "64", "--per_device_train_batch_size", "8",
            "--per_device_eval_batch_size", "64", "--logging_steps", "2", "--learning_rate", "1e-3", *extra]


def test_tiny_model_trains_predicts_every_question_and_scores(squad_dir, vocab, tmp_path):
    out = tmp_path / "squad"
    assert main(["--model_name_or_path", "tiny", "--vocab_file", vocab, "--do_train", "--do_eval",
                 "--max_steps", "4", *common(squad_dir, out)]) == 0

    examples = read_squad(squad_dir / "dev-v1.1.json")
    predictions = json.loads((out / "predictions.json").read_text())
    nbest = json.loads((out / "nbest_predictions.json").read_text())
    results = json.loads((out / "eval_results.json").read_text())
    assert set(predictions) == {ex.qid for ex in examples} and len(predictions) == 210
    assert all(isinstance(text, str) for text in predictions.values())
    assert set(nbest) == set(predictions)
    for qid, entries in nbest.items():
        assert 1 <= len(entries) <= 20 and entries[0]["text"] == predictions[qid]
        assert sum(e["probability"] for e in entries) == pytest.approx(1.0)
    contexts = {ex.qid: ex.context for ex in examples}
    assert all(text in contexts[qid] for qid, text in predictions.items())  # cut from the passage itself
    assert results["exact_match"] == pytest.approx(evaluate(gold_answers(examples), predictions)["exact_match"])
    assert results["f1"] == pytest.approx(evaluate(gold_answers(examples), predictions)["f1"])
    assert 0 <= results["exact_match"] <= results["f1"] <= 100

    records = read_dllogger(out / "dllogger.json")
    steps = [r["step"][1] for r in records if isinstance(r["step"], list) and len(r["step"]) == 2]
    assert steps == [2, 4]
    finals = {k: v for r in records if r["step"] == [] for k, v in r["data"].items()}
    assert finals["e2e_train_time"] > 0 and finals["training_sequences_per_second"] > 0
    assert finals["f1"] == pytest.approx(results["f1"])
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"):
        assert (out / name).is_file(), name

    # The saved folder is a model of its own: evaluating it again (file given as a path) predicts the same.
    again = tmp_path / "again"
    assert main(["--model_name_or_path", str(out), "--do_eval", "--predict_file", str(squad_dir / "dev-v1.1.json"),
                 *common(tmp_path, again)]) == 0  # --data_dir holds no dev file: the path is used as given
    assert json.loads((again / "predictions.json").read_text()) == predictions


def test_fine_tunes_from_this_projects_pretraining_checkpoint_and_export(squad_dir, vocab, tmp_path):
    from transformers import BertForQuestionAnswering

    from finetuning.model_loading import load_model
    from pretraining.bert_config import PRESETS
    from pretraining.hf_conversion import export_hf
    from pretraining.modeling import BertForPreTraining

    config = PRESETS["tiny"].with_vocab_size(30522)
    torch.manual_seed(7)
    pretrained = BertForPreTraining(config)
    checkpoint = tmp_path / "checkpoints" / "ckpt_12.pt"
    checkpoint.parent.mkdir()
    torch.save({"model": pretrained.state_dict(), "config": config.to_dict(), "global_step": 12}, checkpoint)

    ours = pretrained.state_dict()
    for source in (checkpoint, export_hf(pretrained, config, vocab, tmp_path / "export")):
        loaded = load_model(str(source), BertForQuestionAnswering, vocab_file=vocab)
        state = loaded.model.state_dict()
        for key in ("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.1.output.dense.weight",
                    "bert.encoder.layer.0.attention.self.query.bias", "bert.embeddings.LayerNorm.weight"):
            assert torch.equal(state[key], ours[key][:state[key].shape[0]]), (source, key)
    assert "step 12" in load_model(str(checkpoint), BertForQuestionAnswering, vocab_file=vocab).source

    out = tmp_path / "from_ckpt"
    assert main(["--model_name_or_path", str(checkpoint), "--vocab_file", vocab, "--do_train", "--do_eval",
                 "--max_steps", "2", *common(squad_dir, out)]) == 0
    assert len(json.loads((out / "predictions.json").read_text())) == 210
    assert set(json.loads((out / "eval_results.json").read_text())) >= {"exact_match", "f1"}


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def squad_doc(qa=None, version="1.1", context="Paris is the capital of France."):
    qa = qa if qa is not None else {"id": "q1", "question": "What is the capital?",
                                    "answers": [{"text": "Paris", "answer_start": 0}]}
    return json.dumps({"version": version, "data": [{"title": "t", "paragraphs": [{"context": context,
                                                                                      "qas": [qa]}]}]})


BAD_FILES = [
    ("not json", "{ this is not json", "not valid JSON"),
    ("v2", squad_doc(version="v2.0"), "version 'v2.0' is not supported"),
    ("no data", json.dumps({"version": "1.1"}), '"data" must be a list, found missing'),
    ("no question", squad_doc({"id": "q1", "answers": [{"text": "Paris", "answer_start": 0}]}),
     r"data\[0\]\.paragraphs\[0\]\.qas\[0\]\.question must be a string, found missing"),
    ("no answers", squad_doc({"id": "q1", "question": "?"}), r"qas\[0\]\.answers must be a list, found missing"),
    ("bad start", squad_doc({"id": "q1", "question": "?", "answers": [{"text": "Paris", "answer_start": 99}]}),
     "answer_start 99 lies outside the context"),
    ("string start", squad_doc({"id": "q1", "question": "?", "answers": [{"text": "Paris", "answer_start": "0"}]}),
     "answer_start must be an integer, found a str"),
]


@pytest.mark.parametrize("label,text,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_malformed_squad_file_exits_2_with_one_line(label, text, message, tmp_path, vocab, capsys):
    bad = write(tmp_path / "train-v1.1.json", text)
    out = tmp_path / "out"
    code = main(["--model_name_or_path", "tiny", "--vocab_file", vocab, "--do_train", *common(tmp_path, out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: SQuAD file ")
    assert str(bad) in err
    assert re.search(message, err), err
    assert not out.exists()  # nothing written for a run that could not start


@pytest.mark.parametrize("extra,message", [
    (["--train_file", "missing.json"], "--train_file missing.json: no such file"),
    (["--max_seq_length", "60"], "--max_seq_length 60 is too small for the query"),
    (["--doc_stride", "128", "--max_seq_length", "128"], "--doc_stride 128 must be smaller than --max_seq_length 128"),
    (["--max_seq_length", "1024"], "--max_seq_length 1024 exceeds the model's max_position_embeddings"),
])
def test_bad_settings_exit_2_with_one_line(extra, message, squad_dir, vocab, tmp_path, capsys):
    args = ["--model_name_or_path", "tiny", "--vocab_file", vocab, "--do_train", *common(squad_dir, tmp_path / "o")]
    code = main(args + extra)  # later flags win
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_nothing_to_do_and_missing_data_dir(squad_dir, vocab, tmp_path, capsys):
    assert main(["--model_name_or_path", "tiny", "--vocab_file", vocab, *common(squad_dir, tmp_path / "o")]) == 2
    assert "pass --do_train and/or --do_eval" in capsys.readouterr().err
    assert main(["--model_name_or_path", "tiny", "--do_eval", *common(tmp_path / "nope", tmp_path / "o")]) == 2
    assert "--data_dir" in capsys.readouterr().err


def test_command_line_exit_status_and_no_traceback(tmp_path, vocab, child_env):
    write(tmp_path / "dev-v1.1.json", "[1, 2")
    process = subprocess.run(
        [sys.executable, "-m", "finetuning.run_squad", "--model_name_or_path", "base", "--do_eval",
         *common(tmp_path, tmp_path / "out")], env=dict(child_env, HF_HUB_OFFLINE="1"),
        capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and "not valid JSON" in lines[0] and "Traceback" not in process.stderr

    write(tmp_path / "dev-v1.1.json", squad_doc())  # valid data: now the uncached hub name is the problem
    process = subprocess.run(
        [sys.executable, "-m", "finetuning.run_squad", "--model_name_or_path", "base", "--do_eval",
         *common(tmp_path, tmp_path / "out")], env=dict(child_env, HF_HUB_OFFLINE="1"),
        capture_output=True, text=True, timeout=120)
    assert process.returncode == 2, process.stderr
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --model_name_or_path base (hub id bert-base-uncased)")


@pytest.mark.mpi
def test_two_ranks_under_torchrun(squad_dir, vocab, tmp_path, child_env):
    out = tmp_path / "ddp"
    process = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29631",
         "-m", "finetuning.run_squad", "--model_name_or_path", "tiny", "--vocab_file", vocab, "--do_train",
         "--do_eval", "--max_steps", "3", *common(squad_dir, out)],
        env=dict(child_env, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-2000:]
    parameters = [r["data"] for r in read_dllogger(out / "dllogger.json") if r["step"] == "PARAMETER"]
    assert any(p.get("world_size") == 2 for p in parameters)
    steps = [r["step"][1] for r in read_dllogger(out / "dllogger.json") if isinstance(r["step"], list) and r["step"]]
    assert steps == [2, 3]  # one writer (rank 0): each logging step once
    assert len(json.loads((out / "predictions.json").read_text())) == 210
