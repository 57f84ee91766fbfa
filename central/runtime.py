"""Where and how a training process runs, set up once by every script that trains.

    with runtime_session(device="auto", mode="eager", precision="fp32") as runtime:
        seed_everything(seed)
        ...                       # build, train; runtime.device, runtime.kind, runtime.is_main

``runtime_session`` sets the environment the mode needs before the Habana bridge loads (entry points
have done so already, before importing torch: central/mode_environment.py), resolves ``--device``
(hpu | cuda | cpu) and ``--mode`` (lazy compiles on CUDA and runs eager on the CPU), picks this rank's
torch device (CUDA: ``set_device`` before the process group, which NCCL binds to it), joins the process
group when a launcher started several ranks, lets fp32 matmuls use TF32 on CUDA, and on the CPU keeps
freed host memory in the process (central/host_allocator.py). It leaves the process group at the end:
after a barrier when the body finished, at once when it raised (a rank that failed must not wait for
the others).
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np
import torch

from central.device import allow_tf32_matmuls, effective_mode, resolve_device_kind, torch_device
from central.distributed import DistEnv, barrier, detect_env, init_distributed, teardown
from central.host_allocator import retain_freed_memory
from central.mode_environment import export_mode_environment


@dataclass(frozen=True)
class Runtime:
    """Where and how this process runs: device kind, effective mode, precision and its rank."""
    kind: str              # 'hpu' | 'cuda' | 'cpu'
    mode: str              # effective mode: 'eager' | 'graph' | 'lazy' (lazy only on HPU)
    precision: str         # 'fp32' | 'bf16'
    device: torch.device
    dist: DistEnv

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def alone(self) -> "Runtime":
        """This runtime as seen by one rank working alone (e.g. rank 0 inside a rank-0-only callback,
        where a barrier would wait for ranks that never come)."""
        return replace(self, dist=DistEnv())


def init_runtime(device: str = "auto", mode: str = "eager", precision: str = "fp32",
                 dist_timeout: float = 1800.0) -> Runtime:
    """Resolve the device and mode, join the process group (several ranks only), pick the torch device.

    Raises central.device.DeviceUnavailableError (bad input, one line) when the device is missing.
    """
    export_mode_environment(device, mode)  # before resolve_device_kind imports the Habana bridge
    kind = resolve_device_kind(device)
    mode = effective_mode(kind, mode)
    placement = detect_env()
    rank_device = torch_device(kind, placement.local_rank)  # CUDA: set_device first, NCCL binds to it
    dist = init_distributed(kind, dist_timeout, env=placement, device=rank_device)
    allow_tf32_matmuls(kind)
    if kind == "cpu":
        retain_freed_memory()  # no page faults for each step's activations (central/host_allocator.py)
    return Runtime(kind, mode, precision, rank_device, dist)


@contextlib.contextmanager
def runtime_session(device: str = "auto", mode: str = "eager", precision: str = "fp32",
                    dist_timeout: float = 1800.0) -> Iterator[Runtime]:
    """``init_runtime`` for the ``with`` block; the process group is left when the block ends."""
    runtime = init_runtime(device, mode, precision, dist_timeout)
    try:
        yield runtime
        barrier()  # finished: rank 0 may still be writing its last files
    finally:
        teardown()


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (torch's seeds every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
