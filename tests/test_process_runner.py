"""central/process_runner.py: runs a plan's commands, streams their output, reports the first failure."""
from central import process_runner as launch


def _python(code):
    import sys

    return (sys.executable, "-c", code)


def test_runner_stops_at_the_first_failure(tmp_path):
    import io

    out, err = io.BytesIO(), io.BytesIO()
    marker = tmp_path / "third-ran"
    plan = launch.Plan((
        launch.Command("first", _python("print('hello from first')")),
        launch.Command("second", _python("import sys; print('oops', file=sys.stderr); sys.exit(5)")),
        launch.Command("third", _python(f"open({str(marker)!r}, 'w')")),
    ), {"BERT_TEST_VAR": "seen"})
    assert launch.run_plan(plan, stdout=out, stderr=err) == 5
    assert b"hello from first" in out.getvalue() and b"oops" in err.getvalue()
    assert b"second failed with exit status 5; not run: third" in err.getvalue()
    assert not marker.exists()


def test_runner_passes_env_and_tees_to_the_log(tmp_path):
    import io

    log = tmp_path / "results" / "phase1.log"
    plan = launch.Plan((launch.Command("phase1", _python(
        "import os, sys; sys.stdout.write(os.environ['BERT_TEST_VAR'] + '\\n'); sys.stdout.flush(); "
        "sys.stderr.write('to stderr\\n')"), str(log)),),
        {"BERT_TEST_VAR": "seen"})
    out, err = io.BytesIO(), io.BytesIO()
    assert launch.run_plan(plan, stdout=out, stderr=err) == 0
    assert out.getvalue() == b"seen\n" and err.getvalue() == b"to stderr\n"
    text = log.read_text()  # both streams, each write whole, in whatever order the pipes delivered them
    assert "seen\n" in text and "to stderr\n" in text and len(text) == len("seen\nto stderr\n")


def test_runner_reports_a_signal_death_as_128_plus_n():
    import io

    plan = launch.Plan((launch.Command("boom", _python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")),))
    err = io.BytesIO()
    assert launch.run_plan(plan, stdout=io.BytesIO(), stderr=err) == 137


def test_failed_rank_is_read_from_launcher_output():
    mpirun = "prterun detected ...\n\n   Process name: [prterun-vm-9039@1,1]\n   Exit code:    3\n----"
    killed = "prterun noticed that process rank 1 with PID 15306 on node vm exited on\nsignal 9 (Killed)."
    torchrun = ("Root Cause (first observed failure):\n[0]:\n  time      : x\n  host      : localhost\n"
                "  rank      : 1 (local_rank: 1)\n  exitcode  : 3 (pid: 1)\n")
    assert launch.failed_rank(mpirun) == (1, "exit code 3")
    assert launch.failed_rank(killed) == (1, "signal 9")
    assert launch.failed_rank(torchrun) == (1, "exit code 3")
    assert launch.failed_rank("all good") is None


def test_runner_does_not_wait_forever_for_orphans_holding_the_output(tmp_path):
    import io
    import time

    # The command exits at once but leaves a background process that keeps its stdout open.
    code = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])"
    plan = launch.Plan((launch.Command("leaves-orphan", _python(code)),))
    started = time.monotonic()
    assert launch.run_plan(plan, stdout=io.BytesIO(), stderr=io.BytesIO()) == 0
    assert time.monotonic() - started < 60


def test_tail_keeps_the_last_bytes():
    tail = launch._Tail(limit=10)
    for chunk in (b"aaaa", b"bbbb", b"cccc", b"dd"):
        tail.add(chunk)
    assert tail.text().endswith("bbbbccccdd") and len(tail.text()) <= 14
