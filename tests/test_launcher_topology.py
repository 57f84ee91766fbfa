"""launcher/topology.py: how many processes on which nodes, and the mpirun / torchrun prefixes (pure functions)."""
import pytest

from launcher import topology as launch
from launcher.errors import LaunchError


def test_topology_rules(tmp_path):
    single = launch.resolve_topology(1, False, None, False, None, 0, {})
    assert not single.distributed
    assert launch.resolve_topology(8, True, None, False, None, 0, {}).launcher == "mpirun"
    assert launch.resolve_topology(8, True, None, True, None, 0, {}).launcher == "torchrun"
    for bad, needle in [((8, False, None, False, None, 0, {}), "--dist"),
                        ((1, True, None, False, None, 0, {}), "--world_size"),
                        ((2, True, "mpirun", True, None, 0, {}), "--no_mpirun"),
                        ((1, False, None, False, None, 4, {}), "--hostfile")]:
        with pytest.raises(LaunchError, match=needle):
            launch.resolve_topology(*bad)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# nodes\nnode-a slots=8\n\nnode-b slots=8  # second\nnode-a\n")
    assert launch.parse_hostfile(str(hostfile)) == ["node-a", "node-b"]
    multi = launch.resolve_topology(1, False, None, False, str(hostfile), 4, {})
    assert (multi.world_size, multi.hosts, multi.per_node) == (8, ("node-a", "node-b"), 4)
    assert launch.resolve_topology(16, True, None, False, str(hostfile), 0, {}).per_node == 8
    with pytest.raises(LaunchError, match="--process_per_node 4 = 8"):
        launch.resolve_topology(6, True, None, False, str(hostfile), 4, {})
    legacy = launch.resolve_topology(1, False, None, False, None, 2, {"MULTI_HLS_IPS": "10.0.0.1,10.0.0.2"})
    assert (legacy.world_size, legacy.hosts) == (4, ("10.0.0.1", "10.0.0.2"))
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(LaunchError, match="lists no hosts"):
        launch.parse_hostfile(str(tmp_path / "empty"))


def test_mpirun_prefix_binds_cores_and_exports_variables():
    two = launch.Topology(world_size=2)
    argv = launch.mpirun_prefix(two, ["PYTHONPATH", "MASTER_ADDR"], cores=16, as_root=False, mpi_major=4)
    assert argv == ["mpirun", "-n", "2", "--bind-to", "core", "--map-by", "socket:PE=8", "--rank-by", "core",
                    "--report-bindings", "-x", "PYTHONPATH", "-x", "MASTER_ADDR"]
    small = launch.mpirun_prefix(launch.Topology(world_size=8), [], cores=2, as_root=True, mpi_major=5)
    assert small[:4] == ["mpirun", "-n", "8", "--allow-run-as-root"]
    assert "--oversubscribe" in small and "core:overload-allowed" in small
    assert small[small.index("--map-by") + 1] == "socket:PE=1" and small[small.index("--rank-by") + 1] == "slot"
    fits = launch.mpirun_prefix(two, [], cores=2, as_root=False, mpi_major=5)
    assert "--oversubscribe" not in fits and fits[fits.index("--bind-to") + 1] == "core"
    multi = launch.Topology(world_size=8, hosts=("a", "b"), per_node=4, hostfile="/etc/hosts.txt")
    argv = launch.mpirun_prefix(multi, [], cores=32, as_root=False, mpi_major=4)
    assert argv[argv.index("--hostfile") + 1] == "/etc/hosts.txt"
    assert argv[argv.index("--map-by") + 1] == "ppr:4:node:PE=8" and argv[2] == "8"


def test_torchrun_prefix_single_and_multi_node():
    env = {"MASTER_ADDR": "localhost", "MASTER_PORT": "12345"}
    single = launch.torchrun_prefix(launch.Topology(world_size=4, launcher="torchrun"), env, "py")
    assert single == ["py", "-m", "torch.distributed.run", "--nproc_per_node=4", "--master_addr=localhost",
                      "--master_port=12345"]
    multi = launch.torchrun_prefix(launch.Topology(8, "torchrun", ("n0", "n1"), 4), env, "py")
    assert multi[3:] == ["--nnodes=2", "--nproc_per_node=4", "--rdzv_backend=c10d", "--rdzv_endpoint=n0:12345",
                         "--rdzv_id=bert"]


def test_environment_for_children():
    topo = launch.Topology()
    env = launch.launch_environment("/repo", {"PYTHONPATH": "/other"}, topo)
    assert env == {"PYTHONPATH": "/repo:/other", "MASTER_ADDR": "localhost", "MASTER_PORT": "12345"}
    env = launch.launch_environment("/repo", {"MASTER_PORT": "999"}, launch.Topology(4, hosts=("h0", "h1"),
                                                                                   per_node=2), {"X": "1"})
    assert env == {"PYTHONPATH": "/repo", "MASTER_ADDR": "h0", "MASTER_PORT": "999", "X": "1"}
