"""A tiny multi-process worker for tests/test_distributed_multiprocess.py (run as ``python -m tests.dist_worker``).

Each rank joins the group through ``central.distributed.init_distributed('cpu')`` (gloo), sums
``rank + 1`` over all ranks, passes a barrier and prints one JSON line with what it saw. With
``--fail_rank R`` rank R leaves right after joining (exit status 3, or SIGKILL with ``--kill``)
while the others wait in the all-reduce: the launcher must end the job instead of hanging.
With ``--mpi4py_view`` each rank also reports what detection finds once OpenMPI's rank variables are
hidden from it: the mpi4py fallback must give the same placement.
"""
import argparse
import dataclasses
import json
import os
import signal
import sys

import torch

from central import distributed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fail_rank", type=int, default=None)
    parser.add_argument("--kill", action="store_true")
    parser.add_argument("--mpi4py_view", action="store_true")
    args = parser.parse_args()
    env = distributed.init_distributed("cpu", timeout_s=60)
    report = {}
    if args.mpi4py_view:
        hidden = {k: v for k, v in os.environ.items() if not k.startswith("OMPI_COMM_WORLD")}
        report["mpi4py_view"] = list(dataclasses.astuple(distributed.detect_env(hidden)))
    if env.rank == args.fail_rank:
        print(f"worker rank {env.rank}: failing on purpose", flush=True)
        if args.kill:
            os.kill(os.getpid(), signal.SIGKILL)
        return 3
    total = distributed.all_reduce_sum(torch.tensor([env.rank + 1.0]))
    distributed.barrier()
    report.update(rank=env.rank, world_size=env.world_size, local_rank=env.local_rank, source=env.source,
                  sum=total.item())
    # One write call per line: with PYTHONUNBUFFERED, print() writes the text and its newline separately,
    # and the two ranks share one pipe, so their lines could interleave.
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    distributed.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
