"""The built-in data (data/builtin) and `demo_bert.py quickstart`.

The end-to-end test runs the real pipeline with --small (a few steps per stage) in a fresh folder:
every stage's output must exist and the printed metrics must be the ones in the files.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import demo_bert
from data import quickstart
from data.builtin import generate
from finetuning.squad_data import read_squad

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    out = tmp_path_factory.mktemp("builtin")
    generate.generate(out)
    return out


def test_generation_is_deterministic_across_processes(tmp_path, child_env):
    """Same bytes in two processes with different hash seeds (no set/dict-order dependence)."""
    for seed in ("1", "2"):
        env = dict(child_env, PYTHONHASHSEED=seed)
        done = subprocess.run([sys.executable, "-m", "data.builtin.generate", "--output_dir", str(tmp_path / seed)],
                              env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    files = sorted(p.relative_to(tmp_path / "1") for p in (tmp_path / "1").rglob("*") if p.is_file())
    assert len(files) == 6
    for rel in files:
        assert (tmp_path / "1" / rel).read_bytes() == (tmp_path / "2" / rel).read_bytes(), rel


def test_corpus_is_sharded_text(builtin):
    text = (builtin / "corpus" / "valley.txt").read_text(encoding="utf-8")
    documents = text.strip("\n").split("\n\n")
    assert len(documents) >= 250
    assert all(len(doc.splitlines()) >= 4 for doc in documents)  # several sentences: next-sentence pairs exist
    assert 60_000 < len(text.encode()) < 300_000
    assert all(line.endswith(".") for doc in documents for line in doc.splitlines())


def test_mrpc_files_have_the_glue_layout(builtin):
    for split in ("train", "dev"):
        raw = (builtin / "MRPC" / f"{split}.tsv").read_text(encoding="utf-8")
        assert raw.startswith("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
        rows = list(csv.reader(raw.splitlines()[1:], delimiter="\t", quoting=csv.QUOTE_NONE))
        assert all(len(r) == 5 and r[0] in ("0", "1") and r[3] and r[4] for r in rows)
        positives = sum(r[0] == "1" for r in rows) / len(rows)
        assert 0.45 < positives < 0.65
    test = (builtin / "MRPC" / "test.tsv").read_text(encoding="utf-8").splitlines()
    assert test[0] == "index\t#1 ID\t#2 ID\t#1 String\t#2 String"
    assert [line.split("\t")[0] for line in test[1:4]] == ["0", "1", "2"]


def test_mrpc_labels_mean_paraphrase(builtin):
    """A 1 pair shares its fact's value word; a 0 pair does not (or is about someone else)."""
    rows = list(csv.reader((builtin / "MRPC" / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:],
                           delimiter="\t", quoting=csv.QUOTE_NONE))
    for label, _, _, one, two in rows:
        words = lambda s: {w.strip(".,'s").lower() for w in s.split()}
        shared = words(one) & words(two)
        if label == "1":
            assert len(shared) >= 2, (one, two)  # the name and the value at least


def test_squad_files_are_valid_and_answers_are_spans(builtin):
    for split in ("train", "dev"):
        path = builtin / "SQuAD" / f"{split}-v1.1.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        assert data["version"] == "1.1"
        examples = read_squad(path)  # the fine-tuning reader accepts it
        assert len(examples) >= 100
        assert len({e.qid for e in examples}) == len(examples)
        for example in examples:
            text, start = example.answers[0]
            assert example.context[start:start + len(text)] == text and text.strip() == text


def test_dry_run_lists_the_real_commands(tmp_path, capsys):
    assert quickstart.main(["--output_dir", str(tmp_path / "run"), "--dry_run"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert len(lines) == 8
    assert "-m data.builtin.generate" in lines[0] and "-m data.vocab" in lines[1]
    assert "-m data.create_pretraining_data" in lines[2] and "--max_seq_length 128" in lines[2]
    assert "--max_seq_length 512" in lines[3]
    # The training steps are demo_bert.py commands its own parser accepts.
    for line, command in zip(lines[4:], ("pretraining", "finetuning", "finetuning", "report")):
        argv = line.split()[2:]
        assert argv[0] == command
        if command != "report":
            args = demo_bert.build_parser().parse_args(argv)
            assert args.device == "cpu"
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert quickstart.main(["--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a quick-start folder" in err and err.count("\n") == 0
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_rerun_clears_only_what_the_quickstart_made(tmp_path):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "vocab.txt").write_text("old")
    (run / "quickstart.json").write_text("{}")
    (run / "my_notes.txt").write_text("keep")
    quickstart.prepare_output_dir(run)
    assert not (run / "data").exists()
    assert (run / "my_notes.txt").read_text() == "keep"
    assert json.loads((run / "quickstart.json").read_text()) == {"status": "running"}


@pytest.mark.slow
def test_quickstart_end_to_end_small(tmp_path, child_env):
    run = tmp_path / "run"
    env = dict(child_env, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")  # the CPU is shared with the rest of the suite
    done = subprocess.run([sys.executable, str(REPO / "demo_bert.py"), "quickstart", "--small",
                           "--output_dir", str(run)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (run / "data" / "vocab.txt").is_file()
    for phase in (1, 2):
        assert list((run / "data" / f"phase{phase}").glob("*training*.hdf5"))
        export = run / "pretraining" / "results" / "hf_export" / f"phase{phase}"
        assert (export / "config.json").is_file() and (export / "model.safetensors").is_file()
    mrpc = json.loads((run / "finetuning" / "mrpc" / "eval_results.json").read_text())
    squad = json.loads((run / "finetuning" / "squad" / "eval_results.json").read_text())
    assert 0.0 <= mrpc["accuracy"] <= 1.0 and 0.0 <= squad["f1"] <= 100.0
    summary = (run / "report" / "summary.md").read_text()
    assert "Pre-training phase 1" in summary and "Pre-training phase 2" in summary
    assert "Fine-tuning: mrpc" in summary and "Fine-tuning: squad" in summary
    record = json.loads((run / "quickstart.json").read_text())
    assert record["status"] == "done" and len(record["pretraining_final_loss"]) == 2
    # The printed results are the files' numbers.
    assert f"accuracy {mrpc['accuracy']:.4g}" in done.stdout
    assert f"exact_match {squad['exact_match']:.4g}" in done.stdout
