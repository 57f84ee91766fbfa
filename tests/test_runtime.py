"""The runtime pieces both training loops share (central/): set-up, seeding, stop signals, DDP settings."""
import os
import random
import signal
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist

import central.runtime
from central.distributed import DistEnv
from central.gradient_sync import DDPSettings, GradientSync, data_parallel, ddp_settings, unwrap
from central.runtime import runtime_session, seed_everything
from central.stop_signals import StopSignals


def test_runtime_session_on_cpu_is_one_process_that_keeps_freed_memory(monkeypatch):
    retained = []
    monkeypatch.setattr(central.runtime, "retain_freed_memory", lambda: retained.append(True))
    with pytest.warns(UserWarning, match="lazy is an HPU mode"), \
            runtime_session(device="cpu", mode="lazy", precision="bf16") as runtime:
        assert (runtime.kind, runtime.mode, runtime.precision) == ("cpu", "eager", "bf16")  # lazy is HPU-only
        assert runtime.device == torch.device("cpu") and runtime.dist == DistEnv() and runtime.is_main
    assert retained == [True] and not dist.is_initialized()
    alone = runtime.alone()
    assert alone.dist == DistEnv() and (alone.kind, alone.device) == (runtime.kind, runtime.device)


def test_seed_everything_repeats_python_numpy_and_torch():
    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    seed_everything(7)
    first = draws()
    seed_everything(7)
    assert draws() == first
    seed_everything(8)
    assert draws() != first


def test_a_stop_signal_is_recorded_repeats_are_one_request_and_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        assert not signals.requested and signals.local_flags(torch.device("cpu")).tolist() == [0.0, 0.0]
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # forwarded again by mpirun/torchrun: still this process runs
        assert signals.signum == signal.SIGTERM and signals.agree(torch.device("cpu"))  # one process: no collective
        assert signals.local_flags(torch.device("cpu")).tolist() == [1.0, 0.0]
    assert signal.getsignal(signal.SIGTERM) == before


def test_every_rank_adopts_the_signal_another_rank_received():
    """The summed flags of the ranks: a rank that got nothing exits with the signal another rank got."""
    quiet = StopSignals()
    assert not quiet.adopt([0.0, 0.0]) and quiet.signum is None
    assert quiet.adopt([0.0, 1.0]) and quiet.signum == signal.SIGINT
    got_term = StopSignals()
    got_term.signum = signal.SIGTERM
    assert got_term.adopt([1.0, 1.0]) and got_term.signum == signal.SIGTERM  # its own signal stays
    # A signal that arrived after this rank's flags were sampled: the summed flags decide, so this rank
    # goes on with the others (stopping alone would leave them waiting in their next all-reduce).
    assert not got_term.adopt([0.0, 0.0])


def test_agreement_one_step_late_reads_the_previous_steps_flags(one_rank_group):
    """Each call all-reduces this step's flags and decides from the previous call's: a signal sampled at
    step 2 stops the run at step 3, and no call waits for the device (central/host_copy.py)."""
    signals = StopSignals()
    cpu = torch.device("cpu")
    assert not signals.agree_one_step_late(cpu)  # step 1: nothing in flight yet
    signals.signum = signal.SIGINT  # received during step 2
    assert not signals.agree_one_step_late(cpu)  # step 2: decides from step 1's flags
    assert signals.agree_one_step_late(cpu) and signals.signum == signal.SIGINT  # step 3


@pytest.fixture
def one_rank_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_is_wrapped_with_each_loops_settings(one_rank_group):
    """Both loops: bucket views, no buffer broadcast; 230 MB buckets on HPU (HCCL, as Habana's scripts),
    torch's 25 MB for NCCL and gloo (central.gradient_sync.ddp_settings)."""
    model = torch.nn.Linear(4, 2)
    for kind, megabytes in (("cpu", 25), ("cuda", 25), ("hpu", 230)):
        wrapped = data_parallel(model, ddp_settings(kind))
        assert (wrapped.bucket_bytes_cap, wrapped.gradient_as_bucket_view) == (megabytes << 20, True)
        assert not wrapped.broadcast_buffers
    assert unwrap(torch.compile(wrapped)) is model


@pytest.fixture(autouse=True)
def tf32_setting_restored():
    """init_runtime on "cuda" sets a process-wide switch: put torch's value back after each test."""
    before = torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


class FakeCudaPlacement:
    """What init_runtime asks of CUDA and of torch.distributed, recorded in call order (no GPU here)."""

    def __init__(self, monkeypatch, devices: int):
        self.calls = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
        monkeypatch.setattr(torch.cuda, "set_device", lambda index: self.calls.append(("set_device", index)))
        monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: self.calls.append(("init", kwargs)))


def test_cuda_rank_selects_its_gpu_before_joining_the_nccl_group(monkeypatch):
    """set_device runs before init_process_group, which gets the rank's GPU as device_id."""
    monkeypatch.setitem(sys.modules, "habana_frameworks", None)  # no Habana stack
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    fake = FakeCudaPlacement(monkeypatch, devices=2)
    runtime = central.runtime.init_runtime(device="cuda")
    assert runtime.device == torch.device("cuda", 1) and runtime.dist.rank == 1
    assert [name for name, _ in fake.calls] == ["set_device", "init"] and fake.calls[0][1] == 1
    init = fake.calls[1][1]
    assert init["backend"] == "nccl" and init["device_id"] == torch.device("cuda", 1)
    assert (init["rank"], init["world_size"], init["init_method"]) == (1, 2, "env://")


def test_gloo_group_gets_no_device_id(monkeypatch):
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    fake = FakeCudaPlacement(monkeypatch, devices=0)
    central.runtime.init_runtime(device="cpu")
    assert [name for name, _ in fake.calls] == ["init"]
    assert fake.calls[0][1]["backend"] == "gloo" and "device_id" not in fake.calls[0][1]


def test_fp32_matmuls_use_tf32_on_cuda_only(monkeypatch):
    FakeCudaPlacement(monkeypatch, devices=1)
    monkeypatch.setattr(central.runtime, "retain_freed_memory", lambda: None)
    central.runtime.init_runtime(device="cpu", precision="fp32")
    assert torch.backends.cuda.matmul.allow_tf32 is False  # the CPU run leaves torch's default alone
    central.runtime.init_runtime(device="cuda", precision="fp32")
    assert torch.backends.cuda.matmul.allow_tf32 is True


def test_gradient_sync_says_how_gradients_travel(one_rank_group):
    """--allreduce_post_accumulation_fp16 all-reduces in bf16, and says so (the DLLogger PARAMETER
    record's allreduce_dtype, the rank-0 note): the reference's flag name says fp16."""
    model = torch.nn.Linear(4, 2)
    single = GradientSync(model, world_size=1, post_accumulation=True, bf16_allreduce=True)
    assert single.module is model and single.allreduce_dtype is None and "single process" in single.describe()
    post = GradientSync(model, world_size=2, post_accumulation=True, bf16_allreduce=True)  # 2 as seen by the sync
    assert post.allreduce_dtype == "bf16" and post.describe().endswith("after accumulation, in bf16")
    assert GradientSync(model, world_size=2, post_accumulation=True).allreduce_dtype == "fp32"
    assert DDPSettings() == DDPSettings(bucket_cap_mb=25, gradient_as_bucket_view=False, sync_buffers=True)
    assert ddp_settings("cuda") == DDPSettings(bucket_cap_mb=25, gradient_as_bucket_view=True, sync_buffers=False)
