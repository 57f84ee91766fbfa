"""The runtime pieces both training loops share (central/): set-up, seeding, stop signals, DDP settings."""
import os
import random
import signal

import numpy as np
import pytest
import torch
import torch.distributed as dist

import central.runtime
from central.distributed import DistEnv
from central.gradient_sync import DDPSettings, GradientSync, data_parallel, unwrap
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


@pytest.fixture
def one_rank_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_is_wrapped_with_each_loops_settings(one_rank_group):
    """Pre-training: the reference's 230 MB buckets; fine-tuning: bucket views, no buffer broadcast, 25 MB
    buckets off HPU (finetuning/train_loop.ddp_settings)."""
    from finetuning.train_loop import ddp_settings
    from pretraining.training import PRETRAINING_DDP

    model = torch.nn.Linear(4, 2)
    pretraining = data_parallel(model, PRETRAINING_DDP)
    assert (pretraining.bucket_bytes_cap, pretraining.gradient_as_bucket_view) == (230 << 20, False)
    assert pretraining.broadcast_buffers
    for kind, megabytes in (("cpu", 25), ("cuda", 25), ("hpu", 230)):
        finetuning = data_parallel(model, ddp_settings(kind))
        assert (finetuning.bucket_bytes_cap, finetuning.gradient_as_bucket_view) == (megabytes << 20, True)
        assert not finetuning.broadcast_buffers
    assert unwrap(torch.compile(finetuning)) is model


def test_gradient_sync_says_how_gradients_travel():
    model = torch.nn.Linear(4, 2)
    single = GradientSync(model, world_size=1, post_accumulation=True, bf16_allreduce=True)
    assert single.module is model and single.allreduce_dtype is None and "single process" in single.describe()
    assert DDPSettings() == DDPSettings(bucket_cap_mb=25, gradient_as_bucket_view=False, sync_buffers=True)
