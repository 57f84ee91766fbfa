"""`demo_bert.py report`: plots and summary.md from synthetic DLLogger files of a two-phase
pre-training run and two fine-tuning tasks (written with central.dllog, the writer the engines use)."""
import json
import re
import struct

import pytest

from central.dllog import DLLogger
from tools import report


def write_pretraining_log(path):
    """Phase 1: 6 steps, loss 8.0 -> 5.5, lr warming up; phase 2 counts from step 1 again."""
    log = DLLogger(path, console=False)
    log.parameters({"Config": {"hidden_size": 64, "num_hidden_layers": 2}, "SEED": 12439})
    log.parameters({"batch_size_per_pu": 32, "learning_rate": 0.006})
    for step in range(1, 7):
        log.log([0, step], {"average_loss": 8.5 - 0.5 * step, "step_loss": 8.5 - 0.5 * step,
                            "learning_rate": 0.001 * step, "average_perf_per_step": 100.0 + step})
    log.log([], {"final_loss": 5.5, "average_perf_per_step": 103.5})
    log.log([], {"e2e_train_time": 12.5, "training_sequences_per_second": 96.0, "final_loss": 5.5})
    log.close()
    log = DLLogger(path, console=False)  # the phase-2 process appends to the same file
    log.parameters({"Config": {"hidden_size": 64}, "SEED": 12439, "batch_size_per_pu": 8})
    for step in range(1, 4):
        log.log([0, step], {"average_loss": 5.0 - 0.25 * step, "step_loss": 5.0 - 0.25 * step,
                            "learning_rate": 0.004, "average_perf_per_step": 40.0})
    log.log([], {"e2e_train_time": 7.25, "training_sequences_per_second": 33.0, "final_loss": 4.25})
    log.close()


def write_finetuning_log(task_dir, metrics):
    log = DLLogger(task_dir / "dllogger.json", console=False)
    log.parameters({"task_name": task_dir.name, "learning_rate": 2e-5, "per_device_train_batch_size": 8})
    for step in range(1, 5):
        log.log([0, step], {"loss": 0.9 - 0.1 * step, "learning_rate": 2e-5 * (1 - step / 5)})
    log.log([], {"metrics": metrics, "train_samples_per_second": 55.5, "e2e_train_time": 3.0})
    log.close()


def png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


@pytest.fixture
def run_dir(tmp_path):
    write_pretraining_log(tmp_path / "pretraining" / "results" / "dllogger.json")
    write_finetuning_log(tmp_path / "finetuning" / "mrpc", {"accuracy": 0.8125, "f1": 0.84})
    write_finetuning_log(tmp_path / "finetuning" / "squad", {"exact_match": 61.0, "f1": 70.5})
    return tmp_path


def test_report_writes_plots_and_summary_with_the_runs_numbers(run_dir, capsys):
    assert report.main([str(run_dir)]) == 0
    out = run_dir / "report"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["finetuning_mrpc.png", "finetuning_squad.png", "pretraining_phase1.png",
                     "pretraining_phase2.png", "summary.md", "throughput.png"]
    for png in out.glob("*.png"):
        width, height = png_size(png)
        assert width > 300 and height > 200
    summary = (out / "summary.md").read_text()
    sections = re.split(r"^### ", summary, flags=re.M)
    phase1 = next(s for s in sections if s.startswith("Pre-training phase 1"))
    phase2 = next(s for s in sections if s.startswith("Pre-training phase 2"))
    mrpc = next(s for s in sections if s.startswith("Fine-tuning: mrpc"))
    squad = next(s for s in sections if s.startswith("Fine-tuning: squad"))
    # Phase 1 numbers stay in phase 1, phase 2's in phase 2.
    assert "| final_loss | 5.5 |" in phase1 and "| final_loss | 4.25 |" in phase2
    assert "| training_sequences_per_second | 96 |" in phase1
    assert "| training_sequences_per_second | 33 |" in phase2
    assert "| wall time (s) | 12.5 |" in phase1 and "| wall time (s) | 7.25 |" in phase2
    assert "| steps logged | 1 .. 6 |" in phase1 and "| steps logged | 1 .. 3 |" in phase2
    assert "| batch_size_per_pu | 32 |" in phase1 and "| batch_size_per_pu | 8 |" in phase2
    assert "| SEED | 12439 |" in phase1 and "| Config.num_hidden_layers | 2 |" in phase1
    # Fine-tuning metrics and throughput.
    assert "| metrics.accuracy | 0.8125 |" in mrpc and "| metrics.f1 | 0.84 |" in mrpc
    assert "| metrics.exact_match | 61 |" in squad and "| metrics.f1 | 70.5 |" in squad
    assert "| loss (last) | 0.5 |" in mrpc
    assert "| train_samples_per_second | 55.5 |" in squad
    assert "![throughput](throughput.png)" in summary
    printed = capsys.readouterr().out
    assert str(out / "summary.md") in printed


def test_report_reads_eval_results_and_a_torn_last_line(tmp_path):
    task = tmp_path / "squad"
    write_finetuning_log(task, {"loss_scale": 1.0})
    (task / "eval_results.json").write_text(json.dumps({"exact_match": 12.5, "f1": 20.25}))
    with open(task / "dllogger.json", "a") as handle:
        handle.write('DLLL {"timestamp": 1.0, "step": [0, 9], "da')  # the run was killed mid-line
    assert report.main([str(tmp_path), "--output_dir", str(tmp_path / "out")]) == 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| exact_match | 12.5 |" in summary and "| f1 | 20.25 |" in summary
    assert "pre-training phases: 0" in summary


def test_report_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert report.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing" in err and "no such file" in err

    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
    assert "holds no dllogger.json" in capsys.readouterr().err

    broken = tmp_path / "broken" / "results"
    broken.mkdir(parents=True)
    (broken / "dllogger.json").write_text('DLLL {"step": [0, 1], "data": {}}\nDLLL {not json}\nDLLL {"step": []}\n')
    assert report.main([str(tmp_path / "broken")]) == 2
    err = capsys.readouterr().err.strip()
    assert "line 2" in err and "dllogger.json" in err and err.count("\n") == 0
    assert not (tmp_path / "broken" / "report").exists()
