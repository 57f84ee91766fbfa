"""What keeps the training loops fast on an accelerator, checked on the CPU (issue 22): no host read of a
device value inside a step (findings 6 and 11), the stop/non-finite decisions that come one step late
because of it, and a resume where a rank sees fewer GPUs than when it saved (finding 3).

A read such as ``.item()``, ``.tolist()``, ``.cpu()`` or ``bool(tensor)`` makes the host wait until a GPU
has run everything queued so far: the GPU idles while the host prepares the next step. The CPU has no
queue, so these tests count the reads themselves (``HostReads`` patches those methods of torch.Tensor,
main thread only) per optimizer step, and check that what the loops do read comes from
``central.host_copy.HostCopy`` copies made one step earlier (whose wait, on a GPU, covers only that copy).
"""
import collections
import os
import signal
import threading
import time

import pytest
import torch

import central.host_copy
import pretraining.training
from central.checkpoint import list_checkpoints
from pretraining.checkpointing import capture_rng_state, restore_rng_state
from pretraining.fault_injection import NAN_LOSS_AT_STEP_ENV
from pretraining.run_pretraining import main
from pretraining_runs import single_thread  # noqa: F401  (autouse fixture)
from pretraining_runs import pretraining_args, step_losses
from pretraining_shards import make_dataset


class HostReads:
    """Counts, per step, the Tensor reads that wait for the device on a GPU, and which step made each
    HostCopy that a step reads."""

    METHODS = ("item", "tolist", "cpu", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self, monkeypatch):
        self.step = 0                      # the optimizer step being run (0: set-up)
        self.paused = 0                    # > 0 while the data stream runs (host-side data by design)
        self.reads = collections.Counter()  # step -> counted reads
        self.what = collections.defaultdict(list)
        self.copies_read = collections.defaultdict(list)  # step -> [step that made the copy]
        for name in self.METHODS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name)))
        made, values = central.host_copy.HostCopy.__init__, central.host_copy.HostCopy.values
        counter = self

        def stamped_init(copy, tensor):
            made(copy, tensor)
            copy.made_at = counter.step

        def stamped_values(copy):
            if copy._values is None:  # the first read is the one that may wait; later ones are cached
                counter.copies_read[counter.step].append(copy.made_at)
            return values(copy)

        monkeypatch.setattr(central.host_copy.HostCopy, "__init__", stamped_init)
        monkeypatch.setattr(central.host_copy.HostCopy, "values", stamped_values)

    def _counted(self, name, original):
        def counted(tensor, *args, **kwargs):
            if not self.paused and threading.current_thread() is threading.main_thread():
                self.reads[self.step] += 1
                self.what[self.step].append(name)
            return original(tensor, *args, **kwargs)
        return counted

    def next_step(self) -> None:
        self.step += 1

    def pausing(self, stream):
        return PausedWhileCalled(stream, self)


class PausedWhileCalled:
    """The data stream, with counting paused while its methods run (batches are host data by design)."""

    def __init__(self, inner, counter: HostReads):
        self._inner, self._counter = inner, counter

    def __next__(self):
        return self._call(self._inner.__next__)

    def __getattr__(self, name):
        value = getattr(self._inner, name)
        return (lambda *a, **k: self._call(value, *a, **k)) if callable(value) else value

    def _call(self, function, *args, **kwargs):
        self._counter.paused += 1
        try:
            return function(*args, **kwargs)
        finally:
            self._counter.paused -= 1


@pytest.fixture
def count_pretraining(monkeypatch):
    """HostReads around pretraining.training: steps counted where each begins (accumulate_gradients)."""
    counter = HostReads(monkeypatch)
    accumulate, build = pretraining.training.accumulate_gradients, pretraining.training.build_session

    def counted_accumulate(cfg, s):
        counter.next_step()
        return accumulate(cfg, s)

    def build_with_paused_data(*args, **kwargs):
        session = build(*args, **kwargs)
        session.data = counter.pausing(session.data)
        return session

    monkeypatch.setattr(pretraining.training, "accumulate_gradients", counted_accumulate)
    monkeypatch.setattr(pretraining.training, "build_session", build_with_paused_data)
    return counter


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("shards"), num_files=2, samples=24, seed=7)


def run_args(data, out, *extra, steps=7):
    """Checkpoints every 3 steps, a log record every step (--log_freq 1), no accumulation."""
    return pretraining_args(data, out, "--num_steps_per_checkpoint", "3", "--log_freq", "1", *extra,
                            steps=steps, accumulation=1)


def test_pretraining_steps_read_nothing_from_the_device(data, tmp_path, count_pretraining):
    """Logging every step, the only reads of a step are of the previous step's HostCopy; steps that end
    in a checkpoint settle their own result (and the save reads the weights)."""
    out = tmp_path / "run"
    assert main(run_args(data, out)) == 0
    checkpoint_steps = {3, 6, 7}
    plain_steps = [step for step in range(1, 8) if step not in checkpoint_steps]
    assert {step: count_pretraining.reads[step] for step in plain_steps} == {step: 0 for step in plain_steps}, \
        dict(count_pretraining.what)
    for step in plain_steps:  # the previous step's copy, unless a save settled it already
        expected = [step - 1] if step > 1 and step - 1 not in checkpoint_steps else []
        assert count_pretraining.copies_read[step] == expected, step
    assert all(count_pretraining.reads[step] > 0 for step in checkpoint_steps)  # the counter does count
    assert sorted(step_losses(out)) == list(range(1, 8))  # every step logged, one step late or at a save


def test_skipping_nonfinite_losses_reads_each_step_at_once(data, tmp_path, count_pretraining):
    """--nonfinite_loss skip must know before the optimizer step: one wait per step, for its own copy."""
    assert main(run_args(data, tmp_path / "run", "--nonfinite_loss", "skip", steps=4)) == 0
    for step in (1, 2):
        assert count_pretraining.copies_read[step][0] == step and count_pretraining.reads[step] == 0


def test_a_stop_signal_is_agreed_one_step_later(data, tmp_path, monkeypatch):
    """SIGTERM during step 2: its flag travels with step 2's result, which is read during step 3, so
    the run saves after step 3 and exits 128 + 15 (it used to stop after step 2)."""
    accumulate = pretraining.training.accumulate_gradients
    steps = []

    def signal_at_step_2(cfg, s):
        steps.append(len(steps) + 1)
        if len(steps) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return accumulate(cfg, s)

    monkeypatch.setattr(pretraining.training, "accumulate_gradients", signal_at_step_2)
    out = tmp_path / "run"
    assert main(run_args(data, out)) == 128 + signal.SIGTERM
    assert steps == [1, 2, 3]
    assert [step for step, _ in list_checkpoints(out / "checkpoints")] == [3]
    assert sorted(step_losses(out)) == [1, 2, 3]


@pytest.mark.parametrize("nan_step, checkpoints, logged", [(6, [3], 5), (7, [3, 6], 6)])
def test_a_nonfinite_loss_found_late_never_reaches_a_checkpoint(data, tmp_path, monkeypatch, capsys, nan_step,
                                                                checkpoints, logged):
    """A NaN loss at a checkpoint step (6) or at the last step (7) is read before the save: the run stops
    with the previous checkpoint intact and no file holding the poisoned weights."""
    monkeypatch.setenv(NAN_LOSS_AT_STEP_ENV, str(nan_step))
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(run_args(data, out)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"non-finite loss (nan) at step {nan_step}" in err[0]
    assert f"ckpt_{checkpoints[-1]}.pt is intact" in err[0] and "without saving" in err[0]
    assert [step for step, _ in list_checkpoints(out / "checkpoints")] == checkpoints
    assert max(step_losses(out)) == logged
    assert not (out.parent / "hf_export").exists()


def test_fine_tuning_steps_read_nothing_from_the_device_under_a_process_group(tmp_path, monkeypatch):
    """With a process group (one rank, gloo) the stop agreement all-reduces every step; it is read one
    step late, so no step but the logged last one reads the device. (The model's forward is not counted:
    transformers' SDPA mask check reads ``attention_mask.all()`` in eager mode, a wait of its own that
    graph mode removes: docs/accelerators.md.)"""
    import torch.distributed as dist

    import finetuning.train_loop
    from central.dllog import DLLogger
    from finetuning.train_loop import train
    from test_finetune_loop import cpu_runtime, make_args, qa_model, toy_features

    counter = HostReads(monkeypatch)
    build_batches, log_step = finetuning.train_loop.training_batches, finetuning.train_loop.FinetuneLog.step

    class PausedBatches:
        def __init__(self, batches):
            self.batches = batches

        def __len__(self):
            return len(self.batches)

        def micro_batches(self, *args):
            stream = self.batches.micro_batches(*args)
            while True:
                counter.paused += 1
                try:
                    item = next(stream)
                except StopIteration:
                    return
                finally:
                    counter.paused -= 1
                yield item

    def counted_log_step(log, *args, **kwargs):
        log_step(log, *args, **kwargs)
        counter.next_step()  # the reads after this step's log call belong to the next step

    monkeypatch.setattr(finetuning.train_loop, "training_batches", lambda *a: PausedBatches(build_batches(*a)))
    monkeypatch.setattr(finetuning.train_loop.FinetuneLog, "step", counted_log_step)
    model = qa_model()
    model.register_forward_pre_hook(lambda *_: setattr(counter, "paused", counter.paused + 1))
    model.register_forward_hook(lambda *_: setattr(counter, "paused", counter.paused - 1))
    counter.step = 1
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        result = train(model, toy_features(48), make_args(tmp_path, max_steps=5, logging_steps=0),
                       cpu_runtime(), DLLogger(None, enabled=False))
    finally:
        dist.destroy_process_group()
    assert result.global_step == 5
    assert {step: counter.reads[step] for step in range(2, 5)} == {2: 0, 3: 0, 4: 0}, dict(counter.what)
    assert counter.reads[5] > 0  # the last step is logged: one read of the summed loss
    assert [made for step in range(1, 6) for made in counter.copies_read[step]] == [1, 2, 3]


# -- resume with fewer visible GPUs (finding 3) ------------------------------------------------------
class FakeCudaGenerators:
    """torch.cuda's generator calls over ``visible`` simulated GPUs, ``current`` the rank's one; an index
    past the visible ones raises IndexError, as torch's default_generators tuple does."""

    def __init__(self, monkeypatch, visible: int, current: int):
        self.states = [torch.full((16,), 10 * index, dtype=torch.uint8) for index in range(visible)]
        self.current = current
        for name, value in {"is_available": lambda: True, "is_initialized": lambda: True,
                            "device_count": lambda: visible, "current_device": lambda: self.current,
                            "get_rng_state": self.get_rng_state, "set_rng_state": self.set_rng_state,
                            "get_rng_state_all": lambda: [s.clone() for s in self.states],
                            "set_rng_state_all": self.set_rng_state_all}.items():
            monkeypatch.setattr(torch.cuda, name, value)

    def get_rng_state(self, device="cuda"):
        return self.states[self._index(device)].clone()

    def set_rng_state(self, state, device="cuda"):
        self.states[self._index(device)] = state.clone()

    def set_rng_state_all(self, states):
        for index, state in enumerate(states):
            self.set_rng_state(state, index)

    def _index(self, device) -> int:
        index = self.current if device == "cuda" else int(device)
        if index >= len(self.states):
            raise IndexError("tuple index out of range")
        return index


def test_resume_on_fewer_visible_gpus_restores_the_ranks_own_generator(monkeypatch):
    """Saved by rank 2 of a node where each process saw 4 GPUs; resumed where each sees only its own."""
    saving = FakeCudaGenerators(monkeypatch, visible=4, current=2)
    state = capture_rng_state()
    assert torch.equal(state["cuda"], saving.states[2])
    resuming = FakeCudaGenerators(monkeypatch, visible=1, current=0)
    restore_rng_state(state)
    assert torch.equal(resuming.states[0], torch.full((16,), 20, dtype=torch.uint8))


def test_a_checkpoint_with_every_visible_gpus_state_still_resumes(monkeypatch):
    """Files written before this fix hold one state per visible GPU: the current device's is taken."""
    saving = FakeCudaGenerators(monkeypatch, visible=2, current=1)
    state = {**capture_rng_state(), "cuda": [s.clone() for s in saving.states]}
    resuming = FakeCudaGenerators(monkeypatch, visible=2, current=1)
    resuming.states = [torch.zeros(16, dtype=torch.uint8) for _ in range(2)]
    restore_rng_state(state)
    assert torch.equal(resuming.states[1], saving.states[1]) and not resuming.states[0].any()


def test_pretraining_wraps_ddp_with_the_backends_settings(data, tmp_path):
    """Pre-training's DDP (no --allreduce_post_accumulation) takes central.gradient_sync.ddp_settings: bucket
    views, no buffer broadcast, torch's 25 MB buckets off HPU (it used Habana's 230 MB everywhere). One
    gloo rank stands for the first of two."""
    import torch.distributed as dist

    from central.distributed import DistEnv
    from central.runtime import Runtime
    from pretraining.config import PretrainingConfig
    from pretraining.fault_injection import InjectedFaults
    from pretraining.run_pretraining import build_parser
    from pretraining.run_setup import plan_run
    from pretraining.training import build_session

    cfg = PretrainingConfig.from_args(build_parser().parse_args(run_args(data, tmp_path / "run")))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        first_of_two = Runtime("cpu", "eager", "fp32", torch.device("cpu"), DistEnv(0, 2, 0, "torchrun"))
        session = build_session(cfg, plan_run(cfg), first_of_two, InjectedFaults())
        session.close()
    finally:
        dist.destroy_process_group()
    ddp = session.sync.ddp
    assert ddp is not None and ddp.gradient_as_bucket_view and not ddp.broadcast_buffers
    assert ddp.bucket_bytes_cap == 25 << 20
