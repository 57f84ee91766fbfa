"""Command-line pieces every entry point shares, in a module that needs no torch (``-h`` stays fast).

* ``whole_number`` / ``at_least``: argparse types whose error says what was expected, in one line.
* ``add_runtime_options``: the runtime's own options (device, mode, precision, process placement, debug),
  declared once here for every training script; the launcher copies them from the scripts' parsers.
"""
from __future__ import annotations

import argparse
import functools
import os
from typing import Callable

from central.choices import DEVICE_CHOICES, MODE_CHOICES, PRECISION_CHOICES


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def at_least(minimum: int, parse: Callable[[str], int] = whole_number) -> Callable[[str], int]:
    """``parse`` (a whole-number type by default) that also refuses values below ``minimum``."""

    @functools.wraps(parse)  # argparse names the type in its messages ("invalid float value")
    def parse_at_least(text: str) -> int:
        value = parse(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse_at_least


def add_runtime_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                        help="auto picks hpu if the Habana stack imports, else cuda if available, else cpu")
    parser.add_argument("--mode", choices=MODE_CHOICES, default="eager",
                        help="execution mode: eager, graph (compiled) or lazy (HPU's; CUDA compiles it as graph, "
                             "the CPU runs it eager)")
    parser.add_argument("--data_type", choices=PRECISION_CHOICES, default="fp32", help="fp32, or bf16 autocast")
    parser.add_argument("--local_rank", type=whole_number, default=int(os.environ.get("LOCAL_RANK", -1)),
                        help="set by the launcher; read from the environment otherwise")
    parser.add_argument("--dist_timeout", type=float, default=1800.0, help="seconds a collective may wait")
    parser.add_argument("--disable_progress_bar", action="store_true", help="no tqdm progress bar")
    parser.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")
    return parser
