"""Run a plan of commands one after another, as a terminal would show them.

``run_plan`` streams each command's output (and tees it to a log file when asked), stops at the first
failure with its exit status, forwards SIGINT/SIGTERM to the running command's process group (so every
rank of an mpirun/torchrun job gets them) and says which rank failed when mpirun or torchrun report it.

Commands are argv lists, never shell strings: nothing a user types is parsed by a shell. The launcher
builds the plans (``launcher/plan.py``); this module only runs them. No torch import.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from central.errors import BadInputError, exit_status_for_signal


class CommandStartError(BadInputError):
    """A command's program cannot be started (not installed, not executable)."""


@dataclass(frozen=True)
class Command:
    name: str  # "phase1", "phase2", "squad", "mrpc": used in messages
    argv: Tuple[str, ...]
    log_file: Optional[str] = None  # also write the command's output here


@dataclass(frozen=True)
class Plan:
    commands: Tuple[Command, ...]
    env: Dict[str, str] = field(default_factory=dict)  # variables set on top of the caller's environment


# How mpirun (OpenMPI 4/5) and torchrun name the first process that failed.
_FAILED_RANK_PATTERNS = (
    re.compile(r"Process name:\s*\[[^\]]*,(?P<rank>\d+)\]\s*Exit code:\s*(?P<code>-?\d+)"),
    re.compile(r"process rank (?P<rank>\d+) with PID \d+ on\s+node \S+ exited\s+on\s+signal (?P<signal>\d+)"),
    re.compile(r"Root Cause.*?rank\s*:\s*(?P<rank>\d+).*?exitcode\s*:\s*(?P<code>-?\d+)", re.S),
)


def failed_rank(output: str) -> Optional[Tuple[int, str]]:
    """(rank, "exit code N" | "signal N") of the first failed process as mpirun or torchrun report it."""
    for pattern in _FAILED_RANK_PATTERNS:
        found = pattern.search(output)
        if found:
            values = found.groupdict()
            code = int(values.get("code") or 0)
            how = f"signal {values['signal']}" if values.get("signal") else (
                f"signal {-code}" if code < 0 else f"exit code {code}")
            return int(found.group("rank")), how
    return None


class _Tail:
    """The last ``limit`` bytes a command printed (where mpirun/torchrun name the failed rank)."""

    def __init__(self, limit: int = 65536):
        self.chunks: deque = deque()
        self.size, self.limit = 0, limit

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        while self.size - len(self.chunks[0]) >= self.limit:
            self.size -= len(self.chunks.popleft())

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")


def _pump(source, sinks: List, tail: _Tail, lock: threading.Lock) -> None:
    """Copy a child's output to the console (and log) as it comes. A sink that breaks (a closed
    console pipe) is dropped rather than stopping the copy, so the child never blocks on a full pipe."""
    while True:
        chunk = os.read(source.fileno(), 65536)
        if not chunk:
            break
        with lock:
            tail.add(chunk)
            for sink in list(sinks):
                try:
                    sink.write(chunk)
                    sink.flush()
                except (OSError, ValueError):
                    sinks.remove(sink)


def _exit_status(returncode: int) -> int:
    return exit_status_for_signal(-returncode) if returncode < 0 else returncode  # Popen: -N for signal N


def run_command(command: Command, env: Mapping[str, str], stdout=None, stderr=None,
                forwarded: Optional[List[int]] = None) -> Tuple[int, str]:
    """Run one command, streaming its output; returns (exit status, tail of its output)."""
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr.buffer
    log = None
    if command.log_file:
        Path(command.log_file).parent.mkdir(parents=True, exist_ok=True)
        log = open(command.log_file, "ab")
    tail = _Tail()
    lock = threading.Lock()
    try:
        # Own process group: a signal reaches every process of the job (mpirun, torchrun, ranks) via killpg.
        child = subprocess.Popen(command.argv, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True)
    except OSError as err:
        if log:
            log.close()
        raise CommandStartError(f"cannot start {command.argv[0]}: {err.strerror or err}") from None
    previous = {}

    def forward(signum, _frame):
        if forwarded is not None:
            forwarded.append(signum)
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, forward)
    pumps = [threading.Thread(target=_pump, args=(child.stdout, [stdout] + ([log] if log else []), tail, lock)),
             threading.Thread(target=_pump, args=(child.stderr, [stderr] + ([log] if log else []), tail, lock))]
    try:
        for pump in pumps:
            pump.start()
        returncode = child.wait()
        for pump in pumps:
            pump.join(timeout=3)
        if any(pump.is_alive() for pump in pumps):  # orphans of the job still hold its output open
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for pump in pumps:
                pump.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        child.stdout.close()
        child.stderr.close()
        if log:
            log.close()
    return _exit_status(returncode), tail.text()


def run_plan(plan: Plan, environ: Optional[Mapping[str, str]] = None, stdout=None, stderr=None,
             prog: str = "demo_bert.py") -> int:
    """Run the plan's commands in order; the first failure (or a forwarded signal) stops the rest."""
    env = dict(os.environ if environ is None else environ)
    env.update(plan.env)
    report = stderr or sys.stderr.buffer
    for index, command in enumerate(plan.commands):
        forwarded: List[int] = []
        status, tail = run_command(command, env, stdout, stderr, forwarded)
        if status == 0 and not forwarded:
            continue
        message = f"{prog}: {command.name} failed with exit status {status}"
        if forwarded:
            status = status or exit_status_for_signal(forwarded[0])
            message = f"{prog}: {command.name} stopped by {signal.Signals(forwarded[0]).name} (exit status {status})"
        rank = failed_rank(tail)
        if rank is not None:
            message += f"; rank {rank[0]} failed first ({rank[1]})"
        skipped = [c.name for c in plan.commands[index + 1:]]
        if skipped:
            message += f"; not run: {', '.join(skipped)}"
        report.write((message + "\n").encode())
        report.flush()
        return status
    return 0
