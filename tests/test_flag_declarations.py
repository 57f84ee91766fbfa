"""Each flag and its default are declared once (issue 19): the training scripts' parsers are the source.

* Source check: every option string passed to ``add_argument`` in the launcher (demo_bert.py, launcher/) and
  in a script family (pre-training: run_pretraining.py; fine-tuning: finetuning/args.py, run_squad.py,
  run_glue.py; both: central/cli_options.py) appears at exactly one call site. The launcher's options that
  set a script flag are not declared there: they are copied from the script (launcher/options.py's tables).
  A few launcher options share a name with a script flag that means something else (HOMONYMS).
* Parser check: every launcher option named like a script flag of its family carries that flag's help,
  type and choices, and every flag the launcher's tables name exists in the script.
"""
import argparse
import ast
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import pytest

import demo_bert
from launcher.options import (FINETUNING_FLAGS, PRETRAINING_FLAGS, PRETRAINING_FROM_FINETUNING, TASK_MODULES,
                              script_action, script_parser)

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = ["demo_bert.py", *sorted(str(p.relative_to(REPO)) for p in (REPO / "launcher").glob("*.py"))]
FAMILIES = {
    "pretraining": ["pretraining/run_pretraining.py", "central/cli_options.py"],
    "finetuning": ["finetuning/args.py", "finetuning/run_squad.py", "finetuning/run_glue.py",
                   "central/cli_options.py"],
}
# Launcher options named like a script flag that means something else (both names are the reference's).
HOMONYMS = {
    "--output_dir": "the launcher's results root; the scripts get <root>/results/checkpoints or <root>/<task>",
    "--train_batch_size": "pre-training's global batch; run_pretraining's is per rank and optimizer step",
    "--task_name": "picks the script (mrpc | squad); run_glue's names the GLUE task",
}


def declarations(relative: str) -> Dict[str, List[str]]:
    """{option string: ["file:line", ...]} for the literal option strings of add_argument calls."""
    found = defaultdict(list)
    for node in ast.walk(ast.parse((REPO / relative).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("-"):
                    found[arg.value].append(f"{relative}:{node.lineno}")
    return found


def sites(files: List[str]) -> Dict[str, List[str]]:
    merged = defaultdict(list)
    for relative in dict.fromkeys(files):
        for option, where in declarations(relative).items():
            merged[option] += where
    return merged


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_option_string_is_declared_at_one_place(family):
    launcher = sites(LAUNCHER)
    together = sites(LAUNCHER + FAMILIES[family])
    assert len(together) > 30  # the walk finds the declarations at all
    twice = {option: where for option, where in together.items() if len(where) > 1 and option not in HOMONYMS}
    assert not twice, f"declared more than once: {twice}"
    for option in HOMONYMS:
        assert len(launcher.get(option, [])) == 1, (option, launcher.get(option))
        assert len(together[option]) <= 2, (option, together[option])


def _unwrapped(parse):
    while hasattr(parse, "__wrapped__"):  # the launcher's at_least / None-word wrappers
        parse = parse.__wrapped__
    return parse


def _options(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    return {name: action for action in parser._actions for name in action.option_strings}


def _subcommand(name: str) -> argparse.ArgumentParser:
    parser = demo_bert.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[name]


@pytest.mark.parametrize("command, scripts", [("pretraining", ["pretraining.run_pretraining"]),
                                              ("finetuning", sorted(set(TASK_MODULES.values())))])
def test_launcher_options_named_like_script_flags_are_copies(command, scripts):
    launcher = _options(_subcommand(command))
    checked = 0
    for module in scripts:
        for name, script in _options(script_parser(module)).items():
            ours = launcher.get(name)
            if ours is None or name in HOMONYMS or name in ("-h", "--help"):
                continue
            assert ours.help.startswith(script.help or ""), name
            assert ours.choices == script.choices, name
            if script.nargs != 0:
                assert _unwrapped(ours.type) is (script.type or str), name
            checked += 1
    assert checked >= 12


def test_the_tables_name_real_script_flags():
    pretraining = script_parser("pretraining.run_pretraining")
    finetuning = [script_parser(module) for module in TASK_MODULES.values()]
    for flag in PRETRAINING_FLAGS:
        assert script_action(pretraining, flag.script) is not None, flag.script
    for flag in FINETUNING_FLAGS + PRETRAINING_FROM_FINETUNING:
        assert any(script_action(parser, flag.script) for parser in finetuning), flag.script
    # and every copied launcher option is in its sub-command
    for command, table in (("pretraining", PRETRAINING_FLAGS + PRETRAINING_FROM_FINETUNING),
                           ("finetuning", FINETUNING_FLAGS)):
        options = _options(_subcommand(command))
        for flag in table:
            for name in flag.names:
                assert name in options, (command, name)


def test_seeds_are_the_scripts():
    pre = demo_bert.build_parser().parse_args(["pretraining", "--model_name_or_path", "tiny", "--data_type", "fp32"])
    fine = demo_bert.build_parser().parse_args(["finetuning", "--model_name_or_path", "tiny", "--data_type", "fp32",
                                                "-p", "d"])
    assert (pre.seed, fine.seed) == (12439, 42)
    assert script_parser("pretraining.run_pretraining").get_default("seed") == 12439
    assert all(script_parser(m).get_default("seed") == 42 for m in TASK_MODULES.values())


def test_run_pretraining_defaults_are_the_phase_table():
    """The launcher's pairs and the script's own defaults are the same table (pretraining/phases.py)."""
    from pretraining.phases import PHASES

    parser = script_parser("pretraining.run_pretraining")
    required = ["--input_dir", "d", "--config_file", "tiny", "--output_dir", "o"]
    for phase, extra in ((1, []), (2, ["--phase2"])):
        args = parser.parse_args(required + extra)
        table = PHASES[phase]
        assert (args.max_seq_length, args.max_predictions_per_seq, args.learning_rate, args.train_batch_size,
                args.max_steps, args.warmup_proportion, args.num_steps_per_checkpoint) == (
            table.max_seq_length, table.max_predictions_per_seq, table.learning_rate, table.micro_batch,
            table.max_steps, table.warmup_proportion, table.save_steps)
    assert parser.parse_args(required + ["--phase2", "--max_seq_length", "256"]).max_seq_length == 256
    assert parser.parse_args(required).phase1_end_step == PHASES[1].max_steps
    launcher = demo_bert.build_parser().parse_args(["pretraining", "--model_name_or_path", "tiny", "--data_type",
                                                    "fp32"])
    assert (launcher.max_seq_length, launcher.batch_size, launcher.save_steps) == (
        [PHASES[1].max_seq_length, PHASES[2].max_seq_length], [PHASES[1].micro_batch, PHASES[2].micro_batch],
        [PHASES[1].save_steps, PHASES[2].save_steps])
