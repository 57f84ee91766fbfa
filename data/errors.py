"""How data preparation fails: one line naming the input and what is wrong, exit status 2.

Every stage raises ``DataPrepError`` for bad input (missing folders, a file that is not a vocab,
a corrupt dump, impossible options, no network); ``run_main`` turns it into ``error: ...`` on
stderr and exit status 2, without a traceback unless ``--debug`` is on the command line.
"""
from __future__ import annotations

import sys
from typing import Callable, List, Optional, Sequence


class DataPrepError(Exception):
    """Bad input or environment for a data preparation step; the message is shown as one line."""


def run_main(main: Callable[[List[str]], None], argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)`` and return the process exit status (0, 2 for bad input, 130 on Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        main(argv)
    except DataPrepError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, permission denied, ... on a path we did not pre-check
        if debug:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
