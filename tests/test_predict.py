"""`demo_bert.py predict` with tiny model folders saved the way fine-tuning saves them.

The QA model is wired so its answer is known: one encoder layer whose attention and feed-forward
outputs are zeroed (each sub-layer then passes its input through), no position/segment embeddings,
so the last hidden state of a token is LayerNorm(word embedding). The QA head's start and end rows are
that vector for the word "london", so the best span is exactly the context's "london". The classifier
has zero weights and biases (0, 2): label 1 with probability softmax(0, 2)[1] = 0.8808.
"""
import inspect
import json
import math
import subprocess
import sys

import pytest
import torch

from tools import predict



@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


CONTEXT = "The old road runs from the hills past london and ends at the sea."


def tokenizer_for(shared_data):
    from transformers import BertTokenizerFast

    key = "vocab_file" if "vocab_file" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab"
    return BertTokenizerFast(**{key: str(shared_data / "vocab" / "bert-base-uncased-vocab.txt")}, do_lower_case=True)


def tiny_config(num_labels=2):
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=128, num_labels=num_labels)


def pass_through(model):
    layer = model.bert.encoder.layer[0]
    for dense in (layer.attention.output.dense, layer.output.dense):
        dense.weight.zero_()
        dense.bias.zero_()
    model.bert.embeddings.position_embeddings.weight.zero_()
    model.bert.embeddings.token_type_embeddings.weight.zero_()


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory, shared_data):
    from transformers import BertForQuestionAnswering

    torch.manual_seed(0)
    tokenizer = tokenizer_for(shared_data)
    model = BertForQuestionAnswering(tiny_config()).eval()
    with torch.no_grad():
        pass_through(model)
        target = model.bert.embeddings.word_embeddings.weight[tokenizer.convert_tokens_to_ids("london")]
        direction = torch.nn.functional.layer_norm(target, (32,))
        model.qa_outputs.weight.copy_(torch.stack([direction, direction]))
        model.qa_outputs.bias.zero_()
    folder = tmp_path_factory.mktemp("qa_model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory, shared_data):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config()).eval()
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 2.0]))
    folder = tmp_path_factory.mktemp("mrpc_model")
    model.save_pretrained(folder)
    tokenizer_for(shared_data).save_pretrained(folder)
    return folder


def test_squad_prints_the_answer_span_and_its_score(qa_dir, capsys):
    assert predict.main(["--task_name", "squad", "--model_name_or_path", str(qa_dir), "--device", "cpu",
                         "--question", "Where does the road go?", "--context", CONTEXT]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "answer: london"
    score = float(lines[1].split(": ")[1])
    assert 0.5 < score <= 1.0 and len(lines) == 2


def test_squad_long_context_uses_windows(qa_dir, capsys):
    # 60 filler words before the answer with max_seq_length 32: the answer is only in a later window.
    context = "the hills are green . " * 12 + CONTEXT
    assert predict.main(["--task_name", "squad", "--model_name_or_path", str(qa_dir), "--device", "cpu",
                         "--max_seq_length", "32", "--doc_stride", "8", "--max_query_length", "8",
                         "--question", "Where?", "--context", context]) == 0
    out = capsys.readouterr().out
    assert out.startswith("answer: london\n")


def test_mrpc_prints_label_and_probability(pair_dir, capsys):
    assert predict.main(["--task_name", "mrpc", "--model_name_or_path", str(pair_dir), "--device", "cpu",
                         "--sentence1", "Cora lives in Stonebridge.",
                         "--sentence2", "Stonebridge is where Cora lives."]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "label: equivalent (1)"
    expected = math.exp(2) / (1 + math.exp(2))
    assert float(lines[1].split(": ")[1]) == pytest.approx(expected, abs=1e-4)


def test_json_lines_input_and_output_file(qa_dir, pair_dir, tmp_path, capsys):
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"id": "a", "question": "Where?", "context": CONTEXT}) + "\n\n"
                         + json.dumps({"question": "And?", "context": "Then london again."}) + "\n")
    out_file = tmp_path / "answers.jsonl"
    assert predict.main(["--task_name", "squad", "--model_name_or_path", str(qa_dir), "--device", "cpu",
                         "--input_file", str(questions), "--output_file", str(out_file)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["id"] for r in printed] == ["a", "1"]
    assert [r["answer"] for r in printed] == ["london", "london"]
    assert all(0.5 < r["score"] <= 1.0 for r in printed)
    assert [json.loads(line) for line in out_file.read_text().splitlines()] == printed

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": i, "sentence1": "A b.", "sentence2": "C d."}) + "\n" for i in range(3)))
    assert predict.main(["--task_name", "mrpc", "--model_name_or_path", str(pair_dir), "--device", "cpu",
                         "--input_file", str(pairs), "--batch_size", "2"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["id"] for r in printed] == ["0", "1", "2"]
    assert {r["label"] for r in printed} == {"equivalent"}
    assert all(r["probability"] == pytest.approx(0.880797, abs=1e-4) for r in printed)


@pytest.mark.parametrize("extra, message", [
    (["--question", "Where?"], "needs --context"),
    (["--input_file", "{missing}"], "no such file"),
    (["--input_file", "{bad}"], "line 2 is not JSON"),
    (["--input_file", "{nofield}"], "line 1 has no text field 'context'"),
])
def test_bad_input_is_one_line_and_exit_2(qa_dir, tmp_path, capsys, extra, message):
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "context": "c"}\n{oops\n')
    (tmp_path / "nofield.jsonl").write_text('{"question": "q"}\n')
    extra = [e.format(missing=tmp_path / "missing.jsonl", bad=tmp_path / "bad.jsonl",
                      nofield=tmp_path / "nofield.jsonl") for e in extra]
    assert predict.main(["--task_name", "squad", "--model_name_or_path", str(qa_dir), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0


def test_wrong_model_folder_is_refused(qa_dir, tmp_path, capsys):
    assert predict.main(["--task_name", "mrpc", "--model_name_or_path", str(qa_dir),
                         "--sentence1", "a", "--sentence2", "b"]) == 2
    err = capsys.readouterr().err
    assert "BertForQuestionAnswering" in err and "BertForSequenceClassification" in err
    assert predict.main(["--task_name", "squad", "--model_name_or_path", str(tmp_path),
                         "--question", "q", "--context", "c"]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_runs_as_a_module(pair_dir, child_env):
    child_env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run([sys.executable, "-m", "tools.predict", "--task_name", "mrpc",
                           "--model_name_or_path", str(pair_dir), "--device", "cpu",
                           "--sentence1", "a", "--sentence2", "b"], env=child_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("label: equivalent (1)\nprobability: 0.88")
