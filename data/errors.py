"""How data preparation fails: one line naming the input and what is wrong, exit status 2.

Every stage raises ``DataPrepError`` (a ``central.errors.BadInputError``) for bad input (missing folders,
a file that is not a vocab, a corrupt dump, impossible options, no network); ``run_main`` is the
project's one entry-point wrapper (``central.errors.run_main``): ``error: ...`` on stderr and exit
status 2, without a traceback unless ``--debug`` is on the command line.
"""
from __future__ import annotations

from central.errors import BadInputError, run_main

__all__ = ["DataPrepError", "run_main"]


class DataPrepError(BadInputError):
    """Bad input or environment for a data preparation step; the message is shown as one line."""
