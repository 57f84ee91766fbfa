"""The pre-training engine behind ``run_pretraining.py``: one phase, from arguments to checkpoints.

``run(args)`` checks every input first (run_setup), builds the model, LAMB and its schedule, resumes
where a checkpoint says (checkpointing), and then runs ``train_loop`` — the whole algorithm on one
screen. The parts live in their own modules: dataset (HDF5 shards, per-rank order, prefetch),
gradient_sync (DDP ``no_sync`` / one all-reduce after accumulation), checkpointing (ckpt files,
exact resume), train_log (DLLogger + tqdm), stop_signals (SIGTERM/SIGINT).

Exit status: 0 done (also: this phase was already finished), 1 failure (non-finite loss, a checkpoint
or export that cannot be written), 2 bad input (one line, no traceback unless --debug),
128 + N stopped by signal N after saving a checkpoint (so a phase chain does not go on).
"""
from __future__ import annotations

import hashlib
import math
import random
import signal
import sys
import time
from dataclasses import dataclass
from typing import Optional, TextIO, Tuple

import numpy as np
import torch

from central.checkpoint import CheckpointError, CheckpointWriteError, list_checkpoints, remove_stale_temporaries
from central.device import (DeviceUnavailableError, autocast, compile_for_mode, effective_mode, mark_step,
                            resolve_device_kind, torch_device)
from central.distributed import DistEnv, DistributedSetupError, all_reduce_sum, init_distributed, teardown
from central.dllog import console
from central.host_allocator import retain_freed_memory
from pretraining.checkpointing import (StartPoint, build_checkpoint, capture_rng_state, gather_rank_states,
                                       load_start_point, restore_rng_state, save_checkpoint)
from pretraining.cpu_kernels import use_cpu_kernels
from pretraining.dataset import DataPosition, ShardError, ShardStream
from pretraining.fault_injection import injected_loss_fault
from pretraining.gradient_sync import GradientSync
from pretraining.hf_conversion import export_hf
from pretraining.lamb import PolyWarmUpScheduler, lamb_param_groups, make_lamb
from pretraining.modeling import BertForPreTraining
from pretraining.run_setup import BadInputError, RunPlan, plan_run
from pretraining.stop_signals import StopSignals
from pretraining.train_log import TrainingLog

# A model that yields only non-finite losses is broken: stop instead of skipping through the data.
MAX_CONSECUTIVE_SKIPS = 10


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf and --nonfinite_loss says stop (or too many steps in a row were skipped)."""


@dataclass
class Session:
    """Everything a running phase holds; ``phase_step`` counts the optimizer steps done in this phase."""
    kind: str
    mode: str
    env: DistEnv
    device: torch.device
    model: torch.nn.Module          # the bare model (what checkpoints and exports hold)
    forward: torch.nn.Module        # what the step calls: DDP and/or compiled around ``model``
    optimizer: torch.optim.Optimizer
    scheduler: PolyWarmUpScheduler
    sync: GradientSync
    data: ShardStream
    log: TrainingLog
    start: StartPoint
    phase_step: int = 0
    skipped_steps: int = 0
    consecutive_skips: int = 0
    saved_at: int = -1
    checksums: Optional[TextIO] = None


def run(args) -> int:
    e2e_start = time.time()
    try:
        plan = plan_run(args)
        kind = resolve_device_kind(args.device)
        env = init_distributed(kind, args.dist_timeout)
        try:
            return train_phase(args, plan, kind, env, e2e_start)
        finally:
            teardown()
    except (BadInputError, ShardError, CheckpointError, DeviceUnavailableError, DistributedSetupError) as err:
        return _fail(args, err, 2)
    except (CheckpointWriteError, NonFiniteLossError) as err:
        return _fail(args, err, 1)


def _fail(args, err: Exception, status: int) -> int:
    if args.debug:
        raise err
    print(f"error: {err}", file=sys.stderr)
    return status


def train_phase(args, plan: RunPlan, kind: str, env: DistEnv, e2e_start: float) -> int:
    s = build_session(args, plan, kind, env)
    try:
        if s.start.phase_already_done:
            s.log.note(f"phase {plan.phase} is already finished ({s.start.description}); nothing to do")
            return 0
        return train_loop(args, plan, s, e2e_start)
    finally:
        s.data.close()
        s.log.close()
        if s.checksums:
            s.checksums.close()


def train_loop(args, plan: RunPlan, s: Session, e2e_start: float) -> int:
    run_steps = plan.max_steps - s.phase_step if args.steps_this_run < 0 else args.steps_this_run
    stop_step = min(plan.max_steps, s.phase_step + run_steps)
    stop_requested = False
    s.log.start_training()
    with StopSignals() as signals:
        while s.phase_step < stop_step and not stop_requested:
            step = plan.step_offset + s.phase_step + 1  # the number this step's checkpoint would carry
            loss = accumulate_gradients(args, plan, s, step)  # forward + backward of every micro-batch
            loss, stop_requested = agree_across_ranks(loss, signals.requested, s.env)
            if math.isfinite(loss):
                s.sync.after_accumulation()  # post-accumulation all-reduce (DDP already did its own)
                s.scheduler.step()  # sets this step's lr (the reference steps it before the optimizer)
                s.optimizer.step()
                s.optimizer.zero_grad(set_to_none=True)
                mark_step(s.kind, s.mode)
                s.phase_step, s.consecutive_skips = s.phase_step + 1, 0
                s.log.step(s.data.position.epoch, step, loss, s.optimizer.param_groups[0]["lr"], s.skipped_steps)
                write_param_checksum(s, step)
            else:
                skip_nonfinite_step(args, plan, s, loss, step)
            if s.phase_step % args.num_steps_per_checkpoint == 0 or stop_requested:
                save(args, plan, s)
    s.log.end_training()
    save(args, plan, s)  # the end of the run (a no-op when this step is saved already)
    if stop_requested:
        signum = signals.signum or signal.SIGTERM  # ranks that only agreed to stop
        s.log.note(f"stopped by signal {signum} after step {plan.step_offset + s.phase_step}; "
                   f"rerun with --resume_from_checkpoint to continue")
        return 128 + signum
    if s.phase_step >= plan.max_steps and s.env.is_main:
        export_phase(plan, s)
    s.log.finish(s.env.world_size, e2e_start)
    return 0


def accumulate_gradients(args, plan: RunPlan, s: Session, step: int) -> torch.Tensor:
    """Forward and backward over the step's micro-batches; returns their mean loss (0-dim, on device)."""
    total = torch.zeros((), device=s.device)
    for micro in range(plan.accumulation):
        batch = next(s.data).to(s.device)  # ids/masks [B, L], masked slots [B, P], labels [B]
        with s.sync.micro_step(boundary=micro == plan.accumulation - 1):
            with autocast(s.kind, args.data_type):
                loss, _, _ = s.forward(batch.input_ids, batch.segment_ids, batch.input_mask, batch.masked_lm_positions,
                                       batch.masked_lm_ids, batch.next_sentence_labels)  # MLM + NSP loss, 0-dim
            loss = loss / plan.accumulation + injected_loss_fault(step, s.consecutive_skips == 0)
            loss.backward()
        mark_step(s.kind, s.mode)
        total += loss.detach()
    return total


def agree_across_ranks(loss: torch.Tensor, stop_requested: bool, env: DistEnv) -> Tuple[float, bool]:
    """Mean loss over ranks and whether any rank got a stop signal: one small all-reduce, so every rank
    takes the same decision (skip / stop / save) at the same step."""
    packed = torch.stack([loss.float(), torch.tensor(float(stop_requested), device=loss.device)])
    all_reduce_sum(packed)
    loss_sum, stops = packed.tolist()
    return loss_sum / env.world_size, stops > 0


def skip_nonfinite_step(args, plan: RunPlan, s: Session, loss: float, step: int) -> None:
    s.optimizer.zero_grad(set_to_none=True)
    s.consecutive_skips += 1
    if args.nonfinite_loss == "stop" or s.consecutive_skips > MAX_CONSECUTIVE_SKIPS:
        saved = list_checkpoints(plan.output_dir)
        kept = f"the newest checkpoint {saved[-1][1]} is intact" if saved else "no checkpoint was written yet"
        why = (f"{s.consecutive_skips} steps in a row" if args.nonfinite_loss == "skip"
               else "use --nonfinite_loss skip to skip such steps")
        raise NonFiniteLossError(f"non-finite loss ({loss}) at step {step}; stopped before the optimizer "
                                 f"step, {kept} ({why})")
    s.skipped_steps += 1
    s.log.note(f"warning: non-finite loss ({loss}) at step {step}: skipped "
               f"({s.skipped_steps} skipped so far)")


def save(args, plan: RunPlan, s: Session) -> None:
    """Checkpoint the state after ``s.phase_step`` steps (all ranks take part; rank 0 writes)."""
    if args.skip_checkpoint or s.saved_at == s.phase_step:
        return
    rank_states = gather_rank_states({"data_position": s.data.position.to_dict(), "rng": capture_rng_state()})
    error: Optional[CheckpointWriteError] = None
    if s.env.is_main:
        state = build_checkpoint(s.model, s.optimizer, s.scheduler, plan.phase, s.phase_step,
                                 plan.step_offset + s.phase_step, s.skipped_steps, rank_states,
                                 [p.name for p in plan.files], plan.config.to_dict())
        previous = list_checkpoints(plan.output_dir)
        try:
            save_checkpoint(state, plan.output_dir, args.keep_checkpoints)
        except CheckpointWriteError as err:
            kept = f"; the previous checkpoint {previous[-1][1]} is intact" if previous else ""
            error = CheckpointWriteError(f"{err}{kept}")
    failed = all_reduce_sum(torch.tensor([float(error is not None)], device=s.device)).item() > 0
    if failed:
        raise error or CheckpointWriteError("rank 0 could not write the checkpoint")
    s.saved_at = s.phase_step


def export_phase(plan: RunPlan, s: Session) -> None:
    """HF-format export of the finished phase: <hf_export_dir>/phase<N>/{config.json, model.safetensors, vocab.txt}."""
    out_dir = plan.hf_export_dir / f"phase{plan.phase}"
    if plan.vocab_file is None:
        s.log.note(f"note: no vocab.txt (--vocab_file or <input_dir>/vocab.txt), so no HF export in {out_dir}")
        return
    try:
        export_hf(s.model, plan.config, plan.vocab_file, out_dir)
    except ValueError as err:  # e.g. the config's vocab_size differs from the vocab file
        s.log.note(f"warning: no HF export in {out_dir}: {err}")
        return
    s.log.note(f"HF export of phase {plan.phase}: {out_dir}")


def write_param_checksum(s: Session, step: int) -> None:
    """--log_param_checksum: '<step> <SHA-256 of this rank's parameter bytes> <shard of its last batch>'."""
    if s.checksums is None:
        return
    digest = hashlib.sha256()
    for param in s.model.parameters():
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    s.checksums.write(f"{step} {digest.hexdigest()} {s.data.current_file.name}\n")
    s.checksums.flush()


def build_session(args, plan: RunPlan, kind: str, env: DistEnv) -> Session:
    mode = effective_mode(kind, args.mode)
    device = torch_device(kind, env.local_rank)
    if env.is_main:
        remove_stale_temporaries(plan.output_dir, name_prefix="ckpt_")  # left by a save that was killed

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = BertForPreTraining(plan.config).to(device)
    if kind == "cpu":
        retain_freed_memory()  # no page faults for each step's activations (central/host_allocator.py)
    if kind == "cpu" and mode == "eager":
        use_cpu_kernels(model)  # random-bits dropout, fused MLM decoder + loss (pretraining/cpu_kernels.py)
    optimizer = make_lamb(lamb_param_groups(model), args.learning_rate, kind, args.use_fused_lamb)
    start = load_start_point(args, plan.phase, plan.config.to_dict(), [p.name for p in plan.files], model,
                             optimizer, env.rank, env.world_size, warn=lambda line: console(line, env.is_main))
    scheduler = PolyWarmUpScheduler(optimizer, args.warmup_proportion, plan.max_steps)
    if start.scheduler_state is not None:
        scheduler.load_state_dict(start.scheduler_state)
    sync = GradientSync(model, env.world_size, args.allreduce_post_accumulation,
                        args.allreduce_post_accumulation_fp16, device_ids=[device.index] if kind == "cuda" else None)
    model.train()
    forward = compile_for_mode(sync.module, kind, mode)

    rank_state = start.rank_state or {}
    position = DataPosition.from_dict(rank_state["data_position"]) if "data_position" in rank_state else None
    data = ShardStream(plan.files, plan.shape, plan.micro_batch, args.seed, env.rank, env.world_size, position)
    if "rng" in rank_state:
        restore_rng_state(rank_state["rng"])
    else:  # dropout streams differ per rank, as the reference seeds them
        random.seed(args.seed + env.rank)
        np.random.seed((args.seed + env.rank) % 2**32)
        torch.manual_seed(args.seed + env.rank)

    log = TrainingLog(args.json_summary, env.is_main, args.train_batch_size, plan.log_freq, plan.max_steps,
                      start.phase_step, show_progress=not args.disable_progress_bar)
    log.parameters({"Config": vars(args), "SEED": args.seed, "train_start": start.description,
                    "batch_size_per_pu": plan.micro_batch, "gradient_accumulation_steps": plan.accumulation,
                    "world_size": env.world_size, "learning_rate": args.learning_rate, "phase": plan.phase,
                    "device": kind, "mode": mode, "precision": args.data_type, "model_config": plan.config.to_dict()})
    log.note(f"phase {plan.phase}: {start.description}")
    checksums = None
    if args.log_param_checksum:
        checksums = open(plan.output_dir / f"param_checksums.rank{env.rank}.txt", "a", encoding="utf-8")
    return Session(kind, mode, env, device, model, forward, optimizer, scheduler, sync, data, log, start,
                   phase_step=start.phase_step, skipped_steps=start.skipped_steps, saved_at=start.phase_step,
                   checksums=checksums)
