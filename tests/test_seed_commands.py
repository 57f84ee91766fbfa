"""Every `$PYTHON demo_bert.py ...` line of the seed README dry-runs, and each generated argv is
accepted by the target script's own parser with the values the seed line asked for."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import demo_bert
from launcher_helpers import make_shard_dirs, parse_dry_run, script_parser, split_script

SEED_NAME = "000_836054707efe8940.txt"
FINETUNING_IDS = {"base": "bert-base-uncased", "large": "bert-large-uncased-whole-word-masking"}


def seed_command_lines(shared_data):
    text = (shared_data.parent / "seed" / SEED_NAME).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip().startswith("$PYTHON demo_bert.py ")]


@pytest.fixture(scope="module")
def seed_lines(shared_data):
    lines = seed_command_lines(shared_data)
    assert len(lines) == 21  # 8 pre-training + 13 fine-tuning command lines in the seed README
    return lines


@pytest.fixture
def datasets(tmp_path):
    """Stand-ins for the seed's placeholders: shard folders and task folders."""
    phase1, phase2 = make_shard_dirs(tmp_path / "hdf5")
    for task in ("MRPC", "Squad"):
        (tmp_path / "datasets" / task).mkdir(parents=True)
    return {"<dataset_path_phase1>": str(phase1), "<dataset_path_phase2>": str(phase2),
            "<data_path_phase2>": str(phase2), "<dataset_path>": str(tmp_path / "datasets")}


def seed_argv(line, datasets, output_dir):
    for placeholder, value in datasets.items():
        line = line.replace(placeholder, value)
    assert "<" not in line, line
    argv = shlex.split(line)[2:]  # drop "$PYTHON demo_bert.py"
    return argv + ["--device", "cpu", "--dry_run", "-o", str(output_dir)]


def option(argv, *names, count=1):
    for i, word in enumerate(argv):
        if word in names:
            values = argv[i + 1:i + 1 + count]
            return values if count > 1 else values[0]
    return None


def test_every_seed_command_dry_runs_into_commands_the_scripts_accept(seed_lines, datasets, tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    kinds = set()
    for n, line in enumerate(seed_lines):
        argv = seed_argv(line, datasets, tmp_path / f"run{n}")
        assert demo_bert.main(argv) == 0, (line, capsys.readouterr().err)
        env, commands = parse_dry_run(capsys.readouterr().out)
        assert env["MASTER_PORT"] == "12345" and env["PYTHONPATH"].startswith(str(demo_bert.REPO_ROOT))
        world_size = int(option(argv, "--world_size") or 1)
        if argv[0] == "pretraining":
            kinds.add("pretraining")
            check_pretraining(argv, commands, world_size, tmp_path / f"run{n}")
        else:
            kinds.add(option(argv, "--task_name"))
            check_finetuning(argv, commands, world_size, tmp_path / f"run{n}")
    assert kinds == {"pretraining", "mrpc", "squad"}


def check_launcher(launcher, world_size):
    if world_size == 1:
        assert launcher == [sys.executable]
    else:  # the seed's multi-card lines use --dist (mpirun is the reference default)
        assert [Path(launcher[0]).name, *launcher[1:3]] == ["mpirun", "-n", str(world_size)] and launcher[-1] == sys.executable
        assert "--bind-to" in launcher and "--report-bindings" in launcher


def check_pretraining(argv, commands, world_size, output_dir):
    assert len(commands) == 2
    batch = [int(b) for b in option(argv, "--batch_size", count=2)]
    for phase, command in enumerate(commands, start=1):
        launcher, module, flags = split_script(command)
        check_launcher(launcher, world_size)
        assert module == "pretraining.run_pretraining"
        ns = script_parser(module).parse_args(flags)
        # The per-device batch is honoured and accumulation reaches the reference's global batch.
        assert ns.train_batch_size // ns.gradient_accumulation_steps == batch[phase - 1]
        assert ns.train_batch_size * world_size == (65536, 32768)[phase - 1]
        assert ns.max_seq_length == (128, 512)[phase - 1] and ns.max_predictions_per_seq == (20, 80)[phase - 1]
        assert ns.phase2 == (phase == 2) and ns.resume_from_checkpoint == (phase == 2)
        assert ns.mode == option(argv, "--mode") and ns.data_type == option(argv, "--data_type")
        assert ns.config_file == "large" and ns.device == "cpu"
        assert ns.allreduce_post_accumulation and ns.allreduce_post_accumulation_fp16
        assert ns.output_dir == str(output_dir / "results" / "checkpoints")
        assert ns.json_summary == str(output_dir / "results" / "dllogger.json")


def check_finetuning(argv, commands, world_size, output_dir):
    (command,) = commands
    launcher, module, flags = split_script(command)
    check_launcher(launcher, world_size)
    task = option(argv, "--task_name")
    assert module == {"mrpc": "finetuning.run_glue", "squad": "finetuning.run_squad"}[task]
    ns = script_parser(module).parse_args(flags)
    assert ns.model_name_or_path == FINETUNING_IDS[option(argv, "--model_name_or_path")]
    assert ns.per_device_train_batch_size == int(option(argv, "--batch_size"))
    assert ns.max_seq_length == int(option(argv, "--max_seq_length"))
    assert ns.learning_rate == float(option(argv, "--learning_rate"))
    assert ns.num_train_epochs == float(option(argv, "--num_train_epochs"))
    assert ns.mode == option(argv, "--mode") and ns.data_type == option(argv, "--data_type")
    assert ns.do_train and ns.do_eval and ns.overwrite_output_dir
    assert ns.output_dir == str(output_dir / task)
    assert os.path.basename(ns.data_dir) == {"mrpc": "MRPC", "squad": "Squad"}[task]
    if task == "squad":
        assert (ns.doc_stride, ns.train_file, ns.predict_file) == (128, "train-v1.1.json", "dev-v1.1.json")
    else:
        assert ns.task_name == "mrpc"


def test_a_seed_command_through_the_real_entry_point(seed_lines, datasets, tmp_path, child_env):
    """One multi-card seed line run as a user would (a fresh interpreter), dry."""
    line = next(l for l in seed_lines if "--world_size 8" in l and "pretraining" in l)
    child_env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run([sys.executable, str(demo_bert.REPO_ROOT / "demo_bert.py"),
                             *seed_argv(line, datasets, tmp_path)], capture_output=True, text=True, env=child_env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    _, commands = parse_dry_run(result.stdout)
    assert len(commands) == 2 and all([Path(c[0]).name, *c[1:3]] == ["mpirun", "-n", "8"] for c in commands)
    assert re.search(r"--train_batch_size=8192 --gradient_accumulation_steps=128", result.stdout)


def test_readme_lists_every_seed_command(seed_lines):
    readme = (demo_bert.REPO_ROOT / "README.md").read_text(encoding="utf-8")
    missing = [line for line in seed_lines if line not in readme]
    assert not missing
