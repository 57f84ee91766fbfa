"""Fault injection for pre-training, with real processes where the fault is a process's fate:
SIGKILL / SIGTERM at a random step (also in phase 2), a kill in the middle of a checkpoint write,
corrupted checkpoints, a non-finite loss, a full disk, unwritable outputs, a checkpoint carrying code.

Every "restart" runs the very same command line again (it carries --resume_from_checkpoint from the
start), and must end with the parameters of an uninterrupted run, bit for bit (CPU, fp32).
"""
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from central.checkpoint import CheckpointError, list_checkpoints, safe_load
from pretraining.fault_injection import CHECKPOINT_STALL_ENV, NAN_LOSS_AT_STEP_ENV, InjectedFaults
from pretraining.run_pretraining import main
from pretraining_runs import single_thread  # noqa: F401  (autouse fixture)
from pretraining_runs import newest_checkpoint, pretraining_args, same_tensors, step_losses, subprocess_env
from pretraining_shards import make_dataset

REPO_ROOT = Path(__file__).resolve().parent.parent
STEPS = 24          # phase 1; checkpoints every 3 steps
PHASE2_STEPS = 12


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    return {1: make_dataset(root / "p1", num_files=3, samples=24, seed=4),
            2: make_dataset(root / "p2", num_files=2, samples=16, seq_len=64, max_pred=8, seed=5)}


def command(data, out, phase=1, *extra):
    """The one command line each scenario runs (and re-runs after the fault)."""
    if phase == 1:
        return pretraining_args(data[1], out, "--resume_from_checkpoint", "--num_steps_per_checkpoint", "3",
                                *extra, steps=STEPS)
    return pretraining_args(data[2], out, "--phase2", "--phase1_end_step", str(STEPS), "--resume_from_checkpoint",
                            "--num_steps_per_checkpoint", "3", *extra, steps=PHASE2_STEPS, seq_len=64, max_pred=8)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """Uninterrupted phase 1 and phase 2, in this process (one thread, as the subprocesses)."""
    out = tmp_path_factory.mktemp("reference")
    assert main(command(data, out, 1)) == 0
    phase1_end = out / "phase1_end"
    shutil.copytree(out / "checkpoints", phase1_end)
    assert main(command(data, out, 2)) == 0
    return {"phase1": torch.load(phase1_end / f"ckpt_{STEPS}.pt", weights_only=True), "phase1_dir": phase1_end,
            "phase2": newest_checkpoint(out), "losses": step_losses(out)}


def start(argv, env, **popen):
    return subprocess.Popen([sys.executable, "-m", "pretraining.run_pretraining", *argv], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def logged_steps(out: Path) -> int:
    """Highest step in out/dllogger.json so far (tolerates a line being written right now)."""
    best = 0
    try:
        lines = (out / "dllogger.json").read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in lines:
        try:
            record = json.loads(line[len("DLLL "):])
        except ValueError:
            continue
        if isinstance(record.get("step"), list) and len(record["step"]) == 2:
            best = max(best, record["step"][1])
    return best


def wait_until(condition, proc, timeout=120.0):
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training ended (rc {proc.returncode}) before the fault could be injected:\n{err[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the training process")
        time.sleep(0.02)


def interrupt_at_random_step(argv, out, env, signum, low, high):
    kill_at = random.Random().randint(low, high)
    proc = start(argv, env)
    wait_until(lambda: logged_steps(out) >= kill_at, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, kill_at


def restart(argv, capsys) -> str:
    """Run the same command again (in this process, which is quicker and numerically the same: one
    thread, CPU fp32); returns what it printed."""
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


def assert_same_final_state(out, expected):
    final = newest_checkpoint(out)
    assert final["step"] == expected["step"]
    assert same_tensors(final["model"], expected["model"])  # bit-identical parameters
    got_moments = [s["exp_avg"] for s in final["optimizer"]["state"].values()]
    want_moments = [s["exp_avg"] for s in expected["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(got_moments, want_moments))


def test_sigkill_at_a_random_step_then_the_same_command_resumes_exactly(data, reference, tmp_path, child_env,
                                                                      capsys):
    out, env = tmp_path / "run", subprocess_env(child_env)
    # a random step after ckpt_3, so that the restart really resumes
    rc, _, kill_at = interrupt_at_random_step(command(data, out), out, env, signal.SIGKILL, 4, STEPS // 2)
    assert rc == -signal.SIGKILL
    assert not (out / "checkpoints" / f"ckpt_{STEPS}.pt").exists(), "killed too late to test anything"
    assert "resumed from" in restart(command(data, out), capsys)
    assert_same_final_state(out, reference["phase1"])
    assert {s: v for s, v in step_losses(out).items()} == {s: v for s, v in reference["losses"].items() if s <= STEPS}


def test_sigterm_saves_first_then_the_same_command_resumes_exactly(data, reference, tmp_path, child_env, capsys):
    out, env = tmp_path / "run", subprocess_env(child_env)
    rc, err, kill_at = interrupt_at_random_step(command(data, out), out, env, signal.SIGTERM, 2, STEPS // 2)
    assert rc == 128 + signal.SIGTERM, err[-2000:]
    stopped_at = logged_steps(out)
    assert kill_at <= stopped_at < STEPS
    assert list_checkpoints(out / "checkpoints")[-1][0] == stopped_at  # saved at the step it stopped
    assert f"resumed from {out / 'checkpoints'}/ckpt_{stopped_at}.pt" in restart(command(data, out), capsys)
    assert_same_final_state(out, reference["phase1"])


def test_sigkill_during_phase_2_resumes_exactly(data, reference, tmp_path, child_env, capsys):
    out, env = tmp_path / "run", subprocess_env(child_env)
    shutil.copytree(reference["phase1_dir"], out / "checkpoints")  # phase 1 done, as in the reference
    rc, _, kill_at = interrupt_at_random_step(command(data, out, 2), out, env, signal.SIGKILL,
                                              STEPS + 2, STEPS + PHASE2_STEPS // 2)
    assert rc == -signal.SIGKILL
    newest = list_checkpoints(out / "checkpoints")[-1][0]
    assert newest < STEPS + PHASE2_STEPS
    expected_start = f"ckpt_{newest}.pt (phase 2" if newest > STEPS else f"ckpt_{STEPS}.pt (phase 1"
    assert expected_start in restart(command(data, out, 2), capsys)
    assert_same_final_state(out, reference["phase2"])
    assert step_losses(out) == {s: v for s, v in reference["losses"].items() if s > STEPS}


def test_kill_during_a_checkpoint_write_restarts_from_the_previous_one(data, reference, tmp_path, child_env,
                                                                      capsys):
    out = tmp_path / "run"
    assert main(command(data, out, 1, "--steps_this_run", "6")) == 0  # ckpt_3, ckpt_6
    env = {**subprocess_env(child_env), CHECKPOINT_STALL_ENV: "60"}  # every save stalls before its rename
    proc = start(command(data, out), env)
    temporaries = lambda: [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".ckpt_9.pt")]  # noqa: E731
    wait_until(lambda: bool(temporaries()) and temporaries()[0].stat().st_size > 0, proc)
    time.sleep(0.2)
    proc.kill()
    proc.communicate()
    assert not (out / "checkpoints" / "ckpt_9.pt").exists() and temporaries()
    assert "ckpt_6.pt (phase 1, step 6)" in restart(command(data, out), capsys)
    assert not temporaries()  # the half-written file was cleaned away
    assert_same_final_state(out, reference["phase1"])


def test_corrupted_checkpoints_are_reported_and_skipped(data, reference, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(command(data, out, 1, "--steps_this_run", "9")) == 0  # ckpt_3, ckpt_6, ckpt_9
    ckpt9, ckpt6 = out / "checkpoints" / "ckpt_9.pt", out / "checkpoints" / "ckpt_6.pt"
    ckpt9.write_bytes(ckpt9.read_bytes()[: ckpt9.stat().st_size // 2])  # truncated
    ckpt6.write_bytes(os.urandom(4096))  # garbage
    capsys.readouterr()
    assert main(command(data, out)) == 0
    printed = capsys.readouterr().out.splitlines()
    skipped = [line for line in printed if line.startswith("warning: skipping")]
    assert len(skipped) == 2 and "ckpt_9.pt" in skipped[0] and "ckpt_6.pt" in skipped[1]
    assert any("resumed from" in line and "ckpt_3.pt" in line for line in printed)
    assert_same_final_state(out, reference["phase1"])


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv(NAN_LOSS_AT_STEP_ENV, "5")
    capsys.readouterr()
    assert main(command(data, out)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite loss (nan) at step 5" in err[0] and "ckpt_3.pt is intact" in err[0]
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [3]
    assert safe_load(out / "checkpoints" / "ckpt_3.pt")["step"] == 3
    assert max(step_losses(out)) == 4


def test_nonfinite_loss_can_be_skipped_and_counted(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv(NAN_LOSS_AT_STEP_ENV, "5")
    assert main(command(data, out, 1, "--nonfinite_loss", "skip", "--max_steps", "7")) == 0
    losses = step_losses(out)
    assert sorted(losses) == list(range(1, 8)) and all(v == v for v in losses.values())  # no NaN logged
    records = [json.loads(line[5:]) for line in (out / "dllogger.json").read_text().splitlines()]
    after = [r["data"] for r in records if isinstance(r["step"], list) and len(r["step"]) == 2 and r["step"][1] >= 5]
    assert all(d["skipped_steps"] == 1 for d in after)
    assert newest_checkpoint(out)["skipped_steps"] == 1


def test_injected_faults_are_installed_once_and_inert_unless_asked_for():
    """The NaN hook wraps the forward call at build time: the first attempt at the named step (all its
    micro-batches) gives NaN, the retry after a skip does not; unset, nothing is wrapped."""
    forward = lambda loss: (loss, None)  # noqa: E731  (a forward that returns (loss, ...))
    writer = lambda state, path: None  # noqa: E731
    inert = InjectedFaults.from_environment({})
    assert inert.wrap_forward(forward, first_step=1, accumulation=2) is forward
    assert inert.wrap_checkpoint_writer(writer) is writer
    nan_at_5 = InjectedFaults.from_environment({NAN_LOSS_AT_STEP_ENV: "5"})
    resumed_at_4 = nan_at_5.wrap_forward(forward, first_step=4, accumulation=2)
    losses = [resumed_at_4(torch.tensor(1.0))[0].item() for _ in range(8)]  # steps 4, 5, 5 again, 6
    assert [loss != loss for loss in losses] == [False, False, True, True, False, False, False, False]
    assert nan_at_5.wrap_forward(forward, first_step=6, accumulation=2) is forward  # already past step 5


def test_full_disk_fails_clearly_and_keeps_the_previous_checkpoint(data, tmp_path, child_env):
    out = tmp_path / "run"
    assert main(command(data, out, 1, "--steps_this_run", "3")) == 0
    good = out / "checkpoints" / "ckpt_3.pt"
    before = good.read_bytes()
    limit = len(before) // 2  # no file may grow past half a checkpoint: the next save cannot fit

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = start(command(data, out), subprocess_env(child_env), preexec_fn=small_disk)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0] and "ckpt_6.pt" in lines[0]
    assert "ckpt_3.pt is intact" in lines[0] and "Traceback" not in err
    assert good.read_bytes() == before and [s for s, _ in list_checkpoints(out / "checkpoints")] == [3]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_unwritable_output_is_refused_before_training(data, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    for flag in ("--output_dir", "--hf_export_dir"):
        argv = command(data, tmp_path / "run") + [flag, str(blocker / "sub")]
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {flag} {blocker / 'sub'}: not writable")


def test_failed_export_fails_clearly_after_the_final_checkpoint(data, tmp_path, capsys, monkeypatch):
    import safetensors.torch

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(command(data, out, 1, "--max_steps", "3")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write" in err[0] and "model.safetensors" in err[0] and "No space left" in err[0]
    assert safe_load(out / "checkpoints" / "ckpt_3.pt")["step"] == 3


class _RunsCode:
    """Unpickling this would create the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_carrying_a_pickled_callable_is_refused(data, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _RunsCode(marker)}, evil)
    with pytest.raises(CheckpointError) as err:
        safe_load(evil)
    assert "refused" in str(err.value) and "\n" not in str(err.value)

    capsys.readouterr()
    assert main(command(data, tmp_path / "run", 1, "--init_checkpoint", str(evil))) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(evil) in lines[0] and "refused" in lines[0]

    # ... and as the newest checkpoint of a run it is skipped in favour of the last good one
    out = tmp_path / "resume"
    assert main(command(data, out, 1, "--steps_this_run", "3")) == 0
    shutil.copy(evil, out / "checkpoints" / "ckpt_6.pt")
    capsys.readouterr()
    assert main(command(data, out, 1, "--steps_this_run", "1")) == 0
    printed = capsys.readouterr().out
    assert "warning: skipping checkpoint" in printed and "ckpt_6.pt" in printed and "ckpt_3.pt" in printed
    assert not marker.exists()
