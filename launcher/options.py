"""``demo_bert.py pretraining`` and ``demo_bert.py finetuning``, built from the training scripts' own parsers.

Each flag is declared once, in the script that reads it (``pretraining/run_pretraining.py``,
``finetuning/args.py``, ``run_squad.py``, ``run_glue.py``, ``central/cli_options.py`` for the runtime's).
``PRETRAINING_FLAGS`` and ``FINETUNING_FLAGS`` list, in the order the launcher writes them, the flags it
sends to the script and the launcher option (the reference demo_bert.py's names and short options) that
sets each one. For such an option the launcher copies type, choices, help and default from the script's
declaration: pre-training makes the per-phase options pairs (PHASE1 PHASE2) whose defaults are the two
phases' (``pretraining.phases``); fine-tuning takes each default from the chosen task's script once the
task is known (``finetuning.task_defaults``), and ``-h`` shows both. Only the launcher's own options (how
many processes, which phases, dry run, the global batch, ...) are declared in this module.
"""
from __future__ import annotations

import argparse
import functools
import importlib
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple

from central.cli_options import at_least
from pretraining.phases import PHASES, SCRIPT_PHASE_OPTIONS, phase_default

PRETRAINING_MODULE = "pretraining.run_pretraining"
SQUAD_MODULE = "finetuning.run_squad"
GLUE_MODULE = "finetuning.run_glue"
SCRIPT_MODULES = (PRETRAINING_MODULE, SQUAD_MODULE, GLUE_MODULE)
TASK_MODULES = {"mrpc": GLUE_MODULE, "squad": SQUAD_MODULE}  # the launcher's -t/--task_name -> its script

# How a script flag gets its value: ALWAYS the launcher option's (filled with the script's default);
# GIVEN only when the user gave the option; COMPUTED by the launcher (from its options and checks).
ALWAYS, GIVEN, COMPUTED = "always", "given", "computed"
KEEP = object()  # Flag.default: the script's own
MODE_NOTE = " (default: lazy for large, eager otherwise)"


@dataclass(frozen=True)
class Flag:
    """A script flag the launcher writes, and the launcher option that sets it (none: the launcher's value)."""

    script: str                          # the script's option string, e.g. "--warmup_proportion"
    names: Tuple[str, ...] = ()          # the launcher's option strings, e.g. ("-wp", "--warmup")
    send: str = ALWAYS
    pair: bool = False                   # pre-training: one value per phase
    at_least: Optional[int] = None       # the launcher refuses smaller values while parsing
    none_word: bool = False              # the word None stands for "no value" (reference command lines)
    default: object = KEEP               # a launcher default other than the script's
    required: Optional[bool] = None      # None: as the script's declaration says
    note: str = ""                       # added to the script's help text

    @property
    def dest(self) -> Optional[str]:
        long_names = [name for name in self.names if name.startswith("--")]
        return long_names[0][2:] if long_names else None


PRETRAINING_FLAGS = (
    Flag("--input_dir", ("-p", "--data_dir"), COMPUTED, pair=True, none_word=True, default=[None, None],
         required=False),
    Flag("--config_file", ("--config_file",), COMPUTED, required=False,
         note=" (default: the shape of --model_name_or_path)"),
    Flag("--output_dir", send=COMPUTED),
    Flag("--json-summary", send=COMPUTED),
    Flag("--max_seq_length", ("-s", "--max_seq_length"), pair=True, at_least=1),
    Flag("--max_predictions_per_seq", ("--max_predictions_per_seq",), pair=True, at_least=1),
    Flag("--enable_packed_data_mode", ("--enable_packed_data_mode",), pair=True, none_word=True,
         default=[None, None], note=" (one value per phase; None: as that phase's shards are)"),
    Flag("--dynamic_masking", ("--dynamic_masking",)),
    Flag("--train_batch_size", send=COMPUTED),
    Flag("--gradient_accumulation_steps", send=COMPUTED),
    Flag("--optimizer", ("--optimizer",), GIVEN),
    Flag("--learning_rate", ("-r", "--learning_rate"), pair=True),
    Flag("--max_steps", ("--max_steps",), pair=True, at_least=1),
    Flag("--warmup_proportion", ("-wp", "--warmup"), pair=True),
    Flag("--num_steps_per_checkpoint", ("-st", "--save_steps"), pair=True, at_least=1),
    Flag("--steps_this_run", ("--steps_this_run",), pair=True),
    Flag("--seed", ("--seed",)),
    Flag("--device", ("-d", "--device"), COMPUTED),
    Flag("--mode", ("--mode",), COMPUTED, default=None, note=MODE_NOTE),
    Flag("--data_type", ("--data_type",), required=True),
    Flag("--allreduce_post_accumulation", ("--allreduce_post_accumulation",)),
    Flag("--allreduce_post_accumulation_fp16", ("--allreduce_post_accumulation_fp16",)),
    Flag("--use_fused_lamb", send=COMPUTED),
    Flag("--vocab_file", ("--vocab_file",), COMPUTED),
    Flag("--resume_from_checkpoint", ("--resume_from_checkpoint",), COMPUTED),
    Flag("--init_checkpoint", ("--init_checkpoint",), COMPUTED, pair=True, none_word=True, default=[None, None],
         note=" (None: phase 1 starts fresh, phase 2 from phase 1's newest checkpoint)"),
    Flag("--resume_step", ("--resume_step",), COMPUTED, pair=True, none_word=True, default=[None, None],
         note=" (default: read from the --init_checkpoint name)"),
    Flag("--phase2", send=COMPUTED),
    Flag("--phase1_end_step", send=COMPUTED),
    Flag("--debug", ("--debug",)),
)
# Fine-tuning options that pre-training also takes: the model name (pre-training uses its shape, or starts
# phase 1 from its checkpoint) and --cache_dir (refused with a reason: pre-training downloads nothing).
PRETRAINING_FROM_FINETUNING = (
    Flag("--model_name_or_path", ("--model_name_or_path",), COMPUTED),
    Flag("--cache_dir", ("--cache_dir",), COMPUTED, note=" (fine-tuning only)"),
)
FINETUNING_FLAGS = (
    Flag("--model_name_or_path", ("--model_name_or_path",), COMPUTED),
    Flag("--task_name", send=COMPUTED),  # run_glue's; the launcher's -t/--task_name also picks the script
    Flag("--data_dir", ("-p", "--data_dir"), COMPUTED),
    Flag("--output_dir", send=COMPUTED),
    Flag("--do_train", send=COMPUTED),
    Flag("--overwrite_output_dir", send=COMPUTED),
    Flag("--max_seq_length", ("-s", "--max_seq_length"), at_least=1),
    Flag("--learning_rate", ("-r", "--learning_rate")),
    Flag("--num_train_epochs", ("-e", "--num_train_epochs")),
    Flag("--per_device_train_batch_size", ("-b", "--batch_size"), at_least=1),
    Flag("--per_device_eval_batch_size", ("-v", "--per_device_eval_batch_size"), at_least=1),
    Flag("--logging_steps", ("-l", "--logging_steps"), at_least=1),
    Flag("--seed", ("--seed",)),
    Flag("--do_eval", ("--do_eval",)),
    Flag("--doc_stride", ("-ds", "--doc_stride"), at_least=1),  # SQuAD only (run_squad declares it)
    Flag("--train_file", ("-tf", "--train_file")),
    Flag("--predict_file", ("-pf", "--predict_file")),
    Flag("--max_steps", ("--max_steps",), GIVEN, at_least=1),
    Flag("--save_steps", ("-st", "--save_steps"), GIVEN, at_least=1),
    Flag("--cache_dir", ("--cache_dir",), COMPUTED),
    Flag("--vocab_file", ("--vocab_file",), COMPUTED),
    Flag("--device", ("-d", "--device"), COMPUTED),
    Flag("--mode", ("--mode",), COMPUTED, default=None, note=MODE_NOTE),
    Flag("--data_type", ("--data_type",), required=True),
    Flag("--use_fused_adam", send=COMPUTED),
    Flag("--use_fused_clip_norm", send=COMPUTED),
    Flag("--debug", ("--debug",)),
)


# --------------------------------------------------------------------------------------------- parsers
class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (exit status 2) instead of usage + error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


class SubcommandParser(OneLineParser):
    """A sub-command whose ``complete(namespace)`` fills in what depends on other options (the task)."""

    def __init__(self, *args, complete: Optional[Callable[[argparse.Namespace], None]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.complete = complete

    def parse_known_args(self, args=None, namespace=None):
        namespace, rest = super().parse_known_args(args, namespace)
        if self.complete is not None:
            self.complete(namespace)
        return namespace, rest


class DefaultsFormatter(argparse.HelpFormatter):
    """-h shows each option's default, unless it is None/False or the help text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        unset = action.default in (None, False, argparse.SUPPRESS) or action.default == [None, None]
        if not unset and action.option_strings and "default" not in text:
            default = " ".join(map(str, action.default)) if isinstance(action.default, list) else action.default
            text += f" (default: {default})"
        return text


@functools.lru_cache(maxsize=None)
def script_parser(module: str) -> argparse.ArgumentParser:
    """The training script's own parser (only read: its declarations are the launcher's source)."""
    return importlib.import_module(module).build_parser()


def script_action(parser: argparse.ArgumentParser, option: str) -> Optional[argparse.Action]:
    return next((action for action in parser._actions if option in action.option_strings), None)


def _none_word(parse: Callable[[str], object]) -> Callable[[str], object]:
    @functools.wraps(parse)
    def parse_or_none(text: str):
        return None if text == "None" else parse(text)

    return parse_or_none


def _add_copied(parser: argparse.ArgumentParser, flag: Flag, action: argparse.Action, default, note: str = ""):
    """The launcher option ``flag.names`` with the script declaration ``action``'s type, choices and help."""
    kwargs = {"dest": flag.dest, "help": (action.help or "") + flag.note + note,
              "required": action.required if flag.required is None else flag.required}
    if action.nargs == 0:  # store_true
        parser.add_argument(*flag.names, action="store_true", **kwargs)
        return
    parse = action.type or str
    if flag.at_least is not None:
        parse = at_least(flag.at_least, parse)
    if flag.none_word:
        parse = _none_word(parse)
    kwargs.update(type=parse, choices=action.choices, default=None if kwargs["required"] else default)
    if flag.pair:
        kwargs.update(nargs=2, metavar=("PHASE1", "PHASE2"))
    elif action.metavar:
        kwargs["metavar"] = action.metavar
    parser.add_argument(*flag.names, **kwargs)


def _add_pretraining(parser: argparse.ArgumentParser) -> None:
    script = script_parser(PRETRAINING_MODULE)
    for flag in PRETRAINING_FLAGS:
        if not flag.names:
            continue
        action = script_action(script, flag.script)
        if flag.default is not KEEP:
            default = flag.default
        elif flag.send == GIVEN:  # written only when given, so the seed commands' argv stays the reference's
            _add_copied(parser, flag, action, None, f" (default: {action.default})")
            continue
        elif flag.pair and action.dest in SCRIPT_PHASE_OPTIONS:
            default = [phase_default(1, action.dest), phase_default(2, action.dest)]
        else:
            default = [action.default] * 2 if flag.pair else action.default
        _add_copied(parser, flag, action, default)
    finetuning = script_parser(GLUE_MODULE)
    for flag in PRETRAINING_FROM_FINETUNING:
        action = script_action(finetuning, flag.script)
        _add_copied(parser, flag, action, action.default)
    _add_launcher_options(parser, "pretraining")


def _task_defaults_note(flag: Flag, declarations: Mapping[str, argparse.Action]) -> str:
    """' (default: 384 for squad, 128 for mrpc)', or one value when the tasks agree."""
    values = {task: action.default for task, action in declarations.items()}
    if flag.send == GIVEN:
        return f" (default: {next(iter(values.values()))})"
    if len(values) < len(TASK_MODULES):
        task, value = next(iter(values.items()))
        return f" ({task} only; default: {value})"
    if len(set(values.values())) == 1:
        return f" (default: {next(iter(values.values()))})"
    return " (default: " + ", ".join(f"{value} for {task}" for task, value in sorted(values.items(),
                                                                                      reverse=True)) + ")"


def _add_finetuning(parser: argparse.ArgumentParser) -> None:
    scripts = {task: script_parser(module) for task, module in TASK_MODULES.items()}
    for flag in FINETUNING_FLAGS:
        if not flag.names:
            continue
        declarations = {task: action for task, script in scripts.items()
                        if (action := script_action(script, flag.script)) is not None}
        action = next(iter(declarations.values()))  # common flags are declared once, in finetuning/args.py
        if flag.send == COMPUTED:
            default = action.default if flag.default is KEEP else flag.default
            _add_copied(parser, flag, action, default)
        elif flag.required or action.nargs == 0:
            _add_copied(parser, flag, action, None)
        else:  # filled in by fill_task_defaults once the task is known
            _add_copied(parser, flag, action, None, _task_defaults_note(flag, declarations))
    _add_launcher_options(parser, "finetuning")


def fill_task_defaults(namespace: argparse.Namespace) -> None:
    """The chosen task's script defaults for the options the command line left out."""
    script = script_parser(TASK_MODULES[namespace.task_name])
    for flag in FINETUNING_FLAGS:
        if flag.names and flag.send == ALWAYS and getattr(namespace, flag.dest) is None:
            action = script_action(script, flag.script)
            if action is not None:  # SQuAD-only flags stay unset for MRPC
                setattr(namespace, flag.dest, action.default)


# --------------------------------------------------------------------------------------------- launcher-only
def _add_launcher_options(parser: argparse.ArgumentParser, command: str) -> None:
    """Options of the launcher itself (the scripts have no such flag, or one that means something else)."""
    parser.add_argument("-o", "--output_dir", default="/tmp",
                        help="results go under here (pre-training: results/; fine-tuning: <task_name>/)")
    parser.add_argument("-t", "--task_name", **{
        "pretraining": dict(default=None, help="reference option (dataset name); pre-training reads "
                                               "-p/--data_dir, so it is refused"),
        "finetuning": dict(default="mrpc", choices=tuple(TASK_MODULES),
                           help="mrpc runs finetuning.run_glue, squad finetuning.run_squad")}[command])
    parser.add_argument("--dist", action="store_true", help="start --world_size processes (mpirun or torchrun)")
    parser.add_argument("--world_size", type=at_least(1), default=1, help="number of processes")
    parser.add_argument("--no_mpirun", action="store_true", help="start the processes with torchrun, not mpirun")
    parser.add_argument("--launcher", choices=("mpirun", "torchrun"), default=None,
                        help="what starts several processes (default: mpirun; torchrun with --no_mpirun)")
    parser.add_argument("--hostfile", default=None, metavar="FILE",
                        help="multi-node: OpenMPI-style host list ('host slots=N' lines); see README")
    parser.add_argument("--process_per_node", type=at_least(0), default=0,
                        help="multi-node: processes on each node (default: world_size / number of hosts)")
    parser.add_argument("--dry_run", action="store_true",
                        help="print the environment and each command (shell-quoted), run nothing")
    if command == "pretraining":
        _add_pretraining_launcher_options(parser)
    else:
        parser.add_argument("--dataset_name", default=None,
                            help="reference option (hub dataset); data is read from -p/--data_dir, so it is refused")
        parser.add_argument("-mt", "--model_type", default="bert", choices=("bert",),
                            help="model family (reference option; only bert)")


def _add_pretraining_launcher_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-b", "--batch_size", type=at_least(1), nargs=2, metavar=("PHASE1", "PHASE2"),
                        default=[PHASES[1].micro_batch, PHASES[2].micro_batch], help="per-device micro-batch")
    parser.add_argument("--train_batch_size", type=at_least(1), nargs=2, metavar=("PHASE1", "PHASE2"), default=None,
                        help="global batch per optimizer step, with --accumulate_gradients "
                             f"(default: {PHASES[1].global_batch} {PHASES[2].global_batch})")
    parser.add_argument("--accumulate_gradients", action="store_true",
                        help="accumulate train_batch_size / (world_size x batch_size) micro-batches per step")
    parser.add_argument("--phase", type=int, choices=(1, 2), default=None, help="run only this phase")
    parser.add_argument("--create_logfile", action="store_true",
                        help="also write each phase's output to <output_dir>/results/phase<N>.log")


def build_parser(prog: str, pass_through: Mapping[str, str]) -> argparse.ArgumentParser:
    """The launcher's parser; ``pass_through`` names the sub-commands handed whole to another tool (-> help)."""
    parser = OneLineParser(prog=prog, description="BERT pre-training and fine-tuning launcher (HPU, CUDA, CPU).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=SubcommandParser)
    _add_pretraining(commands.add_parser("pretraining", help="two-phase MLM+NSP pre-training with LAMB",
                                         formatter_class=DefaultsFormatter))
    _add_finetuning(commands.add_parser("finetuning", help="fine-tune on SQuAD v1.1 or GLUE MRPC",
                                        formatter_class=DefaultsFormatter, complete=fill_task_defaults))
    for name, help_text in pass_through.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def launcher_options(command: str) -> Dict[str, Flag]:
    """{launcher dest: Flag} of the options a sub-command copies from the scripts."""
    table = PRETRAINING_FLAGS + PRETRAINING_FROM_FINETUNING if command == "pretraining" else FINETUNING_FLAGS
    return {flag.dest: flag for flag in table if flag.names}
