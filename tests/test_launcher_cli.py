"""demo_bert.py as users run it: bad input ends in one line and exit status 2, dry runs, signals."""
import os
import signal
import subprocess
from pathlib import Path
import sys

import pytest

from launcher_helpers import make_shard_dirs, parse_dry_run, split_script

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO_ROOT, "demo_bert.py")


@pytest.fixture
def shards(tmp_path):
    return make_shard_dirs(tmp_path / "data")


@pytest.fixture
def env(child_env):
    child_env["HF_HUB_OFFLINE"] = "1"
    return child_env


def demo(env, *argv, timeout=120):
    return subprocess.run([sys.executable, DEMO, *argv], capture_output=True, text=True, env=env, timeout=timeout)


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, (result.stdout, result.stderr)
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in message, message
    assert result.stdout == ""


def pre(shards, *extra):
    return ("pretraining", "--model_name_or_path", "tiny", "--data_type", "fp32", "--device", "cpu",
            "--data_dir", str(shards[0]), str(shards[1]), "--dry_run", *extra)


def fine(data_dir, *extra, model="tiny"):
    return ("finetuning", "--model_name_or_path", model, "--data_type", "fp32", "--device", "cpu",
            "--data_dir", str(data_dir), "--dry_run", *extra)


def test_help_lists_every_command(env):
    result = demo(env, "-h")
    assert result.returncode == 0
    for name in ("pretraining", "finetuning", "report", "predict", "quickstart"):
        assert name in result.stdout
    result = demo(env, "pretraining", "-h")
    assert result.returncode == 0 and "--accumulate_gradients" in result.stdout and "--dry_run" in result.stdout


@pytest.mark.parametrize("argv, needles", [
    (("--bogus_option",), ("unrecognized arguments: --bogus_option",)),
    (("--batch_size", "64"), ("-b/--batch_size", "expected 2 arguments")),
    (("--max_steps", "10", "--seed", "1"), ("--max_steps", "expected 2 arguments")),
    (("--world_size", "0"), ("--world_size", "must be at least 1")),
    (("--world_size", "2"), ("--world_size 2 needs --dist",)),
    (("--dist",), ("--dist needs --world_size",)),
    (("--batch_size", "60", "8", "--accumulate_gradients"), ("--train_batch_size 65536", "--batch_size")),
    (("--world_size", "3", "--dist", "--batch_size", "64", "8", "--accumulate_gradients"),
     ("--train_batch_size 65536", "--world_size x --batch_size = 3 x 64")),
    (("--train_batch_size", "64", "32"), ("--train_batch_size", "--accumulate_gradients")),
    (("-t", "wiki"), ("-t/--task_name",)),
    (("--cache_dir", "/tmp"), ("--cache_dir",)),
    (("--model_name_or_path", "no_such_model"), ("--model_name_or_path no_such_model",)),
    (("--config_file", "/no/such/bert_config.json"), ("--config_file /no/such/bert_config.json",)),
    (("--init_checkpoint", "/no/ckpt_1.pt", "None"), ("--init_checkpoint /no/ckpt_1.pt", "no such file")),
    (("--vocab_file", "/no/vocab.txt"), ("--vocab_file /no/vocab.txt",)),
    (("--no_mpirun", "--launcher", "mpirun"), ("--no_mpirun",)),
    (("--hostfile", "/no/hosts"), ("--hostfile /no/hosts",)),
    (("--phase", "3"), ("--phase", "invalid choice")),
])
def test_bad_pretraining_input_is_one_line_and_status_2(env, shards, argv, needles):
    assert_one_line_error(demo(env, *pre(shards), *argv), *needles)


def test_missing_or_empty_pretraining_data(env, shards, tmp_path):
    base = ("pretraining", "--model_name_or_path", "tiny", "--data_type", "fp32", "-d", "cpu", "--dry_run")
    assert_one_line_error(demo(env, *base), "-p/--data_dir", "required")
    assert_one_line_error(demo(env, *base, "-p", str(tmp_path / "nope"), str(shards[1])),
                          "-p/--data_dir (phase 1)", "no such folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(demo(env, *base, "-p", str(shards[0]), str(empty)), "phase 2", "no training shards")
    # --phase 1 needs only phase 1's folder; phase 2 alone needs phase 1's checkpoints.
    assert demo(env, *base, "-p", str(shards[0]), "None", "--phase", "1").returncode == 0
    assert_one_line_error(demo(env, *base, "-p", "None", str(shards[1]), "--phase", "2", "-o", str(tmp_path)),
                          "--phase 2", "no phase-1 checkpoint")


@pytest.mark.parametrize("argv, needles", [
    (("--dataset_name", "glue"), ("--dataset_name",)),
    (("-ds", "64"), ("-ds/--doc_stride", "squad only")),
    (("-tf", "x.json"), ("-tf/--train_file",)),
    (("-t", "cola"), ("-t/--task_name", "invalid choice")),
    (("-mt", "roberta"), ("-mt/--model_type",)),
    (("--batch_size", "0"), ("-b/--batch_size", "at least 1")),
])
def test_bad_finetuning_input_is_one_line_and_status_2(env, tmp_path, argv, needles):
    assert_one_line_error(demo(env, *fine(tmp_path), *argv), *needles)


def test_finetuning_data_dir_and_model_names(env, tmp_path):
    base = ("finetuning", "--model_name_or_path", "base", "--data_type", "fp32", "-d", "cpu", "--dry_run")
    assert_one_line_error(demo(env, *base), "-p/--data_dir", "required")
    assert_one_line_error(demo(env, *base, "-p", str(tmp_path / "missing")), "-p/--data_dir", "no such folder")
    assert_one_line_error(demo(env, *fine(tmp_path, model="nobody-here/bert-nothing")),
                          "--model_name_or_path nobody-here/bert-nothing", "local Hugging Face cache")
    assert_one_line_error(demo(env, *fine(tmp_path, model="./missing/dir")), "--model_name_or_path ./missing/dir")
    no_config = tmp_path / "not_a_model"
    no_config.mkdir()
    assert_one_line_error(demo(env, *fine(tmp_path, model=str(no_config))), "no config.json")


def test_absent_devices_are_refused(shards, monkeypatch, capsys):
    """In-process (torch is already loaded here; a fresh interpreter would spend seconds importing it)."""
    import torch

    import demo_bert

    monkeypatch.setitem(sys.modules, "habana_frameworks", None)  # no Habana stack on this machine
    devices = ["hpu"] + ([] if torch.cuda.is_available() else ["cuda"])
    for name in devices:
        assert demo_bert.main(list(pre(shards, "--device", name))) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1
        assert captured.err.startswith(f"demo_bert.py pretraining: error: --device {name}:")


def test_debug_shows_the_traceback(env, shards):
    result = demo(env, *pre(shards), "--batch_size", "60", "8", "--accumulate_gradients", "--debug")
    # The batch arithmetic lives in pretraining/phases.py, which raises the error model's BadInputError.
    assert result.returncode != 0 and "Traceback" in result.stderr and "BadInputError" in result.stderr


def test_dry_run_prints_environment_and_commands(env, shards, tmp_path):
    env.pop("MASTER_PORT", None)
    env.pop("MASTER_ADDR", None)
    result = demo(env, *pre(shards, "-o", str(tmp_path), "--world_size", "2", "--dist"))
    assert result.returncode == 0, result.stderr
    printed_env, commands = parse_dry_run(result.stdout)
    assert printed_env["PYTHONPATH"].split(os.pathsep)[0] == REPO_ROOT
    assert (printed_env["MASTER_ADDR"], printed_env["MASTER_PORT"]) == ("localhost", "12345")
    assert len(commands) == 2 and all([Path(c[0]).name, *c[1:3]] == ["mpirun", "-n", "2"] for c in commands)
    launcher, module, _ = split_script(commands[0])
    assert launcher[-1] == sys.executable and module == "pretraining.run_pretraining"
    assert ("--allow-run-as-root" in launcher) == (os.geteuid() == 0)
    assert not (tmp_path / "results").exists()  # a dry run writes nothing


def test_real_run_stops_at_the_first_failure_and_keeps_the_log(env, shards, tmp_path):
    """A real (not dry) run whose phase 1 cannot train on an empty shard: phase 2 is never started."""
    result = demo(env, "pretraining", "--model_name_or_path", "tiny", "--data_type", "fp32", "-d", "cpu",
                  "-p", str(shards[0]), str(shards[1]), "-o", str(tmp_path), "--create_logfile",
                  "--max_steps", "1", "1", timeout=300)
    assert result.returncode != 0
    assert "demo_bert.py: phase1 failed with exit status" in result.stderr and "not run: phase2" in result.stderr
    assert (tmp_path / "results" / "phase1.log").is_file() and not (tmp_path / "results" / "phase2.log").exists()


RUNNER = """
import sys
from central.process_runner import Command, Plan, run_plan
child = '''
import signal, sys, time
def stop(signum, frame):
    open(sys.argv[1], "w").write(str(signum))
    sys.exit(0)   # like a trainer that saves a checkpoint and leaves cleanly
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)  # as the trainers do; a shell's background job inherits SIGINT ignored
print("ready", flush=True)
time.sleep(60)
'''
plan = Plan((Command("phase1", (sys.executable, "-c", child, sys.argv[1])),
             Command("phase2", (sys.executable, "-c", "open(sys.argv[1], 'w')", sys.argv[2]))), {})
sys.exit(run_plan(plan))
"""


@pytest.mark.parametrize("signum, expected", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_reach_the_children_and_stop_the_plan(child_env, tmp_path, signum, expected):
    first, second = tmp_path / "phase1-got-signal", tmp_path / "phase2-ran"
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(first), str(second)], env=child_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert runner.stdout.readline().strip() == "ready"
        runner.send_signal(signum)
        out, err = runner.communicate(timeout=30)
    finally:
        runner.kill()
    assert runner.returncode == expected, err
    assert f"phase1 stopped by {signal.Signals(signum).name}" in err and "not run: phase2" in err
    assert first.read_text() == str(int(signum))  # the child got the forwarded signal
    assert not second.exists()
