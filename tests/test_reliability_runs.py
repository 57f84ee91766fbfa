"""Real runs for the reliability rules: determinism from text to losses, literal paths, safetensors.

* Data: the data.prepare stages (text_formatting, sharding, create_hdf5_files) run twice on the same real
  text, once with one worker process and once with two, give byte-identical text shards and HDF5 files.
* Pre-training: ``demo_bert.py pretraining`` run twice on those shards with the same seed (separate
  processes) logs the same step_loss at every step and ends with identical weights; the second run writes
  into an output folder whose name is full of shell syntax, which is used literally and runs nothing.
* Fine-tuning: SQuAD (and MRPC where this checkout has it) run twice with the same seed give the same
  losses, predictions and weights.
* Exported and fine-tuned weights are safetensors files; no pickle-based weight file is written.

In-process determinism of the pre-training engine (and that another seed changes the losses) is tested in
test_pretraining_training.py; the per-rank data order in test_pretraining_data.py.
"""
import filecmp
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import h5py
import numpy as np
import pytest
import torch

from central.checkpoint import list_checkpoints
from central.dllog import read_dllogger
from test_untrusted_input import SHELL_BAIT

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARDING = ["--n_training_shards", "3", "--n_test_shards", "1", "--fraction_test_set", "0.1"]
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def run(argv: List[str], env: dict, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, cwd=cwd,
                            timeout=timeout)
    assert result.returncode == 0, f"{argv}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def prepare_data(workdir: Path, corpus: Path, vocab: Path, processes: int, env: dict) -> Path:
    """The three data.prepare stages of a custom corpus; returns the HDF5 folder."""
    common = ["-m", "data.prepare", "--dataset", "custom", "--working_dir", str(workdir)]
    run([*common, "--action", "text_formatting", "--input_path", str(corpus)], env, workdir.parent)
    run([*common, "--action", "sharding", *SHARDING], env, workdir.parent)
    run([*common, "--action", "create_hdf5_files", *SHARDING, "--max_seq_length", "64",
         "--max_predictions_per_seq", "10", "--dupe_factor", "2", "--vocab_file", str(vocab),
         "--n_processes", str(processes)], env, workdir.parent)
    found = list(workdir.glob("hdf5_*/custom"))
    assert len(found) == 1, found
    return found[0]


def dataset_arrays(path: Path) -> Dict[str, np.ndarray]:
    with h5py.File(path, "r") as handle:
        return {key: handle[key][()] for key in handle}


@pytest.fixture(scope="module")
def env():
    import os

    environ = dict(os.environ)
    environ["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + environ["PYTHONPATH"] if environ.get("PYTHONPATH") else "")
    environ.update(BERT_DISABLE_PROGRESS="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return environ


@pytest.fixture(scope="module")
def prepared(shared_data, tmp_path_factory, env):
    """The same ~300 lines of WikiText-2 prepared twice: with 1 and with 2 worker processes."""
    root = tmp_path_factory.mktemp("prepared")
    corpus = root / "corpus.txt"
    with open(shared_data / "wikitext-2-raw" / "wiki.valid.raw", encoding="utf-8") as handle:
        corpus.write_text("".join(handle.readlines()[:300]), encoding="utf-8")
    vocab = shared_data / "vocab" / "bert-base-uncased-vocab.txt"
    return {processes: prepare_data(root / f"work{processes}", corpus, vocab, processes, env) for processes in (1, 2)}


def test_same_text_and_seed_give_byte_identical_shards_whatever_the_process_count(prepared):
    one, two = prepared[1], prepared[2]
    text_one = sorted(one.parent.parent.glob("sharded_*/custom/*.txt"))
    text_two = sorted(two.parent.parent.glob("sharded_*/custom/*.txt"))
    assert [p.name for p in text_one] == [p.name for p in text_two] and len(text_one) == 4
    assert all(filecmp.cmp(a, b, shallow=False) for a, b in zip(text_one, text_two))
    files = sorted(p.name for p in one.glob("*.hdf5"))
    assert files == sorted(p.name for p in two.glob("*.hdf5")) and len(files) == 4
    for name in files:
        first, second = dataset_arrays(one / name), dataset_arrays(two / name)
        assert first.keys() == second.keys() and len(first) == 6
        for key in first:
            assert first[key].dtype == second[key].dtype and np.array_equal(first[key], second[key]), (name, key)
        assert filecmp.cmp(one / name, two / name, shallow=False), name  # the files too, byte for byte
    shards = [dataset_arrays(one / name)["input_ids"] for name in files]
    assert not all(np.array_equal(shards[0][:4], s[:4]) for s in shards[1:])  # the shards hold different text


# ------------------------------------------------------------------------------------------ pre-training
def pretrain(data: Path, output_dir: Path, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return run([str(REPO_ROOT / "demo_bert.py"), "pretraining", "--model_name_or_path", "tiny", "--data_type", "fp32",
                "--device", "cpu", "--data_dir", str(data), "None", "--phase", "1", "--output_dir", str(output_dir),
                "--max_seq_length", "64", "128", "--max_predictions_per_seq", "10", "20", "--batch_size", "8", "8",
                "--max_steps", "4", "1", "--save_steps", "2", "200", "--seed", "7"], env, cwd)


def step_losses(results: Path) -> Dict[int, float]:
    return {r["step"][1]: r["data"]["step_loss"] for r in read_dllogger(results / "dllogger.json")
            if r["type"] == "LOG" and isinstance(r["step"], list) and "step_loss" in r["data"]}


@pytest.fixture(scope="module")
def pretrained(prepared, tmp_path_factory, env):
    """Two identical pre-training runs in separate processes; the second into a shell-hostile folder."""
    root = tmp_path_factory.mktemp("pretrain")
    plain, hostile = root / "plain", root / SHELL_BAIT
    pretrain(prepared[1], plain, env, root)
    pretrain(prepared[2], hostile, env, root)
    return root, plain / "results", hostile / "results"


def test_same_seed_gives_the_same_losses_and_weights_in_separate_runs(pretrained):
    _, first, second = pretrained
    losses = step_losses(first)
    assert sorted(losses) == [1, 2, 3, 4] and len(set(losses.values())) > 1
    assert step_losses(second) == losses  # bit-identical floats at every step
    (step_a, ckpt_a), (step_b, ckpt_b) = list_checkpoints(first / "checkpoints")[-1], \
        list_checkpoints(second / "checkpoints")[-1]
    assert step_a == step_b == 4
    weights_a = torch.load(ckpt_a, weights_only=True)["model"]
    weights_b = torch.load(ckpt_b, weights_only=True)["model"]
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_a_shell_hostile_output_dir_is_used_literally_and_runs_nothing(pretrained):
    root, plain, hostile = pretrained
    assert hostile.parent.name == SHELL_BAIT
    assert [s for s, _ in list_checkpoints(hostile / "checkpoints")] == [2, 4]
    assert (hostile / "dllogger.json").is_file() and (hostile / "hf_export" / "phase1" / "model.safetensors").is_file()
    assert sorted(p.name for p in root.iterdir()) == sorted(["plain", SHELL_BAIT])  # nothing else appeared
    for folder in (root, REPO_ROOT):
        assert not [p for p in folder.rglob("PWNED*") if p.name in ("PWNED1", "PWNED2", "PWNED3")]


def assert_safetensors_only(folder: Path) -> Dict[str, torch.Tensor]:
    """The folder's weights are model.safetensors (loaded here without pickle); no pickle-format weights."""
    from safetensors.torch import load_file

    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in names and "config.json" in names, names
    assert not [n for n in names if Path(n).suffix in PICKLE_SUFFIXES], names
    return load_file(folder / "model.safetensors")


def test_pretraining_export_is_safetensors_and_matches_the_checkpoint(pretrained):
    _, first, second = pretrained
    exported = assert_safetensors_only(first / "hf_export" / "phase1")
    again = assert_safetensors_only(second / "hf_export" / "phase1")
    assert exported.keys() == again.keys() and all(torch.equal(exported[k], again[k]) for k in exported)
    checkpoint = torch.load(list_checkpoints(first / "checkpoints")[-1][1], weights_only=True)["model"]
    word = next(v for k, v in checkpoint.items() if k.endswith("word_embeddings.weight"))
    assert torch.equal(exported["bert.embeddings.word_embeddings.weight"], word[:exported[
        "bert.embeddings.word_embeddings.weight"].shape[0]])


# ------------------------------------------------------------------------------------------ fine-tuning
def logged_losses(output_dir: Path) -> Dict[int, float]:
    return {r["step"][1]: r["data"]["loss"] for r in read_dllogger(output_dir / "dllogger.json")
            if r["type"] == "LOG" and isinstance(r["step"], list) and "loss" in r["data"]}


@pytest.fixture(scope="module")
def squad_dir(shared_data, tmp_path_factory):
    with open(shared_data / "squad" / "dev-v1.1.json", encoding="utf-8") as handle:
        article = next(a for a in json.load(handle)["data"] if a["title"] == "Packet_switching")
    folder = tmp_path_factory.mktemp("squad")
    article = dict(article, paragraphs=article["paragraphs"][:3])
    for name in ("train-v1.1.json", "dev-v1.1.json"):
        (folder / name).write_text(json.dumps({"version": "1.1", "data": [article]}), encoding="utf-8")
    return folder


@pytest.fixture
def one_thread():
    """Tiny models train fastest with one intra-op thread on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_squad_fine_tuning_twice_with_the_same_seed_is_identical(squad_dir, shared_data, tmp_path, monkeypatch,
                                                                  one_thread):
    from finetuning.run_squad import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("BERT_DISABLE_PROGRESS", "1")
    outputs = [tmp_path / "a", tmp_path / "b"]
    for out in outputs:
        assert main(["--model_name_or_path", "tiny", "--vocab_file",
                     str(shared_data / "vocab" / "bert-base-uncased-vocab.txt"), "--data_dir", str(squad_dir),
                     "--output_dir", str(out), "--do_train", "--do_eval", "--max_seq_length", "128",
                     "--doc_stride", "64", "--per_device_train_batch_size", "8", "--max_steps", "4",
                     "--logging_steps", "1", "--learning_rate", "1e-3", "--device", "cpu", "--seed", "5",
                     "--disable_progress_bar"]) == 0
    first, second = outputs
    losses = logged_losses(first)
    assert sorted(losses) == [1, 2, 3, 4] and logged_losses(second) == losses
    for name in ("predictions.json", "eval_results.json"):
        assert (first / name).read_text() == (second / name).read_text()
    weights_a, weights_b = assert_safetensors_only(first), assert_safetensors_only(second)
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


@pytest.mark.skipif(importlib.util.find_spec("finetuning.glue_task") is None,
                    reason="finetuning.glue_task is not in this checkout yet")
def test_mrpc_fine_tuning_twice_with_the_same_seed_is_identical(shared_data, tmp_path, env):
    outputs = [tmp_path / "a", tmp_path / "b"]
    for out in outputs:
        run(["-m", "finetuning.run_glue", "--task_name", "mrpc", "--model_name_or_path", "tiny", "--vocab_file",
             str(shared_data / "vocab" / "bert-base-uncased-vocab.txt"), "--data_dir",
             str(shared_data / "glue_data" / "MRPC"), "--output_dir", str(out), "--do_train", "--do_eval",
             "--max_train_samples", "64", "--max_eval_samples", "64", "--max_steps", "4", "--logging_steps", "1",
             "--per_device_train_batch_size", "16", "--learning_rate", "1e-3", "--device", "cpu", "--seed", "5",
             "--disable_progress_bar"], env, tmp_path)
    first, second = outputs
    losses = logged_losses(first)
    assert sorted(losses) == [1, 2, 3, 4] and logged_losses(second) == losses
    assert json.loads((first / "eval_results.json").read_text()) == json.loads((second / "eval_results.json").read_text())
    weights_a, weights_b = assert_safetensors_only(first), assert_safetensors_only(second)
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
