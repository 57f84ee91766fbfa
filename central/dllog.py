"""DLLogger-format metrics (JSON lines, rank 0 only), console lines and tqdm progress bars.

A record is one line ``DLLL {json}`` with keys timestamp, datetime, elapsedtime, type, step, data,
where step is ``[epoch, step]`` (a list), ``"PARAMETER"`` or ``[]``; this is what NVIDIA's dllogger
writes, so existing parsers and our own report read the files unchanged.
(Named dllog, not logging: ``python central/<script>.py`` puts central/ first on sys.path, where a
``logging.py`` would shadow the standard library.)
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Union

from tqdm import tqdm

Step = Union[str, Sequence[int]]
PREFIX = "DLLL "


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # tensors / numpy scalars
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class DLLogger:
    """Writes DLLogger JSON lines to ``json_path`` and a short line to stdout; silent when disabled."""

    def __init__(self, json_path: Optional[Union[str, Path]], enabled: bool = True, console: bool = True):
        self.enabled = enabled
        self.console = console and enabled
        self.start = time.time()
        self._file = None
        if enabled and json_path:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(json_path, "a", encoding="utf-8", buffering=1)  # line-buffered

    def log(self, step: Step, data: dict, record_type: str = "LOG") -> None:
        if not self.enabled:
            return
        now = time.time()
        record = {
            "timestamp": now,
            "datetime": datetime.datetime.fromtimestamp(now).isoformat(),
            "elapsedtime": now - self.start,
            "type": record_type,
            "step": step if isinstance(step, str) else list(step),
            "data": _jsonable(data),
        }
        if self._file is not None:
            self._file.write(PREFIX + json.dumps(record) + "\n")
        if self.console:
            shown = " ".join(f"{k}: {_fmt(v)}" for k, v in record["data"].items())
            label = step if isinstance(step, str) else " ".join(str(s) for s in step) or "-"
            tqdm.write(f"DLL {record['datetime']} - {label} : {shown}", file=sys.stdout)

    def parameters(self, data: dict) -> None:
        self.log("PARAMETER", data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def read_dllogger(path: Union[str, Path]) -> List[dict]:
    """All records of a DLLogger JSON-lines file (lines without the prefix are skipped)."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line.startswith(PREFIX):
                records.append(json.loads(line[len(PREFIX):]))
    return records


def progress(iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "",
             enabled: bool = True, unit: str = "it", smoothing: float = 0.3, initial: int = 0) -> tqdm:
    """A tqdm bar on the main rank (and only where progress is wanted); a silent one elsewhere."""
    disable = not enabled or os.environ.get("BERT_DISABLE_PROGRESS") == "1"
    return tqdm(iterable, total=total, desc=desc, disable=disable, unit=unit, smoothing=smoothing,
                initial=initial, dynamic_ncols=True, file=sys.stderr)


def console(message: str, enabled: bool = True) -> None:
    """Print a line without breaking an active progress bar."""
    if enabled:
        tqdm.write(message, file=sys.stdout)
