#!/usr/bin/env python3
"""One launcher for BERT pre-training and fine-tuning on Gaudi (HPU), NVIDIA GPUs or CPU.

    python demo_bert.py pretraining --model_name_or_path large --data_type bf16 --batch_size 64 8 \\
        --accumulate_gradients --data_dir PHASE1_SHARDS PHASE2_SHARDS
    python demo_bert.py finetuning --model_name_or_path base --task_name squad --data_type fp32 --data_dir Squad
    python demo_bert.py report|predict|quickstart ...    (handed to those tools' own parsers)

The options, their short names and defaults are those of Habana's reference demo_bert.py; the README
("Launcher") lists what was added. The sub-commands are built from the training scripts' own parsers
(``launcher/options.py``); ``launcher/plan.py`` turns the options into commands (one per pre-training
phase, or one fine-tuning run) wrapped in mpirun/torchrun for several processes, and
``central/process_runner.py`` runs them. Nothing heavy is imported until it is needed, so ``-h`` answers
at once.
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import List, Optional

from central.errors import EXIT_BAD_INPUT, run_main
from central.process_runner import Plan, run_plan
from launcher import machine as machine_facts
from launcher import options
from launcher.machine import Machine
from launcher.plan import format_dry_run
from launcher.plan import build_plan as plan_commands

REPO_ROOT = Path(__file__).resolve().parent
PROG = "demo_bert.py"

# Sub-commands whose arguments belong to another tool: (module with main(argv), help).
PASS_THROUGH = {
    "report": ("tools.report", "summarise a run's dllogger.json (see: demo_bert.py report -h)"),
    "predict": ("tools.predict", "answer questions / classify pairs with a fine-tuned model"),
    "quickstart": ("data.quickstart", "prepare a small dataset and run a short pre-train + fine-tune"),
}


def build_parser():
    return options.build_parser(PROG, {name: help_text for name, (_, help_text) in PASS_THROUGH.items()})


def build_plan(args, machine: Optional[Machine] = None) -> Plan:
    """The commands for parsed options; the machine's facts are probed here unless given."""
    machine = machine or machine_facts.probe(args)
    return plan_commands(args, machine, environ=os.environ, repo_root=str(REPO_ROOT), python=sys.executable)


def _pass_through(name: str, argv: List[str]) -> int:
    module_name = PASS_THROUGH[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        print(f"{PROG} {name}: error: not available in this checkout ({module_name} is missing)", file=sys.stderr)
        return EXIT_BAD_INPUT
    return module.main(argv) or 0


def main(argv: Optional[List[str]] = None, machine: Optional[Machine] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PASS_THROUGH:
        return _pass_through(argv[0], argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # -h, or a bad command line already reported in one line
        return stop.code if isinstance(stop.code, int) else 0
    return run_main(lambda _: _launch(args, machine), argv, prog=f"{PROG} {args.command}", debug=args.debug)


def _launch(args, machine: Optional[Machine]) -> int:
    plan = build_plan(args, machine)
    if args.dry_run:
        sys.stdout.write(format_dry_run(plan))
        return 0
    sys.stdout.flush()
    return run_plan(plan, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
