"""A warm process that runs command lines in forked children, for the bad-input matrix test.

Importing torch and transformers takes 5-20 s on a loaded 2-core machine; the bad-input matrix runs
~80 command lines, most of which fail within a second of their imports. This script imports the heavy
libraries once, then for each request forks a child that runs the command's entry point exactly as
``python demo_bert.py ...`` / ``python -m module ...`` would (``runpy``, ``__main__``, ``sys.argv``),
with its own stdout/stderr files, working directory and exit status. Each row therefore still runs in
its own process; only the import work is shared. A test in test_bad_input_matrix.py checks that a
fresh interpreter gives the same exit status and stderr for a sample of rows.

Protocol: one JSON request per stdin line
    {"argv": ["demo_bert.py", ...] | ["-m", "module", ...], "cwd": ..., "env": {...},
     "stdout": path, "stderr": path, "timeout": seconds}
answered by one JSON line {"status": exit status} (128 + N when killed by signal N, 124 on timeout).
Run it with the repository root on PYTHONPATH (the tests' ``child_env``).
"""
import json
import os
import runpy
import signal
import sys
import time
import traceback

# The heavy imports behind the command lines (never a command's own module: runpy warns when the module
# it runs as __main__ is imported already). A module missing from this checkout is simply not preloaded.
PRELOAD = ("torch", "transformers", "transformers.models.bert.modeling_bert", "h5py", "numpy", "tokenizers",
           "launcher.plan", "central.process_runner", "central.checkpoint", "pretraining.training", "finetuning.squad_task",
           "finetuning.glue_task", "data.tokenization", "data.instances", "data.hdf5_shards", "data.vocab")


def preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            pass


def run_child(request: dict) -> None:
    """In the forked child: become the command, then leave with its exit status (never returns)."""
    status = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        argv = request["argv"]
        try:
            if argv[0] == "-m":
                sys.argv = [argv[1], *argv[2:]]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = list(argv)
                runpy.run_path(argv[0], run_name="__main__")
            status = 0
        except SystemExit as stop:  # what the interpreter does with sys.exit(code)
            if stop.code is None:
                status = 0
            elif isinstance(stop.code, int):
                status = stop.code
            else:
                print(stop.code, file=sys.stderr)
                status = 1
        except BaseException:  # an uncaught exception: the interpreter prints the traceback, status 1
            traceback.print_exc()
            status = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(raw) if os.WIFEXITED(raw) else 128 + os.WTERMSIG(raw)
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return 124
        time.sleep(0.01)


def main() -> int:
    preload()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, 0)  # its own group: a timeout kills what it started too
            run_child(request)
        print(json.dumps({"status": wait(pid, float(request.get("timeout", 120)))}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
