"""Command lines and result readers for the pre-training tests (tiny model, synthetic shards)."""
import json
import os
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch

from central.checkpoint import list_checkpoints
from central.dllog import read_dllogger

@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models train ~20x faster with one intra-op thread on a shared 2-core machine (no thread
    contention); test modules import this fixture to use it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def subprocess_env(child_env: Optional[dict] = None) -> dict:
    """Environment for training subprocesses: conftest's child_env (or the same built here, for
    module-scoped fixtures, which cannot use that per-test fixture) plus one thread per process."""
    if child_env is None:
        child_env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        child_env["PYTHONPATH"] = root + (os.pathsep + child_env["PYTHONPATH"] if child_env.get("PYTHONPATH") else "")
        child_env["BERT_DISABLE_PROGRESS"] = "1"
        child_env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        child_env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return {**child_env, "OMP_NUM_THREADS": "1"}


# A tiny BERT without dropout, for tests that compare numbers across code paths.
NO_DROPOUT_CONFIG = {"vocab_size": 96, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "intermediate_size": 64, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
                     "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 128, "type_vocab_size": 2,
                     "initializer_range": 0.02}


def write_config(path: Path, **changes) -> Path:
    path.write_text(json.dumps({**NO_DROPOUT_CONFIG, **changes}))
    return path


def pretraining_args(data: Path, out: Path, *extra: str, steps: int = 8, batch: int = 8, accumulation: int = 2,
                     seq_len: int = 32, max_pred: int = 5, config: str = "tiny") -> List[str]:
    """run_pretraining argv writing checkpoints to out/checkpoints and the log to out/dllogger.json."""
    return ["--input_dir", str(data), "--config_file", config, "--output_dir", str(out / "checkpoints"),
            "--json-summary", str(out / "dllogger.json"), "--max_seq_length", str(seq_len),
            "--max_predictions_per_seq", str(max_pred), "--train_batch_size", str(batch),
            "--gradient_accumulation_steps", str(accumulation), "--max_steps", str(steps),
            "--learning_rate", "2e-3", "--warmup_proportion", "0.25", "--num_steps_per_checkpoint", "2",
            "--seed", "11", "--device", "cpu", "--disable_progress_bar", *extra]


def step_losses(out: Path) -> Dict[int, float]:
    """{step: step_loss} from out/dllogger.json (later runs appending to it override earlier steps)."""
    return {r["step"][1]: r["data"]["step_loss"] for r in read_dllogger(out / "dllogger.json")
            if r["type"] == "LOG" and isinstance(r["step"], list) and len(r["step"]) == 2}


def log_records(out: Path) -> List[dict]:
    return read_dllogger(out / "dllogger.json")


def newest_checkpoint(out: Path) -> dict:
    return torch.load(list_checkpoints(out / "checkpoints")[-1][1], weights_only=True)


def same_tensors(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
