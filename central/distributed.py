"""Process-group set-up that works under torchrun, OpenMPI, MPICH/PMI, SLURM or plain mpi4py.

Scripts call ``init_distributed(kind)`` once; it reads who this process is from the launcher's
environment, picks the backend for the device (hccl / nccl / gloo) and returns a ``DistEnv``.
A single process (world size 1) never creates a process group, so every helper here is safe to
call unconditionally.
"""
from __future__ import annotations

import datetime
import importlib
import os
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.distributed as dist

from central.device import dist_backend, habana_module
from central.errors import BadInputError
from central.rendezvous import DEFAULT_MASTER_ADDR, DEFAULT_MASTER_PORT

# (rank, world size, local rank) variable names of each launcher, in the order they are trusted.
_LAUNCHER_VARIABLES = (
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("mpich", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
)


class DistributedSetupError(BadInputError):
    """The launcher's rank variables are unusable (not numbers, rank outside the world, ...)."""


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _mpi4py_env() -> Optional[DistEnv]:
    """Ask MPI itself (the launcher exported no rank variables we know, e.g. Intel MPI or MVAPICH).

    The local rank is the rank within the processes that share this node's memory.
    """
    try:
        mpi = importlib.import_module("mpi4py.MPI")
    except ImportError:
        return None
    comm = mpi.COMM_WORLD
    node = comm.Split_type(mpi.COMM_TYPE_SHARED)
    try:
        return DistEnv(comm.Get_rank(), comm.Get_size(), node.Get_rank(), "mpi4py")
    finally:
        node.Free()


def _checked(source: str, rank: int, size: int, local: int) -> DistEnv:
    if size < 1 or not 0 <= rank < size or local < 0:
        raise DistributedSetupError(f"{source} launcher variables give rank {rank} of world size {size} "
                                    f"(local rank {local}): not a valid process placement")
    return DistEnv(rank, size, local, source)


def _under_mpi(environ: Mapping[str, str]) -> bool:
    return any(key.startswith(("PMIX_", "PMI_", "HYDRA_", "I_MPI_", "MV2_")) for key in environ)


def detect_env(environ: Mapping[str, str] = os.environ) -> DistEnv:
    """Rank, world size and local rank of this process from whichever launcher started it."""
    for source, rank_key, size_key, local_key in _LAUNCHER_VARIABLES:
        if rank_key in environ and size_key in environ:
            if source == "slurm" and "SLURM_STEP_ID" not in environ:
                continue  # inside an allocation but not started by srun: a single process
            try:
                rank, size = int(environ[rank_key]), int(environ[size_key])
                local = int(environ.get(local_key, environ.get("PMI_LOCAL_RANK", rank)))
            except ValueError:
                raise DistributedSetupError(f"{source} launcher variables {rank_key}/{size_key}/{local_key} "
                                            "are not whole numbers") from None
            return _checked(source, rank, size, local)
    if _under_mpi(environ):
        found = _mpi4py_env()
        if found is not None:
            return found
    return DistEnv()


def init_distributed(kind: str, timeout_s: float = 1800.0, environ=os.environ, env: Optional[DistEnv] = None,
                     device: Optional[torch.device] = None) -> DistEnv:
    """Create the default process group for a multi-process run; return this process's DistEnv.

    ``env``: this process's placement when the caller detected it already; ``device``: the rank's device,
    already selected (CUDA: ``torch.cuda.set_device`` has run). NCCL gets it as ``device_id``: its
    communicator is bound to that GPU at once, and barriers know which GPU to use."""
    env = env or detect_env(environ)
    if not env.distributed or dist.is_initialized():
        return env
    backend = dist_backend(kind)
    if backend == "hccl":
        habana_module("habana_frameworks.torch.distributed.hccl")  # registers the backend
    options = {"device_id": device} if device is not None and device.type == "cuda" else {}
    dist.init_process_group(
        backend=backend,
        init_method=rendezvous_url(env, environ),
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        **options,
    )
    return env


def rendezvous_url(env: DistEnv, environ: Mapping[str, str] = os.environ) -> str:
    """Where ranks meet. torchrun's agent already serves a store at MASTER_ADDR:MASTER_PORT, which
    only ``env://`` knows how to join; every other launcher meets at tcp://MASTER_ADDR:MASTER_PORT
    (rank 0 serves it), taken from ``environ`` with the launcher's defaults."""
    if env.source == "torchrun":
        return "env://"
    host = environ.get("MASTER_ADDR", DEFAULT_MASTER_ADDR)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    return f"tcp://{host}:{environ.get('MASTER_PORT', DEFAULT_MASTER_PORT)}"


def is_distributed() -> bool:
    """Whether this process is one rank of a process group (False for a single process)."""
    return dist.is_initialized()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (identity for a single process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks in place (identity for a single process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
