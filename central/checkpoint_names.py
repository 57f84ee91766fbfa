"""Checkpoint file names: ``ckpt_<step>.pt``. No torch import, so the launcher and the model-name
resolver can find checkpoints without loading PyTorch (``central.checkpoint`` reads and writes them)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Tuple, Union

PathLike = Union[str, Path]
CKPT_PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")


def checkpoint_step(path: PathLike) -> Optional[int]:
    """The step in a ``ckpt_<step>.pt`` name (None for any other name)."""
    match = CKPT_PATTERN.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(directory: PathLike) -> List[Tuple[int, Path]]:
    """(step, path) of every ``ckpt_<step>.pt`` in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in directory.iterdir() if checkpoint_step(p) is not None]
    return sorted(found)
