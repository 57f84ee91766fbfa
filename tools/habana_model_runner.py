"""Run demo_bert.py with the parameters of a YAML recipe (the reference's hb_configs runner).

    python tools/habana_model_runner.py --framework pytorch --model bert \
        --hb_config tools/hb_configs/bert_large_pretrain_bf16_lazy.yaml [--dry_run]

A recipe:

    model: bert
    env_variables:                 # set for the run (strings; null or empty: none)
      LOG_LEVEL_ALL: 6
    parameters:
      command: finetuning          # the demo_bert.py sub-command (pretraining | finetuning | quickstart)
      task_name: squad             # picks dataset_parameters/<task_name> (passed on for finetuning only)
      data_type: bf16              # picks .../data_type_parameters/<data_type>
      model_name_or_path: large
      store_true: [do_eval, dist]  # bare flags
      dataset_parameters:
        squad:
          max_seq_length: 384
          data_dir: /data/Squad
          data_type_parameters:
            bf16: {batch_size: 24}
            fp32: {batch_size: 10}

Each parameter becomes ``--name value``; a list, or a string with commas (the reference's
``"phase1,phase2"``), gives several values; true is a bare flag, false and null are left out. The
most specific level wins: data-type parameters over dataset parameters over general ones.
``--set name=value`` overrides a parameter (site paths, a shorter run) without editing the recipe.
``--dry_run`` is handed to demo_bert.py, which then prints its commands instead of running them.
A malformed recipe ends with exit status 2 and one line naming the offending key.

It needs PyYAML and the project's error model (``central.errors``: the package is installed by
tools/setup_env.sh, so it also runs by path), and finds demo_bert.py beside its own folder.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml

from central.errors import BadInputError, run_main

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_BERT = REPO_ROOT / "demo_bert.py"
TOP_LEVEL_KEYS = ("model", "env_variables", "parameters")
COMMANDS = ("pretraining", "finetuning", "quickstart")
RESERVED = ("command", "store_true", "dataset_parameters")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SCALARS = (str, int, float, bool)


class RecipeError(BadInputError):
    """The recipe is malformed; the message names the offending key."""


def load_recipe(path: Path) -> dict:
    if not path.is_file():
        raise RecipeError(f"--hb_config {path}: no such file")
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise RecipeError(f"--hb_config {path}: not valid YAML{where}") from None
    if not isinstance(recipe, dict):
        raise RecipeError(f"--hb_config {path}: the recipe must be a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    return recipe


def check_value(key: str, value) -> None:
    """A parameter value: a scalar, null, or a list of scalars."""
    if value is None or isinstance(value, SCALARS):
        return
    if isinstance(value, list) and all(isinstance(v, SCALARS) and not isinstance(v, bool) for v in value):
        return
    raise RecipeError(f"{key}: must be a value or a list of values, not {type(value).__name__}")


def mapping(key: str, value, allow_none: bool = False) -> dict:
    if value is None and allow_none:
        return {}
    if not isinstance(value, dict):
        raise RecipeError(f"{key}: must be a mapping")
    for name in value:
        if not isinstance(name, str):
            raise RecipeError(f"{key}: key {name!r} must be a string")
    return value


def collect_parameters(recipe: dict) -> Tuple[str, Dict[str, object], List[str]]:
    """(command, ordered parameters, store_true flags) with the dataset / data-type filtering applied."""
    parameters = mapping("parameters", recipe.get("parameters"))
    command = parameters.get("command")
    if command not in COMMANDS:
        raise RecipeError(f"parameters.command: must be one of {', '.join(COMMANDS)} (got {command!r})")
    store_true = parameters.get("store_true") or []
    if not isinstance(store_true, list) or not all(isinstance(f, str) and f for f in store_true):
        raise RecipeError("parameters.store_true: must be a list of flag names")

    merged: Dict[str, object] = {}
    for key, value in parameters.items():
        if key not in RESERVED:
            check_value(f"parameters.{key}", value)
            merged[key] = value
    datasets = mapping("parameters.dataset_parameters", parameters.get("dataset_parameters"), allow_none=True)
    if datasets:
        task = parameters.get("task_name")
        if not isinstance(task, str) or not task:
            raise RecipeError("parameters.task_name: needed to choose from parameters.dataset_parameters")
        if task not in datasets:
            raise RecipeError(f"parameters.dataset_parameters.{task}: missing (task_name is {task!r}; "
                              f"the recipe has {', '.join(map(str, datasets)) or 'none'})")
        dataset_key = f"parameters.dataset_parameters.{task}"
        dataset = mapping(dataset_key, datasets[task], allow_none=True)
        for key, value in dataset.items():
            if key != "data_type_parameters":
                check_value(f"{dataset_key}.{key}", value)
                merged[key] = value
        by_type = mapping(f"{dataset_key}.data_type_parameters", dataset.get("data_type_parameters"), allow_none=True)
        if by_type:
            data_type = merged.get("data_type")
            if not isinstance(data_type, str) or data_type not in by_type:
                raise RecipeError(f"{dataset_key}.data_type_parameters.{data_type}: missing "
                                  f"(data_type is {data_type!r}; the recipe has {', '.join(map(str, by_type))})")
            typed_key = f"{dataset_key}.data_type_parameters.{data_type}"
            for key, value in mapping(typed_key, by_type[data_type], allow_none=True).items():
                check_value(f"{typed_key}.{key}", value)
                merged[key] = value
    return command, merged, list(store_true)


def values(value) -> List[str]:
    items = value if isinstance(value, list) else [value]
    out: List[str] = []
    for item in items:
        if isinstance(item, str):
            out.extend(part.strip() for part in item.split(",") if part.strip())
        else:
            out.append(str(item))
    return out


def parse_overrides(pairs: List[str]) -> Dict[str, object]:
    """``--set name=value`` pairs; the value is read as YAML (true, 3, 2e-5, [a, b], null)."""
    overrides: Dict[str, object] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise RecipeError(f"--set {pair}: expected name=value")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        check_value(f"--set {name}", value)
        overrides[name] = value
    return overrides


def build_argv(recipe: dict, model: str, dry_run: bool = False, python: str = sys.executable,
               overrides: Optional[Dict[str, object]] = None) -> List[str]:
    """The demo_bert.py command line a recipe stands for (a list: it is never run through a shell)."""
    unknown = [k for k in recipe if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise RecipeError(f"{unknown[0]}: unknown top-level key (expected {', '.join(TOP_LEVEL_KEYS)})")
    if recipe.get("model") != model:
        raise RecipeError(f"model: the recipe is for {recipe.get('model')!r}, but --model is {model!r}")
    command, parameters, store_true = collect_parameters(recipe)
    parameters.update(overrides or {})
    argv = [python, str(DEMO_BERT), command]
    for key, value in parameters.items():
        if value is None or value is False:
            continue
        if key == "task_name" and command != "finetuning":
            continue  # only picks dataset_parameters here; demo_bert.py pretraining has no task
        argv.append(f"--{key}")
        if value is not True:
            argv.extend(values(value))
    for flag in store_true:
        if f"--{flag}" not in argv:
            argv.append(f"--{flag}")
    if dry_run and "--dry_run" not in argv:
        argv.append("--dry_run")
    return argv


def recipe_environment(recipe: dict, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ if base is None else base)
    for name, value in mapping("env_variables", recipe.get("env_variables"), allow_none=True).items():
        if not ENV_NAME.match(name):
            raise RecipeError(f"env_variables.{name}: not a valid environment variable name")
        if not isinstance(value, SCALARS) and value is not None:
            raise RecipeError(f"env_variables.{name}: must be a single value")
        if value is None:
            env.pop(name, None)
        else:
            env[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def run(argv: List[str], env: Dict[str, str]) -> int:
    """Run demo_bert.py, forwarding SIGTERM/SIGINT so it can checkpoint and exit cleanly."""
    child = subprocess.Popen(argv, env=env)
    forwarded = {}

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        forwarded[sig] = signal.signal(sig, forward)
    try:
        return child.wait()
    finally:
        for sig, handler in forwarded.items():
            signal.signal(sig, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python tools/habana_model_runner.py",
                                     description="Run demo_bert.py with the parameters of a YAML recipe.")
    parser.add_argument("--framework", required=True, help="pytorch (the only framework of this repository)")
    parser.add_argument("--model", required=True, help="model name the recipe is for (bert)")
    parser.add_argument("--hb_config", required=True, help="YAML recipe (see tools/hb_configs/)")
    parser.add_argument("--dry_run", action="store_true", help="demo_bert.py prints its commands without running them")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="overrides",
                        help="override a parameter after filtering (e.g. --set data_dir=/data/p1,/data/p2); repeatable")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda _: run_recipe(args), argv)


def run_recipe(args) -> int:
    if args.framework.lower() != "pytorch":
        raise RecipeError(f"--framework {args.framework}: this repository holds the PyTorch BERT only (use pytorch)")
    if args.model.lower() != "bert":
        raise RecipeError(f"--model {args.model}: this repository holds BERT only (use bert)")
    recipe = load_recipe(Path(args.hb_config))
    command = build_argv(recipe, args.model.lower(), dry_run=args.dry_run, overrides=parse_overrides(args.overrides))
    env = recipe_environment(recipe)
    if not DEMO_BERT.is_file():
        raise RecipeError(f"{DEMO_BERT}: not found (run from a complete checkout)")
    print(f"habana_model_runner: {shlex.join(command)}", flush=True)
    return run(command, env)


if __name__ == "__main__":
    sys.exit(main())
