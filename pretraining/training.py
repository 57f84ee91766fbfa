"""The pre-training engine behind ``run_pretraining.py``: one phase, from a typed config to checkpoints.

``run(args)`` builds the ``PretrainingConfig`` once, checks every input (run_setup), starts the runtime
(central.runtime), builds the model, LAMB and its schedule, resumes where a checkpoint says
(checkpointing), and then runs ``train_loop``: the whole algorithm on one screen. The parts live in
their own modules: dataset (HDF5 shards, per-rank order, prefetch), central.gradient_sync (DDP
``no_sync`` / one all-reduce after accumulation), step_results (each step's loss and stop requests,
read one step late so that the host never waits for the device mid-run), checkpointing (ckpt files,
exact resume), train_log (DLLogger + tqdm), central.stop_signals (SIGTERM/SIGINT).

Exit status: 0 done (also: this phase was already finished), 128 + N stopped by signal N after saving
a checkpoint (so a phase chain does not go on). Bad input (BadInputError, 2) and failures
(RuntimeFailure, 1: a non-finite loss, a checkpoint or export that cannot be written) are raised, for
``central.errors.run_main`` to report in one line.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, TextIO

import torch

from central.checkpoint import CheckpointWriteError, list_checkpoints, remove_stale_temporaries, save_torch_file
from central.device import autocast, compile_for_mode, mark_step, zero_grad
from central.distributed import all_reduce_sum
from central.dllog import console
from central.errors import RuntimeFailure
from central.gradient_sync import GradientSync, ddp_settings
from central.runtime import Runtime, runtime_session, seed_everything
from central.stop_signals import StopSignals
from pretraining.attention import attention_for_device
from pretraining.checkpointing import (StartPoint, build_checkpoint, capture_rng_state, gather_rank_states,
                                       load_start_point, restore_rng_state, save_checkpoint)
from pretraining.config import PretrainingConfig
from pretraining.cpu_kernels import use_cpu_kernels
from pretraining.dataset import DataPosition, ShardStream
from pretraining.fault_injection import InjectedFaults
from pretraining.hf_conversion import export_hf
from pretraining.lamb import PolyWarmUpScheduler
from pretraining.modeling import BertForPreTraining
from pretraining.optimizers import clip_before_step, make_optimizer
from pretraining.run_setup import RunPlan, plan_run
from pretraining.step_results import StepResults
from pretraining.train_log import TrainingLog

# A model that yields only non-finite losses is broken: stop instead of skipping through the data.
MAX_CONSECUTIVE_SKIPS = 10


class NonFiniteLossError(RuntimeFailure):
    """The loss became NaN/inf and --nonfinite_loss says stop (or too many steps in a row were skipped)."""


@dataclass
class Session:
    """Everything a running phase holds; ``phase_step`` counts the optimizer steps done in this phase."""
    runtime: Runtime
    model: torch.nn.Module          # the bare model (what checkpoints and exports hold)
    forward: Callable               # what the step calls: DDP and/or compiled around ``model``
    optimizer: torch.optim.Optimizer
    optimizer_name: str             # --optimizer: lamb | adamw
    scheduler: PolyWarmUpScheduler
    sync: GradientSync
    data: ShardStream
    log: TrainingLog
    start: StartPoint
    write_file: Callable[[dict, str], None]  # writes a checkpoint's bytes (central.checkpoint.save_torch_file)
    results: StepResults            # the steps whose loss and stop flags the host has not read yet
    phase_step: int = 0
    skipped_steps: int = 0
    consecutive_skips: int = 0
    saved_at: int = -1
    stop_agreed: bool = False       # a rank got SIGTERM/SIGINT: every rank stops after this step
    checksums: Optional[TextIO] = None
    accumulation_steps: int = 1     # micro-batches per optimizer step (RunPlan: packed data divides them)

    def close(self) -> None:
        self.data.close()
        self.log.close()
        if self.checksums:
            self.checksums.close()


def run(args) -> int:
    e2e_start = time.time()
    cfg = PretrainingConfig.from_args(args)
    plan = plan_run(cfg)  # every input checked before a device is touched
    faults = InjectedFaults.from_environment()  # test-only; inert in real runs
    with runtime_session(cfg.device, cfg.mode, cfg.data_type, cfg.dist_timeout) as runtime:
        s = build_session(cfg, plan, runtime, faults)
        try:
            if s.start.phase_already_done:
                s.log.note(f"phase {cfg.phase} is already finished ({s.start.description}); nothing to do")
                return 0
            return train_loop(cfg, plan, s, e2e_start)
        finally:
            s.close()


def train_loop(cfg: PretrainingConfig, plan: RunPlan, s: Session, e2e_start: float) -> int:
    stop_step = cfg.last_step_of_run(s.phase_step)
    s.log.start_training()
    with StopSignals() as signals:
        while s.phase_step < stop_step and not s.stop_agreed:
            step = cfg.step_offset + s.phase_step + 1  # the number this step's checkpoint would carry
            loss = accumulate_gradients(cfg, s)  # forward + backward of every micro-batch
            result = s.results.agree(step, loss, signals)  # summed over ranks on the device; no wait
            if cfg.nonfinite_loss == "skip" and not math.isfinite(result.loss):  # skip must know now
                skip_nonfinite_step(cfg, s, result.loss, step)
            else:
                optimizer_step(s)
                s.phase_step, s.consecutive_skips = s.phase_step + 1, 0
                result.mark_applied(s.data.position.epoch, s.optimizer.param_groups[0]["lr"], s.skipped_steps,
                                    s.data.counts)
                write_param_checksum(s, step)
            settle(cfg, s, signals, newest_too=False)  # the previous step's loss and stop flags, one step late
            if s.phase_step % cfg.num_steps_per_checkpoint == 0 or s.stop_agreed:
                save(cfg, plan, s, signals)
        settle(cfg, s, signals, newest_too=True)
    s.log.end_training()
    save(cfg, plan, s, signals)  # the end of the run (a no-op when this step is saved already)
    if s.stop_agreed:
        s.log.note(f"stopped by signal {signals.signum} after step {cfg.step_offset + s.phase_step}; "
                   f"rerun with --resume_from_checkpoint to continue")
        return 128 + signals.signum
    if s.phase_step >= cfg.phase_steps and s.runtime.is_main:
        export_phase(cfg, plan, s)
    s.log.finish(s.runtime.dist.world_size, e2e_start)
    return 0


def accumulate_gradients(cfg: PretrainingConfig, s: Session) -> torch.Tensor:
    """Forward and backward over the step's micro-batches; returns their mean loss (0-dim, on device)."""
    device, accumulation = s.runtime.device, s.accumulation_steps
    total = torch.zeros((), device=device)
    for micro in range(accumulation):
        inputs, packed_inputs = next(s.data).to(device).model_inputs()  # dataset.PretrainingBatch: shapes there
        with s.sync.micro_step(boundary=micro == accumulation - 1):
            with autocast(s.runtime.kind, s.runtime.precision):
                loss, _, _ = s.forward(*inputs, **packed_inputs)  # MLM + NSP loss, 0-dim
            loss = loss / accumulation
            loss.backward()
        mark_step(s.runtime.kind, s.runtime.mode)
        total += loss.detach()
    return total


def optimizer_step(s: Session) -> None:
    s.sync.after_accumulation()  # post-accumulation all-reduce (DDP already did its own)
    s.scheduler.step()  # sets this step's lr (the reference steps it before the optimizer)
    clip_before_step(s.optimizer_name, s.model, s.runtime.kind)  # AdamW (LAMB clips inside its step)
    s.optimizer.step()
    zero_grad(s.optimizer)  # hpex FusedLamb's zero_grad takes no argument (central.device)
    mark_step(s.runtime.kind, s.runtime.mode)


def settle(cfg: PretrainingConfig, s: Session, signals: StopSignals, newest_too: bool) -> None:
    """Read the steps' results that are in (all but the newest, or all): log each step, adopt a stop
    request, and end the run at a non-finite loss (``--nonfinite_loss stop``). Every save settles all
    steps first, so no checkpoint holds weights that a non-finite step produced."""
    for result in s.results.take(newest_too):
        s.stop_agreed = signals.adopt(result.stop_counts) or s.stop_agreed
        if not result.applied:  # skipped for a non-finite loss: reported when it happened
            continue
        if not math.isfinite(result.loss):
            raise NonFiniteLossError(f"non-finite loss ({result.loss}) at step {result.step}; stopped without "
                                     f"saving the weights it produced, {newest_checkpoint_note(cfg)} "
                                     "(use --nonfinite_loss skip to skip such steps)")
        s.log.step(result.epoch, result.step, result.loss, result.learning_rate, result.skipped_steps,
                   finished_at=result.finished_at, counts=result.counts)


def skip_nonfinite_step(cfg: PretrainingConfig, s: Session, loss: float, step: int) -> None:
    zero_grad(s.optimizer)
    s.consecutive_skips += 1
    if s.consecutive_skips > MAX_CONSECUTIVE_SKIPS:
        raise NonFiniteLossError(f"non-finite loss ({loss}) at step {step}; stopped before the optimizer "
                                 f"step, {newest_checkpoint_note(cfg)} ({s.consecutive_skips} steps in a row)")
    s.skipped_steps += 1
    s.log.note(f"warning: non-finite loss ({loss}) at step {step}: skipped "
               f"({s.skipped_steps} skipped so far)")


def newest_checkpoint_note(cfg: PretrainingConfig) -> str:
    saved = list_checkpoints(cfg.checkpoint_dir)
    return f"the newest checkpoint {saved[-1][1]} is intact" if saved else "no checkpoint was written yet"


def save(cfg: PretrainingConfig, plan: RunPlan, s: Session, signals: StopSignals) -> None:
    """Checkpoint the state after ``s.phase_step`` steps (all ranks take part; rank 0 writes), once
    every step before it is settled."""
    settle(cfg, s, signals, newest_too=True)
    if cfg.skip_checkpoint or s.saved_at == s.phase_step:
        return
    rank_states = gather_rank_states({"data_position": s.data.position.to_dict(), "rng": capture_rng_state()})
    error: Optional[CheckpointWriteError] = None
    if s.runtime.is_main:
        state = build_checkpoint(s.model, s.optimizer, cfg.optimizer, s.scheduler, cfg.phase, s.phase_step,
                                 cfg.step_offset + s.phase_step, s.skipped_steps, rank_states,
                                 plan.file_names, plan.model_config.to_dict())
        previous = list_checkpoints(cfg.checkpoint_dir)
        try:
            save_checkpoint(state, cfg.checkpoint_dir, cfg.keep_checkpoints, s.write_file)
        except CheckpointWriteError as err:
            kept = f"; the previous checkpoint {previous[-1][1]} is intact" if previous else ""
            error = CheckpointWriteError(f"{err}{kept}")
    failed = all_reduce_sum(torch.tensor([float(error is not None)], device=s.runtime.device)).item() > 0
    if failed:
        raise error or CheckpointWriteError("rank 0 could not write the checkpoint")
    s.saved_at = s.phase_step


def export_phase(cfg: PretrainingConfig, plan: RunPlan, s: Session) -> None:
    """HF-format export of the finished phase: <hf_export_dir>/phase<N>/{config.json, model.safetensors, vocab.txt}."""
    out_dir = cfg.hf_export_root / f"phase{cfg.phase}"
    if plan.vocab_file is None:
        s.log.note(f"note: no vocab.txt (--vocab_file or <input_dir>/vocab.txt), so no HF export in {out_dir}")
        return
    try:
        export_hf(s.model, plan.model_config, plan.vocab_file, out_dir)
    except ValueError as err:  # e.g. the config's vocab_size differs from the vocab file
        s.log.note(f"warning: no HF export in {out_dir}: {err}")
        return
    s.log.note(f"HF export of phase {cfg.phase}: {out_dir}")


def write_param_checksum(s: Session, step: int) -> None:
    """--log_param_checksum: '<step> <SHA-256 of this rank's parameter bytes> <shard of its last batch>'."""
    if s.checksums is None:
        return
    digest = hashlib.sha256()
    for param in s.model.parameters():
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    s.checksums.write(f"{step} {digest.hexdigest()} {s.data.current_file.name}\n")
    s.checksums.flush()


# -- building a phase -----------------------------------------------------------------------------
def build_session(cfg: PretrainingConfig, plan: RunPlan, runtime: Runtime, faults: InjectedFaults) -> Session:
    rank, world_size = runtime.dist.rank, runtime.dist.world_size
    if runtime.is_main:
        remove_stale_temporaries(cfg.checkpoint_dir, name_prefix="ckpt_")  # left by a save that was killed

    seed_everything(cfg.seed)  # the same initial weights on every rank
    model = BertForPreTraining(plan.model_config).to(runtime.device)
    attention, attention_line = attention_for_device(runtime.kind, runtime.precision,
                                                     plan.model_config.attention_probs_dropout_prob)
    model.kernels = dataclasses.replace(model.kernels, attention=attention)  # packed batches: varlen on CUDA
    if runtime.kind == "cpu" and runtime.mode == "eager":
        use_cpu_kernels(model)  # random-bits dropout, fused MLM decoder + loss (pretraining/cpu_kernels.py)
    optimizer = make_optimizer(cfg.optimizer, model, cfg.learning_rate, runtime.kind, cfg.use_fused_lamb)
    start = load_start_point(cfg, plan.model_config.to_dict(), plan.file_names, model, optimizer, rank, world_size,
                             warn=lambda line: console(line, runtime.is_main))
    scheduler = PolyWarmUpScheduler(optimizer, cfg.warmup_proportion, cfg.phase_steps)
    if start.scheduler_state is not None:
        scheduler.load_state_dict(start.scheduler_state)
    sync = GradientSync(model, world_size, cfg.allreduce_post_accumulation, cfg.allreduce_post_accumulation_fp16,
                        ddp=ddp_settings(runtime.kind))
    model.train()
    forward = faults.wrap_forward(compile_for_mode(sync.module, runtime.kind, runtime.mode),
                                  first_step=cfg.step_offset + start.phase_step + 1,
                                  accumulation=plan.accumulation_steps)

    rank_state = start.rank_state or {}
    position = DataPosition.from_dict(rank_state["data_position"]) if "data_position" in rank_state else None
    data = ShardStream(plan.files, plan.shape, cfg.micro_batch, cfg.seed, rank, world_size, position,
                       masking=plan.masking, pin_memory=runtime.kind == "cuda")
    if "rng" in rank_state:
        restore_rng_state(rank_state["rng"])
    else:  # dropout streams differ per rank, as the reference seeds them
        seed_everything(cfg.seed + rank)

    log = open_training_log(cfg, plan, runtime, start, sync, data, attention_line)
    checksums = None
    if cfg.log_param_checksum:
        checksums = open(cfg.checkpoint_dir / f"param_checksums.rank{rank}.txt", "a", encoding="utf-8")
    return Session(runtime, model, forward, optimizer, cfg.optimizer, scheduler, sync, data, log, start,
                   write_file=faults.wrap_checkpoint_writer(save_torch_file), results=StepResults(world_size),
                   phase_step=start.phase_step, skipped_steps=start.skipped_steps, saved_at=start.phase_step,
                   checksums=checksums, accumulation_steps=plan.accumulation_steps)


def open_training_log(cfg: PretrainingConfig, plan: RunPlan, runtime: Runtime, start: StartPoint,
                      sync: GradientSync, data: ShardStream, attention_line: str) -> TrainingLog:
    """The DLLogger file and progress bar of the phase, with its PARAMETER record written."""
    world_size = runtime.dist.world_size
    log = TrainingLog(cfg.json_summary, runtime.is_main, data.counts, cfg.log_every, cfg.phase_steps,
                      start.phase_step, show_progress=not cfg.disable_progress_bar, packed=plan.shape.packed)
    log.parameters({"Config": cfg.to_dict(), "SEED": cfg.seed, "train_start": start.description,
                    "batch_size_per_pu": cfg.micro_batch, "gradient_accumulation_steps": plan.accumulation_steps,
                    "world_size": world_size, "learning_rate": cfg.learning_rate, "phase": cfg.phase,
                    "device": runtime.kind, "mode": runtime.mode, "precision": runtime.precision,
                    "gradient_allreduce": sync.describe(), "allreduce_dtype": sync.allreduce_dtype,
                    "model_config": plan.model_config.to_dict(), **plan.data_parameters(cfg.micro_batch, world_size)})
    log.note(f"phase {cfg.phase}: {start.description}")
    if plan.shape.packed:
        log.note(plan.packing_line(cfg, world_size))
        log.note(attention_line)
    if runtime.dist.distributed:
        log.note(f"gradients: {sync.describe()}")
    if cfg.allreduce_post_accumulation_fp16 and not sync.bf16_allreduce:
        log.note("note: --allreduce_post_accumulation_fp16 has no effect here (it applies to the "
                 "--allreduce_post_accumulation all-reduce of several ranks)")
    return log
