"""How many processes, on which nodes, started by whom: the launcher's topology and command prefixes.

``resolve_topology`` checks the distribution options against each other (one line naming the options
when they disagree); ``mpirun_prefix`` / ``torchrun_prefix`` give the command up to the program, and
``launch_environment`` the variables every child gets. Pure functions: the machine's facts (cores,
root, OpenMPI's version) come in as arguments (``launcher.machine``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from central.rendezvous import DEFAULT_MASTER_ADDR, DEFAULT_MASTER_PORT
from launcher.errors import LaunchError


@dataclass(frozen=True)
class Topology:
    world_size: int = 1
    launcher: str = "mpirun"  # mpirun | torchrun; unused for a single process
    hosts: Tuple[str, ...] = ()  # multi-node only
    per_node: int = 0  # processes per node, multi-node only
    hostfile: Optional[str] = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or bool(self.hosts)


def parse_hostfile(path: str) -> List[str]:
    """Node names of an OpenMPI-style hostfile (``host [slots=N] ...`` lines, ``#`` comments), in order."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LaunchError(f"--hostfile {path}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
    hosts: List[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words and words[0] not in hosts:
            hosts.append(words[0])
    if not hosts:
        raise LaunchError(f"--hostfile {path}: lists no hosts")
    return hosts


def resolve_topology(world_size: int, dist: bool, launcher: Optional[str], no_mpirun: bool,
                     hostfile: Optional[str], process_per_node: int, environ: Mapping[str, str]) -> Topology:
    """Check the distribution options against each other and return what to start."""
    if no_mpirun and launcher == "mpirun":
        raise LaunchError("--no_mpirun contradicts --launcher mpirun; give one of them")
    launcher = launcher or ("torchrun" if no_mpirun else "mpirun")
    hosts: List[str] = []
    if hostfile:
        hosts = parse_hostfile(hostfile)
    elif process_per_node > 0:
        # Reference compatibility: the node list came from MULTI_HLS_IPS (comma separated).
        hosts = [h for h in environ.get("MULTI_HLS_IPS", "").split(",") if h.strip()]
        if not hosts:
            raise LaunchError("--process_per_node needs --hostfile FILE listing the nodes (or MULTI_HLS_IPS)")
    if not hosts:
        if world_size > 1 and not dist:
            raise LaunchError(f"--world_size {world_size} needs --dist to start {world_size} processes")
        if dist and world_size == 1:
            raise LaunchError("--dist needs --world_size N with N > 1 (or --hostfile for several nodes)")
        return Topology(world_size, launcher)
    per_node = process_per_node
    if per_node == 0:
        if world_size % len(hosts):
            raise LaunchError(f"--world_size {world_size} does not split evenly over the {len(hosts)} hosts of "
                              f"--hostfile; give --process_per_node")
        per_node = max(1, world_size // len(hosts))
    if world_size == 1:
        world_size = per_node * len(hosts)
    if world_size != per_node * len(hosts):
        raise LaunchError(f"--world_size {world_size} differs from {len(hosts)} hosts x --process_per_node "
                          f"{per_node} = {per_node * len(hosts)}")
    return Topology(world_size, launcher, tuple(hosts), per_node, hostfile)


def mpirun_prefix(topology: Topology, env_names: Sequence[str], *, cores: int, as_root: bool,
                  mpi_major: int, mpirun: str = "mpirun") -> List[str]:
    """``mpirun ...`` up to the program: binding of K cores per rank, exported variables, hostfile."""
    per_node = topology.per_node if topology.hosts else topology.world_size
    pe = max(1, cores // per_node)  # cores each rank is bound to
    argv = [mpirun, "-n", str(topology.world_size)]
    if as_root:
        argv.append("--allow-run-as-root")
    if topology.hosts:
        argv += ["--hostfile", str(Path(topology.hostfile).resolve())] if topology.hostfile else \
            ["-H", ",".join(f"{h}:{per_node}" for h in topology.hosts)]
        mapping = f"ppr:{per_node}:node:PE={pe}"
    else:
        mapping = f"socket:PE={pe}"
    bind = "core"
    if per_node * pe > cores:  # more ranks than cores (small boxes): allow sharing cores
        argv.append("--oversubscribe")
        bind = "core:overload-allowed"
    # OpenMPI 5 ranks by slot/node/fill/span only; "slot" keeps consecutive ranks on consecutive cores.
    rank_by = "slot" if mpi_major >= 5 else "core"
    argv += ["--bind-to", bind, "--map-by", mapping, "--rank-by", rank_by, "--report-bindings"]
    for name in env_names:
        argv += ["-x", name]
    return argv


def torchrun_prefix(topology: Topology, env: Mapping[str, str], python: str, rdzv_id: str = "bert") -> List[str]:
    """``python -m torch.distributed.run ...`` up to the program.

    One node: ``--nproc_per_node N`` with the MASTER_ADDR/MASTER_PORT we set. Several nodes: the same
    command is run on every node of the hostfile; c10d rendezvous on the first host hands out node ranks.
    """
    argv = [python, "-m", "torch.distributed.run"]
    if topology.hosts:
        argv += [f"--nnodes={len(topology.hosts)}", f"--nproc_per_node={topology.per_node}",
                 "--rdzv_backend=c10d", f"--rdzv_endpoint={topology.hosts[0]}:{env['MASTER_PORT']}",
                 f"--rdzv_id={rdzv_id}"]
    else:
        argv += [f"--nproc_per_node={topology.world_size}", f"--master_addr={env['MASTER_ADDR']}",
                 f"--master_port={env['MASTER_PORT']}"]
    return argv


def launch_environment(repo_root: str, environ: Mapping[str, str], topology: Topology,
                       extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Variables the children need: the repository importable, the rendezvous address, mode settings."""
    path = environ.get("PYTHONPATH")
    env = {"PYTHONPATH": str(repo_root) + (os.pathsep + path if path else "")}
    master = topology.hosts[0] if topology.hosts else DEFAULT_MASTER_ADDR
    env["MASTER_ADDR"] = environ.get("MASTER_ADDR", master)
    env["MASTER_PORT"] = environ.get("MASTER_PORT", DEFAULT_MASTER_PORT)
    env.update(extra or {})
    return env
