"""The one fine-tuning loop shared by every task (SQuAD, GLUE, ...).

A task builds a transformers model (``finetuning.model_loading``), turns its data into *features*
(``finetuning.batches``: one dict per example, token-id lists plus integer labels) and hands them to
``train`` with the run's ``FinetuneConfig``. The loop knows nothing about the task: it pads each batch,
runs forward/backward/step, logs and saves. What task code calls, top to bottom:

    with runtime_session(cfg.device, cfg.mode, cfg.data_type, cfg.dist_timeout) as runtime:
        logger = open_logger(output_dir, runtime)                  # finetuning.train_log
        result = train(model, features, cfg, runtime, logger, collate=PaddingCollator(...))
        save_model(model, tokenizer, output_dir, runtime)          # finetuning.saving
        for indices, outputs in predict(model, features, runtime, batch_size, collate): ...
                                                                   # finetuning.inference

Every key of a training feature is passed to ``model(**batch)``, which must return an output with
``.loss``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from central.device import autocast, clip_grad_norm, compile_for_mode, mark_step, zero_grad
from central.dllog import DLLogger, console
from central.gradient_sync import GradientSync, ddp_settings
from central.runtime import Runtime, seed_everything
from central.stop_signals import StopSignals
from finetuning.batches import Feature, PaddingCollator, to_device, training_batches
from finetuning.config import FinetuneConfig
from finetuning.optim import build_optimizer, linear_schedule
from finetuning.saving import save_checkpoint
from finetuning.train_log import FinetuneLog, TrainResult


def train(model: torch.nn.Module, features: Sequence[Feature], cfg: FinetuneConfig, runtime: Runtime,
          logger: DLLogger, collate: Optional[Callable] = None,
          eval_callback: Optional[Callable[[torch.nn.Module, int], dict]] = None,
          save_callback: Optional[Callable[[torch.nn.Module, str], None]] = None,
          batch_sampler: Optional[torch.utils.data.Sampler] = None) -> TrainResult:
    """Fine-tune ``model`` (moved to the runtime's device, trained in place) on ``features``.

    eval_callback(plain_model, step) -> metrics dict, run every ``cfg.eval_steps`` steps when given.
    save_callback(plain_model, directory) writes a checkpoint every ``cfg.save_steps`` steps
    (default: ``save_model`` without a tokenizer) into ``<output_dir>/checkpoint-<step>``.
    batch_sampler (single process only): see ``finetuning.batches.training_batches``.
    """
    seed_everything(cfg.seed)
    model.to(runtime.device)
    model.train()
    optimizer = build_optimizer(model, cfg, runtime.kind)
    sync = GradientSync(model, runtime.dist.world_size, ddp=ddp_settings(runtime.kind))
    forward = compile_for_mode(sync.module, runtime.kind, runtime.mode)
    batches = training_batches(features, cfg.per_device_train_batch_size, cfg.seed, runtime.dist,
                               collate or PaddingCollator(), runtime.kind == "cuda", batch_sampler)
    steps_per_epoch = max(1, len(batches) // cfg.accumulation)
    total_steps = cfg.total_steps(steps_per_epoch)
    epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = linear_schedule(optimizer, cfg.warmup_for(total_steps), total_steps)
    logger.parameters({"num_examples": len(features), "num_epochs": epochs, "total_steps": total_steps,
                       "warmup_steps": cfg.warmup_for(total_steps), "per_device_batch_size": cfg.per_device_train_batch_size,
                       "gradient_accumulation_steps": cfg.accumulation, "world_size": runtime.dist.world_size,
                       "device": runtime.kind, "mode": runtime.mode, "precision": runtime.precision})
    log = FinetuneLog(logger, runtime, total_steps, cfg.logging_steps, show_progress=not cfg.disable_progress_bar)

    step = 0
    with StopSignals() as signals:
        for epoch, batch, last_micro_batch in batches.micro_batches(epochs, cfg.accumulation):
            batch = to_device(batch, runtime.device)  # input_ids etc. [B, L], labels [B]
            with sync.micro_step(boundary=last_micro_batch):  # DDP all-reduces in the last backward only
                with autocast(runtime.kind, runtime.precision):
                    loss = forward(**batch).loss / cfg.accumulation
                loss.backward()
            mark_step(runtime.kind, runtime.mode)
            log.micro_batch(loss, batch["input_ids"].shape[0])
            if not last_micro_batch:
                continue

            if cfg.max_grad_norm > 0:
                clip_grad_norm(model.parameters(), cfg.max_grad_norm, runtime.kind, cfg.use_fused_clip_norm)
            optimizer.step()
            scheduler.step()
            zero_grad(optimizer)  # hpex optimizers differ in zero_grad's arguments (central.device)
            mark_step(runtime.kind, runtime.mode)
            step += 1
            # Every rank stops at the same step, decided from the flags all-reduced one step earlier:
            # nothing here waits for the device (central/stop_signals.py).
            done = step >= total_steps or signals.agree_one_step_late(runtime.device)
            log.step(epoch, step, scheduler.get_last_lr()[0], last=done)
            if done:
                break
            if cfg.save_steps > 0 and step % cfg.save_steps == 0:
                save_checkpoint(model, Path(cfg.output_dir) / f"checkpoint-{step}", runtime, save_callback)
            if cfg.eval_steps > 0 and step % cfg.eval_steps == 0 and eval_callback is not None:
                log.record(epoch, step, eval_callback(model, step))
                model.train()
    result = log.finish(step, signals.signum or 0)
    if result.stopped_by_signal:
        console("stop requested: finished the current step; saving and exiting", runtime.is_main)
    model.eval()
    return result
