"""Checks of what the launcher's options name, before anything starts: one LaunchError line each.

Model names go through ``pretraining.model_names.resolve_model_name``, the function run_pretraining and
fine-tuning's ``load_model`` use, so the launcher accepts and refuses exactly what the scripts would.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple

from central.checkpoint_names import list_checkpoints
from launcher.errors import LaunchError
from pretraining.model_names import FLAG, ModelKind, ModelName, check_hub_id, resolve_model_name


def refuse(option: str, reason: str) -> None:
    raise LaunchError(f"{option}: {reason}")


def existing(option: str, path: str, what: str = "path") -> str:
    if not os.path.exists(path):
        raise LaunchError(f"{option} {path}: no such {what}")
    return os.path.abspath(path)


def existing_dir(option: str, path: Optional[str]) -> str:
    if not path:
        raise LaunchError(f"{option} is required: give the dataset folder")
    if not os.path.isdir(path):
        raise LaunchError(f"{option} {path}: no such folder")
    return os.path.abspath(path)


def pretraining_shards(option: str, path: Optional[str], phase: int) -> str:
    folder = existing_dir(f"{option} (phase {phase})", path)
    if not any("training" in name for name in os.listdir(folder)):
        raise LaunchError(f"{option} {path} (phase {phase}): no training shards in it (files named *training*)")
    return folder


def pretraining_model(model: str, config_file: Optional[str]) -> Tuple[str, Optional[str]]:
    """(run_pretraining's --config_file, a checkpoint phase 1 starts from) for --model_name_or_path.

    The shape is --config_file's if given, else the model's own (a preset name, or its JSON file); a
    checkpoint (or a folder of them) as the model also makes phase 1 start from it.
    """
    name = resolve_model_name(model, hub=False)
    if config_file is not None:
        shape = _shape(resolve_model_name(config_file, "--config_file", hub=False), "--config_file",
                       "give a bert_config.json or a preset")
    else:
        shape = _shape(name, FLAG, "give --config_file")
    checkpoint = name.checkpoint()
    return shape, None if checkpoint is None else str(checkpoint)


def _shape(name: ModelName, flag: str, hint: str) -> str:
    if name.kind is ModelKind.PRESET:
        return name.name
    shape = name.shape_file()
    if shape is None:
        raise LaunchError(f"{flag} {name.name}: a checkpoint has no shape; {hint}")
    return str(shape)


def finetuning_model(model: str, cache_dir: Optional[str]) -> str:
    """The --model_name_or_path the fine-tuning script gets: base/large's hub ids, a checked hub id, a path."""
    name = resolve_model_name(model)
    if name.kind is ModelKind.PRESET:
        return name.hub_id or name.name
    if name.kind is ModelKind.HUB_ID:
        check_hub_id(name.name, cache_dir)
        return name.name
    return str(name.path)


def require_phase1_checkpoint(folder: Path) -> None:
    if not list_checkpoints(folder):
        raise LaunchError(f"--phase 2: no phase-1 checkpoint in {folder}; run phase 1 first or give "
                          "--init_checkpoint None PATH")
