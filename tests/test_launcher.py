"""demo_bert.py option parsing (launcher/options.py) and command building (launcher/plan.py), in-process."""
import shlex
from pathlib import Path

import pytest

import demo_bert
from central.errors import BadInputError
from central.process_runner import Command, Plan
from launcher import plan as launch
from launcher.errors import LaunchError
from launcher.inputs import finetuning_model
from launcher.options import GLUE_MODULE, SQUAD_MODULE
from pretraining.phases import PHASES, per_rank_batch
from pretraining.model_names import ModelNameError
from launcher_helpers import make_shard_dirs, parse_dry_run, script_parser, split_script


def parse(*argv):
    return demo_bert.build_parser().parse_args(list(argv))


@pytest.fixture
def shards(tmp_path):
    return make_shard_dirs(tmp_path / "data")


def pretraining_plan(shards, tmp_path, *extra):
    p1, p2 = shards
    args = parse("pretraining", "--model_name_or_path", "tiny", "--data_type", "fp32", "--device", "cpu",
                 "--data_dir", str(p1), str(p2), "-o", str(tmp_path / "out"), *extra)
    return demo_bert.build_plan(args)


def flags_of(command):
    _, module, flags = split_script(list(command.argv))
    return script_parser(module).parse_args(flags)


# ----------------------------------------------------------------------------- reference options


def test_pretraining_options_have_the_reference_names_and_defaults():
    args = parse("pretraining", "--model_name_or_path", "large", "--data_type", "bf16")
    assert args.learning_rate == [6e-3, 4e-3]
    assert args.max_seq_length == [128, 512]
    assert args.batch_size == [64, 8]
    assert args.save_steps == [200, 200]
    assert args.max_steps == [7038, 1563]
    assert args.warmup == [0.2843, 0.128]
    assert args.steps_this_run == [-1, -1]
    assert args.init_checkpoint == [None, None] and args.resume_step == [None, None]
    assert args.max_predictions_per_seq == [20, 80]
    assert args.train_batch_size is None and (PHASES[1].global_batch, PHASES[2].global_batch) == (65536, 32768)
    assert (args.seed, args.output_dir, args.device, args.world_size, args.process_per_node) == (
        12439, "/tmp", "auto", 1, 0)
    assert args.mode is None and args.phase is None
    assert not (args.dist or args.no_mpirun or args.accumulate_gradients or args.create_logfile)
    short = parse("pretraining", "--model_name_or_path", "base", "--data_type", "fp32", "-r", "1e-3", "2e-3",
                  "-s", "64", "128", "-b", "4", "2", "-st", "5", "6", "-wp", "0.1", "0.2", "-p", "a", "b",
                  "-o", "out", "-d", "cpu", "-t", "wiki")
    assert (short.learning_rate, short.max_seq_length, short.batch_size, short.save_steps, short.warmup) == (
        [1e-3, 2e-3], [64, 128], [4, 2], [5, 6], [0.1, 0.2])
    assert (short.data_dir, short.output_dir, short.device, short.task_name) == (["a", "b"], "out", "cpu", "wiki")


def test_finetuning_options_have_the_reference_names_and_defaults():
    args = parse("finetuning", "--model_name_or_path", "base", "--data_type", "fp32", "-p", "d")
    assert (args.task_name, args.learning_rate, args.max_seq_length, args.batch_size) == ("mrpc", 2e-5, 128, 8)
    # MRPC's 3 epochs (the seed's and run_glue's; the reference launcher's single default was 1)
    assert (args.per_device_eval_batch_size, args.num_train_epochs, args.logging_steps, args.seed) == (8, 3, 1, 42)
    assert args.doc_stride is None and args.train_file is None  # SQuAD-only options stay unset for MRPC
    assert args.max_steps is None and args.save_steps is None and not args.do_eval
    assert args.model_type == "bert"
    short = parse("finetuning", "--model_name_or_path", "base", "--data_type", "bf16", "-p", "d", "-t", "squad",
                  "-r", "3e-5", "-s", "384", "-b", "12", "-v", "16", "-e", "2", "-l", "10", "-ds", "64",
                  "-st", "100", "-tf", "t.json", "-pf", "p.json", "-mt", "bert")
    assert (short.task_name, short.learning_rate, short.max_seq_length, short.batch_size,
            short.per_device_eval_batch_size, short.num_train_epochs, short.logging_steps, short.doc_stride,
            short.save_steps, short.train_file, short.predict_file) == (
        "squad", 3e-5, 384, 12, 16, 2.0, 10, 64, 100, "t.json", "p.json")


def test_finetuning_defaults_follow_the_task():
    """The launcher's defaults are the chosen task's script defaults (finetuning/task_defaults.py)."""
    squad = parse("finetuning", "--model_name_or_path", "base", "--data_type", "fp32", "-p", "d", "-t", "squad")
    assert (squad.max_seq_length, squad.learning_rate, squad.num_train_epochs) == (384, 3e-5, 2.0)
    assert (squad.doc_stride, squad.train_file, squad.predict_file) == (128, "train-v1.1.json", "dev-v1.1.json")
    mrpc = parse("finetuning", "--model_name_or_path", "base", "--data_type", "fp32", "-p", "d", "-t", "mrpc")
    assert (mrpc.max_seq_length, mrpc.learning_rate, mrpc.num_train_epochs) == (128, 2e-5, 3.0)
    given = parse("finetuning", "--model_name_or_path", "base", "--data_type", "fp32", "-p", "d", "-t", "squad",
                  "-s", "256", "-e", "1")
    assert (given.max_seq_length, given.learning_rate, given.num_train_epochs) == (256, 3e-5, 1.0)


def test_finetuning_help_shows_the_defaults_of_each_task(capsys):
    with pytest.raises(SystemExit):
        parse("finetuning", "-h")
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 384 for squad, 128 for mrpc)" in text
    assert "(default: 3e-05 for squad, 2e-05 for mrpc)" in text and "(default: 2.0 for squad, 3.0 for mrpc)" in text
    assert "(squad only; default: 128)" in text and "(default: 42)" in text


def test_parsers_do_not_import_torch():
    import subprocess
    import sys

    code = "import sys, demo_bert; demo_bert.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(launch_root()))
    assert out.stdout.strip() == "False"


def launch_root():
    return demo_bert.REPO_ROOT


# ----------------------------------------------------------------------------- batch arithmetic


def test_per_device_batch_is_always_honoured():
    assert per_rank_batch(64, 1, False, None, 1) == (64, 1)
    assert per_rank_batch(64, 8, False, None, 1) == (64, 1)
    assert per_rank_batch(64, 1, True, None, 1) == (65536, 1024)
    assert per_rank_batch(64, 8, True, None, 1) == (8192, 128)
    assert per_rank_batch(8, 8, True, None, 2) == (4096, 512)
    assert per_rank_batch(32, 2, True, 256, 1) == (128, 4)


def test_non_dividing_batch_arithmetic_names_the_options():
    with pytest.raises(BadInputError) as err:
        per_rank_batch(60, 8, True, None, 1)
    message = str(err.value)
    assert "--train_batch_size 65536" in message and "--world_size" in message and "--batch_size" in message
    assert "\n" not in message


def test_pretraining_commands_carry_per_phase_values(shards, tmp_path):
    plan = pretraining_plan(shards, tmp_path, "--batch_size", "16", "4", "--accumulate_gradients",
                            "--train_batch_size", "64", "32", "--max_steps", "10", "5", "-st", "3", "2",
                            "-r", "1e-3", "5e-4", "-wp", "0.1", "0.2", "--steps_this_run", "4", "-1")
    assert [c.name for c in plan.commands] == ["phase1", "phase2"]
    one, two = (flags_of(c) for c in plan.commands)
    out = tmp_path / "out" / "results"
    assert (one.input_dir, two.input_dir) == (str(shards[0]), str(shards[1]))
    assert one.output_dir == two.output_dir == str(out / "checkpoints")
    assert one.json_summary == str(out / "dllogger.json")
    assert (one.max_seq_length, two.max_seq_length, one.max_predictions_per_seq, two.max_predictions_per_seq) == (
        128, 512, 20, 80)
    assert (one.train_batch_size, one.gradient_accumulation_steps) == (64, 4)
    assert (two.train_batch_size, two.gradient_accumulation_steps) == (32, 8)
    assert (one.max_steps, two.max_steps, one.num_steps_per_checkpoint, two.num_steps_per_checkpoint) == (10, 5, 3, 2)
    assert (one.learning_rate, two.learning_rate, one.warmup_proportion, two.warmup_proportion) == (
        1e-3, 5e-4, 0.1, 0.2)
    assert (one.steps_this_run, two.steps_this_run, one.seed) == (4, -1, 12439)
    assert (one.config_file, one.device, one.mode, one.data_type) == ("tiny", "cpu", "eager", "fp32")
    assert not one.phase2 and not one.resume_from_checkpoint and not one.use_fused_lamb
    # Phase 2 continues from what phase 1 wrote into the same folder.
    assert two.phase2 and two.resume_from_checkpoint and two.phase1_end_step == 10 and two.init_checkpoint is None


def test_without_accumulation_each_micro_batch_is_a_step(shards, tmp_path):
    one, two = (flags_of(c) for c in pretraining_plan(shards, tmp_path, "-b", "6", "2").commands)
    assert (one.train_batch_size, one.gradient_accumulation_steps) == (6, 1)
    assert (two.train_batch_size, two.gradient_accumulation_steps) == (2, 1)


def test_single_phase_and_large_defaults_to_lazy(shards, tmp_path):
    p1, p2 = shards
    args = parse("pretraining", "--model_name_or_path", "large", "--data_type", "bf16", "-d", "cpu",
                 "-p", str(p1), str(p2), "--phase", "1", "-o", str(tmp_path))
    plan = demo_bert.build_plan(args)
    assert len(plan.commands) == 1
    ns = flags_of(plan.commands[0])
    assert (ns.mode, ns.config_file, ns.data_type, ns.phase2) == ("lazy", "large", "bf16", False)


def test_checkpoint_chaining_follows_the_reference():
    assert launch.checkpoint_flags(1, None, None, False, 7038) == []
    assert launch.checkpoint_flags(1, None, None, True, 7038) == ["--resume_from_checkpoint"]
    assert launch.checkpoint_flags(2, None, None, False, 7038) == [
        "--resume_from_checkpoint", "--phase2", "--phase1_end_step=7038"]
    assert launch.checkpoint_flags(2, "None", None, False, 100) == [
        "--resume_from_checkpoint", "--phase2", "--phase1_end_step=100"]
    assert launch.checkpoint_flags(1, "/x/ckpt_1500.pt", None, False, 7038) == [
        "--resume_from_checkpoint", "--init_checkpoint=/x/ckpt_1500.pt", "--resume_step=1500"]
    assert launch.checkpoint_flags(2, "/x/ckpt_1500.pt", 7, False, 9) == [
        "--resume_from_checkpoint", "--init_checkpoint=/x/ckpt_1500.pt", "--resume_step=7", "--phase2",
        "--phase1_end_step=9"]
    assert launch.checkpoint_flags(1, "/x/model.pt", None, False, 1) == [
        "--resume_from_checkpoint", "--init_checkpoint=/x/model.pt"]
    assert launch.checkpoint_flags(1, None, 300, False, 1) == ["--resume_from_checkpoint", "--resume_step=300"]


def test_init_checkpoint_pair_with_literal_none(shards, tmp_path):
    ckpt = tmp_path / "ckpt_42.pt"
    ckpt.write_bytes(b"")
    plan = pretraining_plan(shards, tmp_path, "--init_checkpoint", str(ckpt), "None")
    one, two = (flags_of(c) for c in plan.commands)
    assert (one.init_checkpoint, one.resume_step, one.resume_from_checkpoint) == (str(ckpt), 42, True)
    assert two.init_checkpoint is None and two.resume_from_checkpoint and two.phase1_end_step == 7038


def test_config_from_file_folder_or_preset(shards, tmp_path):
    config = tmp_path / "bert_config.json"
    config.write_text("{}")
    assert launch_config(shards, tmp_path, "--config_file", str(config)) == str(config)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    assert launch_config(shards, tmp_path, "--model_name_or_path", str(model_dir)) == str(model_dir / "config.json")
    assert launch_config(shards, tmp_path, "--config_file", "mini") == "mini"


def launch_config(shards, tmp_path, *extra):
    return flags_of(pretraining_plan(shards, tmp_path, *extra).commands[0]).config_file


def test_create_logfile_names_a_log_per_phase(shards, tmp_path):
    plan = pretraining_plan(shards, tmp_path, "--create_logfile")
    assert [c.log_file for c in plan.commands] == [
        str(tmp_path / "out" / "results" / f"phase{p}.log") for p in (1, 2)]
    assert "# phase1: output also written to" in launch.format_dry_run(plan)


# ----------------------------------------------------------------------------- fine-tuning


@pytest.mark.parametrize("model, expected", [("base", "bert-base-uncased"),
                                             ("large", "bert-large-uncased-whole-word-masking"),
                                             ("tiny", "tiny")])
def test_finetuning_maps_tasks_and_models(tmp_path, model, expected):
    args = parse("finetuning", "--model_name_or_path", model, "--data_type", "fp32", "-d", "cpu", "-t", "squad",
                 "-p", str(tmp_path), "-o", str(tmp_path / "out"), "-b", "12", "-v", "16", "-s", "384",
                 "--do_eval", "--max_steps", "9", "-st", "3", "-ds", "64")
    (command,) = demo_bert.build_plan(args).commands
    _, module, _ = split_script(list(command.argv))
    ns = flags_of(command)
    assert module == SQUAD_MODULE and ns.model_name_or_path == expected
    assert (ns.per_device_train_batch_size, ns.per_device_eval_batch_size, ns.max_seq_length) == (12, 16, 384)
    assert (ns.do_train, ns.do_eval, ns.overwrite_output_dir, ns.max_steps, ns.save_steps) == (
        True, True, True, 9, 3)
    assert (ns.doc_stride, ns.train_file, ns.predict_file) == (64, "train-v1.1.json", "dev-v1.1.json")
    assert ns.output_dir == str(tmp_path / "out" / "squad") and ns.data_dir == str(tmp_path)
    assert ns.mode == ("lazy" if model == "large" else "eager")


def test_mrpc_runs_run_glue(tmp_path):
    args = parse("finetuning", "--model_name_or_path", "mini", "--data_type", "bf16", "-d", "cpu",
                 "-p", str(tmp_path), "-o", str(tmp_path), "-e", "3", "-r", "3e-5", "--seed", "7", "-l", "5")
    (command,) = demo_bert.build_plan(args).commands
    _, module, _ = split_script(list(command.argv))
    ns = flags_of(command)
    assert module == GLUE_MODULE and ns.task_name == "mrpc"
    assert (ns.num_train_epochs, ns.learning_rate, ns.seed, ns.logging_steps, ns.data_type) == (
        3.0, 3e-5, 7, 5, "bf16")
    assert ns.output_dir == str(tmp_path / "mrpc") and not ns.do_eval


def test_finetuning_accepts_a_cached_hub_id_and_a_model_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-bert" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--someone--tiny-bert" / "refs").mkdir()
    (cache / "models--someone--tiny-bert" / "refs" / "main").write_text("0123abc")
    args = parse("finetuning", "--model_name_or_path", "someone/tiny-bert", "--data_type", "fp32", "-d", "cpu",
                 "-p", str(tmp_path), "--cache_dir", str(cache))
    ns = flags_of(demo_bert.build_plan(args).commands[0])
    assert ns.model_name_or_path == "someone/tiny-bert" and ns.cache_dir == str(cache)
    args = parse("finetuning", "--model_name_or_path", str(snapshot), "--data_type", "fp32", "-d", "cpu",
                 "-p", str(tmp_path))
    assert flags_of(demo_bert.build_plan(args).commands[0]).model_name_or_path == str(snapshot)
    with pytest.raises(ModelNameError, match="not in the local Hugging Face cache"):
        finetuning_model("someone/other-bert", str(cache))


# ----------------------------------------------------------------------------- wrapping


def test_distributed_plans_wrap_every_phase(shards, tmp_path, monkeypatch):
    monkeypatch.delenv("MASTER_PORT", raising=False)
    plan = pretraining_plan(shards, tmp_path, "--world_size", "2", "--dist", "--no_mpirun")
    for command in plan.commands:
        launcher, _, _ = split_script(list(command.argv))
        assert launcher[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=2"]
    plan = pretraining_plan(shards, tmp_path, "--world_size", "2", "--dist")
    launcher, _, _ = split_script(list(plan.commands[1].argv))
    assert [Path(launcher[0]).name, *launcher[1:3]] == ["mpirun", "-n", "2"]
    assert [launcher[i + 1] for i, a in enumerate(launcher) if a == "-x"] == list(plan.env)


def test_dry_run_text_round_trips_through_a_shell_parser():
    env = {"PYTHONPATH": "/a b/c", "MASTER_PORT": "1"}
    command = Command("phase1", ("python", "-m", "x", "--output_dir=/tmp/it's here", "--flag"))
    text = launch.format_dry_run(Plan((command,), env))
    parsed_env, commands = parse_dry_run(text)
    assert parsed_env == env and commands == [list(command.argv)]
    assert text.splitlines()[-1] == shlex.join(command.argv)


# ----------------------------------------------------------------------------- pass-through tools


def test_pass_through_commands_hand_over_their_arguments(monkeypatch):
    import sys
    import types

    seen = []
    for name, (module_name, _) in demo_bert.PASS_THROUGH.items():
        stand_in = types.ModuleType(module_name)  # a stand-in for the real tool, defined by this test
        stand_in.main = lambda argv, name=name: seen.append((name, argv)) or 7
        monkeypatch.setitem(sys.modules, module_name, stand_in)
        assert demo_bert.main([name, "--its-own-flag", "x", "-h"]) == 7
    assert seen == [(n, ["--its-own-flag", "x", "-h"]) for n in demo_bert.PASS_THROUGH]


def test_missing_pass_through_tool_is_one_line(monkeypatch, capsys):
    import importlib

    real_import = importlib.import_module

    def import_module(name, *a):
        if name == "tools.report":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *a)

    monkeypatch.setattr(demo_bert.importlib, "import_module", import_module)
    assert demo_bert.main(["report", "x"]) == 2
    assert capsys.readouterr().err == "demo_bert.py report: error: not available in this checkout " \
                                      "(tools.report is missing)\n"


def test_a_checkpoint_as_pretraining_model_starts_phase_one(shards, tmp_path):
    ckpt = tmp_path / "ckpt_7.pt"
    ckpt.write_bytes(b"")
    with pytest.raises(LaunchError, match="give --config_file"):
        pretraining_plan(shards, tmp_path, "--model_name_or_path", str(ckpt))
    one = flags_of(pretraining_plan(shards, tmp_path, "--model_name_or_path", str(ckpt), "--config_file",
                                    "mini").commands[0])
    assert (one.config_file, one.init_checkpoint, one.resume_step) == ("mini", str(ckpt), 7)
    (tmp_path / "bert_config.json").write_text("{}")
    one = flags_of(pretraining_plan(shards, tmp_path, "--model_name_or_path", str(ckpt)).commands[0])
    assert one.config_file == str(tmp_path / "bert_config.json")


@pytest.mark.parametrize("launcher", ["mpirun", "torchrun"])
def test_multi_node_plan_from_a_hostfile(shards, tmp_path, monkeypatch, launcher):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    hostfile = tmp_path / "hosts.txt"
    hostfile.write_text("node-a slots=4\nnode-b slots=4\n")
    plan = pretraining_plan(shards, tmp_path, "--hostfile", str(hostfile), "--process_per_node", "4",
                            "--launcher", launcher, "--batch_size", "64", "8", "--accumulate_gradients")
    assert plan.env["MASTER_ADDR"] == "node-a"
    launcher_argv, _, flags = split_script(list(plan.commands[0].argv))
    if launcher == "mpirun":
        assert [Path(launcher_argv[0]).name, *launcher_argv[1:3]] == ["mpirun", "-n", "8"]
        assert launcher_argv[launcher_argv.index("--hostfile") + 1] == str(hostfile)
        assert launcher_argv[launcher_argv.index("--map-by") + 1].startswith("ppr:4:node:PE=")
    else:
        assert "--nnodes=2" in launcher_argv and "--nproc_per_node=4" in launcher_argv
        assert "--rdzv_endpoint=node-a:12345" in launcher_argv
    # 8 ranks x 64 per device: 65536 / 512 = 128 accumulation steps, 8192 sequences per rank and step.
    assert "--train_batch_size=8192" in flags and "--gradient_accumulation_steps=128" in flags


def test_build_plan_takes_the_machines_facts_and_starts_nothing(shards, tmp_path, monkeypatch):
    """launcher.plan.build_plan is pure: cores, root and OpenMPI's version come in as a Machine."""
    import subprocess

    from launcher.machine import Machine
    from launcher.plan import build_plan

    def refuse(*args, **kwargs):
        raise AssertionError("build_plan started a process")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    p1, p2 = shards
    args = parse("pretraining", "--model_name_or_path", "tiny", "--data_type", "fp32", "--data_dir", str(p1), str(p2),
                 "-o", str(tmp_path), "--world_size", "4", "--dist")
    machine = Machine("cpu", physical_cores=16, as_root=False, mpirun="/opt/mpi/bin/mpirun", mpi_major=4)
    plan = build_plan(args, machine, environ={}, repo_root="/repo", python="py")
    argv = list(plan.commands[0].argv)
    assert argv[:3] == ["/opt/mpi/bin/mpirun", "-n", "4"] and "--allow-run-as-root" not in argv
    assert argv[argv.index("--map-by") + 1] == "socket:PE=4" and argv[argv.index("--rank-by") + 1] == "core"
    assert plan.env == {"PYTHONPATH": "/repo", "MASTER_ADDR": "localhost", "MASTER_PORT": "12345"}
    root = build_plan(args, Machine("cpu", physical_cores=2, as_root=True, mpirun="mpirun", mpi_major=5),
                      environ={}, repo_root="/repo", python="py")
    assert "--allow-run-as-root" in root.commands[0].argv and "--oversubscribe" in root.commands[0].argv
    with pytest.raises(LaunchError, match="mpirun is not on PATH"):
        build_plan(args, Machine("cpu"), environ={}, repo_root="/repo", python="py")


def test_packing_flags_reach_each_phase(shards, tmp_path):
    """--enable_packed_data_mode is per phase (phase 1 is usually unpacked, phase 2 packed); None and an
    absent option leave it to the shards; False is written out (it is a value, not an absent switch).
    --dynamic_masking goes to both phases; without either option the argv is unchanged."""
    plain = [list(c.argv) for c in pretraining_plan(shards, tmp_path).commands]
    new_flags = ("--enable_packed_data_mode", "--dynamic_masking")
    assert not any(flag.startswith(new_flags) for argv in plain for flag in argv)
    plan = pretraining_plan(shards, tmp_path, "--enable_packed_data_mode", "None", "true", "--dynamic_masking")
    one, two = (flags_of(c) for c in plan.commands)
    assert (one.enable_packed_data_mode, two.enable_packed_data_mode) == (None, "True")
    assert one.dynamic_masking and two.dynamic_masking
    plan = pretraining_plan(shards, tmp_path, "--enable_packed_data_mode", "False", "True")
    assert "--enable_packed_data_mode=False" in split_script(list(plan.commands[0].argv))[2]
    assert [flags_of(c).enable_packed_data_mode for c in plan.commands] == ["False", "True"]
    with pytest.raises(SystemExit):
        parse("pretraining", "--model_name_or_path", "tiny", "--data_type", "fp32", "--enable_packed_data_mode",
              "True", "maybe")


def test_optimizer_choice_reaches_both_phases_only_when_given(shards, tmp_path):
    plain = [list(c.argv) for c in pretraining_plan(shards, tmp_path).commands]
    assert not any(flag.startswith("--optimizer") for argv in plain for flag in argv)  # the seed's argv as before
    plan = pretraining_plan(shards, tmp_path, "--optimizer", "adamw")
    assert [flags_of(c).optimizer for c in plan.commands] == ["adamw", "adamw"]
    with pytest.raises(SystemExit):
        parse("pretraining", "--model_name_or_path", "tiny", "--data_type", "fp32", "--optimizer", "sgd")
