"""The launcher's --dry_run output for every seed command line and a set of other lines, as one text.

    python tests/golden_dry_run.py > tests/golden/dry_run.txt      # record (from the repository root)
    (tests/test_golden_dry_run.py compares the current output with the recorded file)

Paths that differ between machines are replaced by placeholders (<TMP>, <REPO>, <PYTHON>, <MPIRUN>), and the
machine's facts are fixed (those of the 2-core VM, run as root with OpenMPI 5, where the file was first
recorded), so the text only changes when the commands or the environment the launcher builds change.
"""
from __future__ import annotations

import contextlib
import io
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import List

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED_FILE = REPO_ROOT.parent / "shared" / "seed" / "000_836054707efe8940.txt"

# The facts demo_bert.main would otherwise probe: CPU, 2 physical cores, root, OpenMPI 5.
GOLDEN_MACHINE = dict(device="cpu", physical_cores=2, as_root=True, mpirun="mpirun", mpi_major=5)

# Lines beyond the seed's: defaults, other devices, launchers, phases and model names.
EXTRA_LINES = [
    "pretraining --model_name_or_path tiny --data_type fp32 --data_dir <P1> <P2>",
    "pretraining --model_name_or_path mini --data_type bf16 --batch_size 8 4 --max_steps 10 5 --phase 1 "
    "--data_dir <P1> <P2>",
    "pretraining --model_name_or_path base --data_type fp32 --accumulate_gradients --train_batch_size 256 128 "
    "--batch_size 32 8 --data_dir <P1> <P2>",
    "pretraining --model_name_or_path large --data_type bf16 --mode graph --world_size 2 --dist --no_mpirun "
    "--batch_size 64 8 --accumulate_gradients --data_dir <P1> <P2>",
    "pretraining --model_name_or_path tiny --data_type fp32 --phase 2 --init_checkpoint None <CKPT> "
    "--data_dir <P1> <P2>",
    "pretraining --model_name_or_path tiny --data_type fp32 --init_checkpoint <CKPT> None --data_dir <P1> <P2>",
    "pretraining --model_name_or_path tiny --data_type fp32 --resume_from_checkpoint --seed 7 --save_steps 5 5 "
    "--steps_this_run 3 3 --learning_rate 1e-3 1e-3 --warmup 0.1 0.1 --data_dir <P1> <P2>",
    "pretraining --model_name_or_path <CONFIG> --data_type fp32 --vocab_file <VOCAB> --data_dir <P1> <P2>",
    "finetuning --model_name_or_path base --data_type fp32 --task_name mrpc --data_dir <DATA>/MRPC",
    "finetuning --model_name_or_path base --data_type fp32 --task_name squad --data_dir <DATA>/Squad",
    "finetuning --model_name_or_path large --data_type bf16 --task_name squad --max_seq_length 384 "
    "--data_dir <DATA>/Squad",
    "finetuning --model_name_or_path tiny --vocab_file <VOCAB> --data_type fp32 --task_name mrpc --max_steps 3 "
    "--save_steps 2 --do_eval --data_dir <DATA>/MRPC",
    "finetuning --model_name_or_path <CKPT> --vocab_file <VOCAB> --data_type fp32 --task_name squad "
    "--doc_stride 64 --max_seq_length 256 --train_file t.json --predict_file p.json --data_dir <DATA>/Squad",
    "finetuning --model_name_or_path base --data_type fp32 --task_name mrpc --world_size 2 --dist --no_mpirun "
    "--data_dir <DATA>/MRPC",
]


def seed_lines() -> List[str]:
    text = SEED_FILE.read_text(encoding="utf-8")
    return [line.strip()[len("$PYTHON demo_bert.py "):] for line in text.splitlines()
            if line.strip().startswith("$PYTHON demo_bert.py ")]


def make_inputs(root: Path) -> dict:
    """Stand-ins for the placeholders: shard folders, task folders, a checkpoint, a config, a vocab."""
    for phase in (1, 2):
        (root / f"phase{phase}").mkdir(parents=True)
        (root / f"phase{phase}" / "books_wiki_en_corpus_training_0.hdf5").write_bytes(b"")
    for task in ("MRPC", "Squad"):
        (root / "datasets" / task).mkdir(parents=True)
    (root / "model").mkdir()
    (root / "model" / "bert_config.json").write_text('{"hidden_size": 64, "num_hidden_layers": 2, '
                                                     '"num_attention_heads": 2, "intermediate_size": 128}')
    (root / "model" / "ckpt_40.pt").write_bytes(b"")
    (root / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n")
    return {"<dataset_path_phase1>": root / "phase1", "<dataset_path_phase2>": root / "phase2",
            "<data_path_phase2>": root / "phase2", "<dataset_path>": root / "datasets",
            "<P1>": root / "phase1", "<P2>": root / "phase2", "<DATA>": root / "datasets",
            "<CKPT>": root / "model" / "ckpt_40.pt", "<CONFIG>": root / "model" / "bert_config.json",
            "<VOCAB>": root / "vocab.txt"}


def dry_run(line: str, inputs: dict, output_dir: Path) -> str:
    import demo_bert
    from launcher.machine import Machine

    for placeholder, value in inputs.items():
        line = line.replace(placeholder, str(value))
    argv = shlex.split(line) + ["--device", "cpu", "--dry_run", "-o", str(output_dir)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = demo_bert.main(argv, machine=Machine(**GOLDEN_MACHINE))
    return f"exit {status}\n{out.getvalue()}{err.getvalue()}"


def normalise(text: str, tmp: Path) -> str:
    replacements = [(sys.executable, "<PYTHON>"), (str(tmp), "<TMP>"), (str(REPO_ROOT), "<REPO>")]
    for old, new in replacements:
        text = text.replace(old, new)
    lines = []
    for line in text.splitlines():
        words = line.split(" ")
        if words and words[0].endswith("mpirun"):
            words[0] = "<MPIRUN>"
        lines.append(" ".join(words))
    return "\n".join(lines) + "\n"


def golden_text() -> str:
    env_keep = {k: os.environ.get(k) for k in ("MASTER_PORT", "MASTER_ADDR", "PYTHONPATH", "HF_HUB_OFFLINE")}
    for key in ("MASTER_PORT", "MASTER_ADDR", "PYTHONPATH"):
        os.environ.pop(key, None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name).resolve()
            inputs = make_inputs(tmp / "in")
            blocks = []
            for number, line in enumerate(seed_lines() + EXTRA_LINES):
                blocks.append(f"### {line}\n" + dry_run(line, inputs, tmp / f"run{number}"))
            return normalise("\n".join(blocks), tmp)
    finally:
        for key, value in env_keep.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


if __name__ == "__main__":
    sys.stdout.write(golden_text())
