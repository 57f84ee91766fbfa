"""How every entry point fails: the error kinds and their exit statuses, defined here and nowhere else.

    exit 0          done
    exit 1          RuntimeFailure: the run started and something went wrong that is not the input's
                    fault (a non-finite loss, a checkpoint that cannot be written, a failed child)
    exit 2          BadInputError: the input cannot work (missing or malformed data, an unknown model
                    name, impossible batch arithmetic, a bad command line); one line names the input
    exit 128 + N    stopped by signal N (after the current step and a checkpoint where that applies)

Each part of the project subclasses the kind that fits (``ShardError(BadInputError)``, ...), so a caller
can catch the specific error while ``run_main`` maps any of them to its status. The message is shown as
one line, without a traceback unless ``--debug`` is on the command line.
"""
from __future__ import annotations

import signal
import sys
from typing import Callable, List, Optional, Sequence

EXIT_OK = 0
EXIT_RUNTIME_FAILURE = 1
EXIT_BAD_INPUT = 2


def exit_status_for_signal(signum: int) -> int:
    """The status of a process stopped by signal ``signum`` (what a shell reports: 128 + N)."""
    return 128 + int(signum)


class ToolkitError(Exception):
    """An error whose message is one line for the user; ``exit_status`` says how the process ends."""

    exit_status = EXIT_RUNTIME_FAILURE


class BadInputError(ToolkitError, ValueError):
    """The input cannot work; the message names the input (a flag, a file, a row) and what is wrong."""

    exit_status = EXIT_BAD_INPUT


class RuntimeFailure(ToolkitError, RuntimeError):
    """The run failed for a reason that is not bad input (the previous results are left intact)."""

    exit_status = EXIT_RUNTIME_FAILURE


def one_line(err: BaseException) -> str:
    """The first line of an error's message (its type name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def report(err: BaseException, prog: Optional[str] = None) -> int:
    """Print ``[prog: ]error: <one line>`` to stderr and return the exit status ``err`` stands for."""
    prefix = f"{prog}: " if prog else ""
    if isinstance(err, OSError) and not isinstance(err, ToolkitError):
        where = f"{err.filename}: " if err.filename else ""
        print(f"{prefix}error: {where}{err.strerror or err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{prefix}error: {one_line(err)}", file=sys.stderr)
    return err.exit_status if isinstance(err, ToolkitError) else EXIT_RUNTIME_FAILURE


def run_main(main: Callable[[List[str]], Optional[int]], argv: Optional[Sequence[str]] = None,
             prog: Optional[str] = None, debug: Optional[bool] = None) -> int:
    """Run ``main(argv)`` and return the process exit status.

    A ``ToolkitError`` (or an ``OSError`` on a path nobody pre-checked: disk full, permission denied)
    becomes one line on stderr and its status; Ctrl-C becomes 128 + SIGINT. ``--debug`` in ``argv``
    (or ``debug=True``) re-raises instead, so the traceback shows.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = ("--debug" in argv) if debug is None else debug
    try:
        return main(argv) or EXIT_OK
    except (ToolkitError, OSError) as err:
        if debug:
            raise
        return report(err, prog)
    except KeyboardInterrupt:
        print(f"{prog + ': ' if prog else ''}interrupted", file=sys.stderr)
        return exit_status_for_signal(signal.SIGINT)
