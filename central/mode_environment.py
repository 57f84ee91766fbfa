"""The variable that picks the Habana bridge's execution mode, set before anything can import the bridge.

The bridge (``habana_frameworks.torch``) reads ``PT_HPU_LAZY_MODE`` once, when it is first imported: 1 runs
lazy mode (ops accumulate into a graph that ``mark_step`` runs), 0 runs eager ops or ``torch.compile``
graphs. It can be imported as early as ``import torch`` (torch loads the device extensions that register
themselves: ``TORCH_DEVICE_BACKEND_AUTOLOAD``), by transformers, or by ``central.device`` probing for
HPU. So every entry point calls ``export_mode_environment`` right after parsing its command line, before
it imports torch; this module imports nothing heavy for that reason.
"""
from __future__ import annotations

import os
from typing import Dict, MutableMapping, Optional

HPU_LAZY_MODE = "PT_HPU_LAZY_MODE"
MAY_BE_HPU = ("hpu", "auto")  # --device values that can end on HPU


def mode_environment(kind: str, mode: str) -> Dict[str, str]:
    """Environment variables a mode needs on a device kind before the Habana bridge is imported."""
    if kind == "hpu":
        return {HPU_LAZY_MODE: "1" if mode == "lazy" else "0"}
    return {}


def export_mode_environment(device: str, mode: Optional[str],
                            environ: MutableMapping[str, str] = os.environ) -> None:
    """Set the variables of ``--mode`` for a run whose ``--device`` may end on HPU. The flag wins over a
    value inherited from the shell: the bridge would otherwise run another mode than the one asked for."""
    if device in MAY_BE_HPU:
        environ.update(mode_environment("hpu", mode or "eager"))
