"""Checkpoint files that survive crashes: atomic writes, keep-last-N, safe loading.

Writes go to a temporary file in the target directory, are fsynced, then renamed over the final
name, so a crash mid-save leaves the previous checkpoint as it was. Loads use
``torch.load(weights_only=True)``: a checkpoint can carry tensors, numbers, strings, lists and dicts,
never code.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

from central.errors import BadInputError, RuntimeFailure

PathLike = Union[str, Path]
CKPT_PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")


class CheckpointError(BadInputError):
    """A checkpoint cannot be read (missing, truncated, corrupted, or carries objects we refuse)."""


class CheckpointWriteError(RuntimeFailure):
    """A checkpoint or export cannot be written (disk full, read-only directory, ...)."""


def atomic_write(path: PathLike, writer: Callable[[str], None]) -> Path:
    """Run ``writer(tmp_path)`` then rename tmp over ``path``; on any failure ``path`` is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual file mode
    except OSError as err:
        raise CheckpointWriteError(f"cannot write {path}: {err.strerror or err}") from err
    try:
        writer(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        os_error = _os_error_in_chain(err)
        if os_error is not None:
            raise CheckpointWriteError(f"cannot write {path}: {os_error.strerror or os_error}") from err
        if isinstance(err, RuntimeError) and "write" in str(err).lower():
            raise CheckpointWriteError(f"cannot write {path}: {err}") from err
        raise
    return path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _os_error_in_chain(err: BaseException) -> Optional[OSError]:
    """The OSError behind ``err`` (torch.save wraps a failed write, e.g. a full disk, in RuntimeErrors)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: PathLike, name_prefix: str = "") -> List[Path]:
    """Delete the temporary files that killed atomic writes left (``.<name_prefix>*.tmp``); returns them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir()
             if p.name.startswith("." + name_prefix) and p.name.endswith(".tmp") and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def save_torch_file(obj, path: PathLike) -> None:
    """torch.save through a Python file object, so that a failed write (full disk, file size limit)
    surfaces as the OSError it is rather than only as a C++ stream error."""
    with open(path, "wb") as handle:
        torch.save(obj, handle)


def atomic_torch_save(obj, path: PathLike) -> Path:
    return atomic_write(path, lambda tmp: save_torch_file(obj, tmp))


def atomic_write_text(path: PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
    return atomic_write(path, write)


def checkpoint_step(path: PathLike) -> Optional[int]:
    match = CKPT_PATTERN.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(directory: PathLike) -> List[Tuple[int, Path]]:
    """(step, path) of every ``ckpt_<step>.pt`` in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in directory.iterdir() if checkpoint_step(p) is not None]
    return sorted(found)


def keep_last(directory: PathLike, keep: int = 3) -> None:
    """Delete all but the ``keep`` newest checkpoints."""
    for _, path in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)


def safe_load(path: PathLike) -> Dict:
    """Load a checkpoint with weights_only=True; any failure becomes one CheckpointError line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, refused global, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            reason = "it holds Python objects other than tensors and plain data (refused: weights_only=True)"
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {reason}") from err


def latest_valid_checkpoint(directory: PathLike, warn: Callable[[str], None] = print
                            ) -> Optional[Tuple[Path, Dict]]:
    """Newest checkpoint that loads; broken ones are reported in one line each and skipped."""
    for _, path in reversed(list_checkpoints(directory)):
        try:
            return path, safe_load(path)
        except CheckpointError as err:
            warn(f"warning: skipping {err}")
    return None
