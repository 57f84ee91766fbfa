"""The one fine-tuning loop shared by every task (SQuAD, GLUE, ...).

A task builds a transformers model (``finetuning.model_loading``), turns its data into *features*
(one dict per example: token-id lists plus integer labels) and hands them to ``train``. The loop knows
nothing about the task: it pads each batch, runs forward/backward/step, logs and saves.

API (what task code calls, top to bottom):

    runtime = init_runtime(args)                 # device kind, mode, precision, DDP rank (from args)
    logger = open_logger(args.output_dir, runtime)   # DLLogger -> <output_dir>/dllogger.json (rank 0)
    collate = PaddingCollator(tokenizer.pad_token_id, fixed_length=...)  # dynamic padding to x8
    result = train(model, train_features, args, runtime, logger, collate=collate,
                   eval_callback=None)           # -> TrainResult; the model is trained in place
    for indices, outputs in predict(model, eval_features, runtime, batch_size, collate): ...
    save_model(model, tokenizer, args.output_dir, runtime)     # HF format, rank 0 only, atomic
    logger.close(); finish(runtime)

Features are dicts whose sequence entries (lists or numpy arrays: ``input_ids``, ``token_type_ids``,
optionally ``attention_mask``, made from the lengths when absent) are padded per batch to the batch's longest sequence, rounded up to a multiple of 8 (tensor cores /
HPU tiles like multiples of 8, and MRPC's short pairs then cost ~50 tokens instead of 128); integer
entries (``labels``, ``start_positions``, ...) become a 1-D tensor. Every key of a training feature
is passed to ``model(**batch)``, which must return an output with ``.loss``.

Arguments read from ``args`` (names of ``finetuning/args.py``): per_device_train_batch_size,
gradient_accumulation_steps, num_train_epochs, max_steps, learning_rate, weight_decay, adam_epsilon,
max_grad_norm, warmup_steps, warmup_proportion, logging_steps, save_steps, seed, device, mode,
data_type, dist_timeout, disable_progress_bar, output_dir, and (optional) eval_steps.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import os
import random
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from central import device as dev
from central.distributed import DistEnv, all_reduce_mean, barrier, init_distributed, teardown
from central.dllog import DLLogger, console, progress
from central.host_allocator import retain_freed_memory

Feature = Dict[str, object]  # {"input_ids": [int], "attention_mask": [int], ..., "labels": int}


# --------------------------------------------------------------------------------------------- runtime
@dataclass(frozen=True)
class Runtime:
    """Where and how this process runs: device kind, effective mode, precision and its DDP rank."""
    kind: str              # 'hpu' | 'cuda' | 'cpu'
    mode: str              # effective mode: 'eager' | 'graph' | 'lazy' (lazy only on HPU)
    precision: str         # 'fp32' | 'bf16'
    device: torch.device
    dist: DistEnv

    @property
    def is_main(self) -> bool:
        return self.dist.is_main


def init_runtime(args) -> Runtime:
    """Resolve --device/--mode/--data_type and join the process group when launched with several ranks.

    Raises central.device.DeviceUnavailableError (a one-line message) when the device is missing.
    """
    kind = dev.resolve_device_kind(args.device)
    mode = dev.effective_mode(kind, args.mode)
    for key, value in dev.mode_environment(kind, mode).items():
        os.environ.setdefault(key, value)
    dist_env = init_distributed(kind, getattr(args, "dist_timeout", 1800.0))
    if kind == "cpu":
        retain_freed_memory()  # no page faults for each step's activations (central/host_allocator.py)
    return Runtime(kind, mode, args.data_type, dev.torch_device(kind, dist_env.local_rank), dist_env)


def finish(runtime: Runtime) -> None:
    """Wait for every rank, then leave the process group."""
    barrier()
    teardown()


def open_logger(output_dir: str, runtime: Runtime) -> DLLogger:
    return DLLogger(Path(output_dir) / "dllogger.json", enabled=runtime.is_main)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------- batches
class PaddingCollator:
    """Features -> dict of tensors; sequences padded to the batch's longest, rounded up to ``multiple_of``.

    ``fixed_length`` pads every batch to the same length instead (static shapes for HPU graphs).
    Sequence keys: list / tuple / numpy values (padded with ``pad_token_id`` for input_ids, else 0);
    an ``attention_mask`` is made from the lengths when the features carry none.
    Output shapes: [B, L] int64 for sequences, [B] int64 for integer scalars (float32 for float ones).
    """

    def __init__(self, pad_token_id: int = 0, multiple_of: int = 8, fixed_length: Optional[int] = None,
                 drop_keys: Sequence[str] = ()):
        self.pad_token_id = pad_token_id
        self.multiple_of = max(1, multiple_of)
        self.fixed_length = fixed_length
        self.drop_keys = set(drop_keys)

    def padded_length(self, longest: int) -> int:
        if self.fixed_length:
            return max(self.fixed_length, longest)
        return -(-longest // self.multiple_of) * self.multiple_of

    def __call__(self, features: List[Feature]) -> Dict[str, torch.Tensor]:
        keys = [k for k in features[0] if k not in self.drop_keys]
        sequence_keys = [k for k in keys if isinstance(features[0][k], (list, tuple, np.ndarray))]
        lengths = [len(f[sequence_keys[0]]) for f in features] if sequence_keys else []
        length = self.padded_length(max(lengths)) if lengths else 0
        batch = {}
        for key in keys:
            if key in sequence_keys:
                rows = np.full((len(features), length), self.pad_token_id if key == "input_ids" else 0, dtype=np.int64)
                for row, feature in zip(rows, features):
                    row[:len(feature[key])] = feature[key]
                batch[key] = torch.from_numpy(rows)
            else:  # class ids -> int64; regression targets (floats, e.g. STS-B scores) -> float32
                dtype = torch.float if isinstance(features[0][key], float) else torch.long
                batch[key] = torch.tensor([f[key] for f in features], dtype=dtype)
        if "input_ids" in sequence_keys and "attention_mask" not in batch:
            # 1 over each feature's real tokens, 0 over the padding: [B, L]
            batch["attention_mask"] = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()
        return batch


def _to_device(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# --------------------------------------------------------------------------------------------- optimizer
def build_optimizer(model: torch.nn.Module, args, kind: str) -> torch.optim.Optimizer:
    """AdamW (fused where the device has it); no weight decay on biases and LayerNorm weights (1-D)."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return dev.adamw(groups, kind, lr=args.learning_rate, eps=args.adam_epsilon, weight_decay=args.weight_decay)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """LR factor rises linearly 0 -> 1 over warm-up, then falls linearly to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_steps_for(args, total_steps: int) -> int:
    if args.warmup_steps > 0:
        return args.warmup_steps
    return int(args.warmup_proportion * total_steps)


# --------------------------------------------------------------------------------------------- model
def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain transformers model under torch.compile and DDP wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _wrap_for_training(model: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """DDP across ranks (buffers are constants in BERT: no per-step broadcast), then compile for graph mode."""
    if runtime.dist.distributed:
        device_ids = [runtime.device.index] if runtime.kind == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel
        no_buffer_sync = ({"forward_sync_buffers": False}
                          if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
                          else {"broadcast_buffers": False})  # the newer name, where torch has it
        model = ddp(model, device_ids=device_ids, gradient_as_bucket_view=True,
                    bucket_cap_mb=230 if runtime.kind == "hpu" else 25, **no_buffer_sync)
    return dev.compile_for_mode(model, runtime.kind, runtime.mode)


class _StopRequest:
    """SIGTERM/SIGINT: finish the current step, save, then stop (a second signal acts as usual).

    Under DDP every rank must stop at the same step, so ``should_stop`` takes the maximum over ranks.
    """

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def should_stop(self, runtime: "Runtime") -> bool:
        if not runtime.dist.distributed:
            return self.signum != 0
        flag = torch.tensor([float(self.signum)], device=runtime.device)
        all_reduce_max(flag)
        self.signum = int(flag.item())
        return self.signum != 0

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return tensor


@dataclass
class TrainResult:
    global_step: int
    average_loss: float          # mean loss over all optimizer steps
    final_loss: float            # mean loss of the last logging window
    e2e_train_time: float        # seconds, from the first batch to the end of the last step
    training_sequences_per_second: float  # all ranks together
    stopped_by_signal: int = 0   # the signal number that asked the run to stop early (0: it ran to the end)


def train(model: torch.nn.Module, features: Sequence[Feature], args, runtime: Runtime, logger: DLLogger,
          collate: Optional[Callable] = None, eval_callback: Optional[Callable[[torch.nn.Module, int], dict]] = None,
          save_callback: Optional[Callable[[torch.nn.Module, str], None]] = None,
          batch_sampler: Optional[torch.utils.data.Sampler] = None) -> TrainResult:
    """Fine-tune ``model`` (moved to the runtime's device, trained in place) on ``features``.

    eval_callback(plain_model, step) -> metrics dict, run every ``args.eval_steps`` steps when given.
    save_callback(plain_model, directory) writes a checkpoint every ``args.save_steps`` steps
    (default: ``save_model`` without a tokenizer) into ``<output_dir>/checkpoint-<step>``.
    batch_sampler (single process only) replaces the random sampler: it yields lists of feature
    indices per batch (e.g. length-grouped batches); its ``set_epoch(epoch)`` is called if it has one.
    """
    set_seed(args.seed)
    collate = collate or PaddingCollator()
    model.to(runtime.device)
    model.train()
    optimizer = build_optimizer(model, args, runtime.kind)
    wrapped = _wrap_for_training(model, runtime)

    batch_size, accumulation = args.per_device_train_batch_size, max(1, args.gradient_accumulation_steps)
    if runtime.dist.distributed:
        sampler = DistributedSampler(features, num_replicas=runtime.dist.world_size, rank=runtime.dist.rank,
                                     shuffle=True, seed=args.seed)
    else:
        sampler = RandomSampler(features, generator=torch.Generator().manual_seed(args.seed))
    if batch_sampler is not None and not runtime.dist.distributed:
        sampler = batch_sampler
        loader = DataLoader(features, batch_sampler=batch_sampler, collate_fn=collate,
                            pin_memory=runtime.kind == "cuda")
    else:
        loader = DataLoader(features, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                            pin_memory=runtime.kind == "cuda", drop_last=False)
    steps_per_epoch = max(1, len(loader) // accumulation)
    if args.max_steps > 0:
        total_steps = args.max_steps
    else:
        total_steps = max(1, math.ceil(args.num_train_epochs * steps_per_epoch))
    epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = warmup_steps_for(args, total_steps)
    scheduler = linear_schedule(optimizer, warmup, total_steps)
    world = runtime.dist.world_size
    logger.parameters({"num_examples": len(features), "num_epochs": epochs, "total_steps": total_steps,
                       "warmup_steps": warmup, "per_device_batch_size": batch_size,
                       "gradient_accumulation_steps": accumulation, "world_size": world,
                       "device": runtime.kind, "mode": runtime.mode, "precision": runtime.precision})

    logging_steps, save_steps = max(0, args.logging_steps), max(0, args.save_steps)
    eval_steps = max(0, getattr(args, "eval_steps", 0) or 0)
    bar = progress(total=total_steps, desc="fine-tuning", enabled=runtime.is_main and not args.disable_progress_bar,
                   unit="step")
    step, micro = 0, 0
    window_loss = torch.zeros((), device=runtime.device)  # summed on device: no host sync per step
    total_loss, window_steps, window_sequences, last_window_loss = 0.0, 0, 0, float("nan")
    window_start = start = time.perf_counter()
    sequences = 0
    with _StopRequest() as stop:
        for epoch in range(epochs):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            for batch in loader:
                micro += 1
                batch = _to_device(batch, runtime.device)
                last_micro = micro % accumulation == 0
                sync = last_micro or not runtime.dist.distributed
                with (wrapped.no_sync() if not sync and hasattr(wrapped, "no_sync") else contextlib.nullcontext()):
                    with dev.autocast(runtime.kind, runtime.precision):
                        loss = wrapped(**batch).loss / accumulation
                    loss.backward()
                dev.mark_step(runtime.kind, runtime.mode)
                window_loss += loss.detach()
                window_sequences += batch["input_ids"].shape[0]
                if not last_micro:
                    continue

                if args.max_grad_norm > 0:
                    dev.clip_grad_norm(model.parameters(), args.max_grad_norm, runtime.kind)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                dev.mark_step(runtime.kind, runtime.mode)
                step += 1
                window_steps += 1
                bar.update(1)

                done = step >= total_steps or stop.should_stop(runtime)
                if (logging_steps and step % logging_steps == 0) or done:
                    all_reduce_mean(window_loss)  # every rank's loss, not rank 0's alone
                    loss_value = window_loss.item() / max(1, window_steps)  # the one host sync per window
                    now = time.perf_counter()
                    rate = window_sequences * world / max(now - window_start, 1e-9)
                    total_loss += loss_value * window_steps
                    sequences += window_sequences
                    last_window_loss = loss_value
                    logger.log([epoch, step], {"loss": loss_value, "learning_rate": scheduler.get_last_lr()[0],
                                               "sequences_per_second": rate})
                    bar.set_postfix(loss=f"{loss_value:.4f}")
                    window_loss.zero_()
                    window_steps, window_sequences, window_start = 0, 0, now
                if save_steps and step % save_steps == 0 and not done:
                    _save_checkpoint(model, Path(args.output_dir) / f"checkpoint-{step}", runtime, save_callback)
                if eval_steps and step % eval_steps == 0 and eval_callback is not None and not done:
                    metrics = eval_callback(model, step)
                    if metrics:
                        logger.log([epoch, step], metrics)
                    model.train()
                if done:
                    break
            if step >= total_steps or stop.signum:
                break
        elapsed = time.perf_counter() - start
        sequences += window_sequences
    bar.close()
    result = TrainResult(global_step=step, average_loss=total_loss / max(1, step), final_loss=last_window_loss,
                         e2e_train_time=elapsed,
                         training_sequences_per_second=sequences * world / max(elapsed, 1e-9),
                         stopped_by_signal=stop.signum)
    logger.log([], {"e2e_train_time": result.e2e_train_time,
                    "training_sequences_per_second": result.training_sequences_per_second,
                    "final_loss": result.final_loss, "average_loss": result.average_loss,
                    "global_step": result.global_step})
    if stop.signum:
        console("stop requested: finished the current step; saving and exiting", runtime.is_main)
    model.eval()
    return result


def _save_checkpoint(model, directory: Path, runtime: Runtime, save_callback) -> None:
    if save_callback is not None:
        if runtime.is_main:
            save_callback(model, str(directory))
        barrier()
    else:
        save_model(model, None, directory, runtime)


# --------------------------------------------------------------------------------------------- inference
@torch.no_grad()
def predict(model: torch.nn.Module, features: Sequence[Feature], runtime: Runtime, batch_size: int,
            collate: Optional[Callable] = None) -> Iterator[Tuple[range, object]]:
    """Run the model over ``features`` in order; yield (feature index range, outputs on CPU in float32).

    Only the model inputs among a feature's keys should be collated (use ``drop_keys`` on the collator
    for bookkeeping keys). Runs on the calling rank alone, on the plain (unwrapped) model, compiled
    in graph mode.
    """
    collate = collate or PaddingCollator()
    plain = unwrap(model)
    plain.to(runtime.device)
    plain.eval()
    forward = dev.compile_for_mode(plain, runtime.kind, runtime.mode)
    for start in range(0, len(features), batch_size):
        chunk = features[start:start + batch_size]
        batch = _to_device(collate(list(chunk)), runtime.device)
        with dev.autocast(runtime.kind, runtime.precision):
            outputs = forward(**batch)
        dev.mark_step(runtime.kind, runtime.mode)
        host = {k: v.float().cpu() for k, v in outputs.items() if isinstance(v, torch.Tensor)}
        yield range(start, start + len(chunk)), host


# --------------------------------------------------------------------------------------------- saving
def save_model(model: torch.nn.Module, tokenizer, output_dir, runtime: Runtime) -> None:
    """Write the model (and tokenizer) in HF format to ``output_dir`` on rank 0; other ranks wait.

    Files are written to a temporary sibling folder and moved in one by one, so a crash mid-save
    never leaves a half-written config.json/model.safetensors pair behind.
    """
    output_dir = Path(output_dir)
    if runtime.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=output_dir.parent))
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # no "Writing model shards" bar in the training log
            unwrap(model).save_pretrained(staging, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
                _write_vocab_txt(tokenizer, staging)
            for item in staging.iterdir():
                os.replace(item, output_dir / item.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    barrier()


def _write_vocab_txt(tokenizer, directory: Path) -> None:
    """vocab.txt beside tokenizer.json (transformers 5 writes only the latter), so that tools reading a
    WordPiece vocab (--vocab_file, BERT tokenizers of older transformers) can use the folder too."""
    target = directory / "vocab.txt"
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    if target.exists() or not vocab or sorted(vocab.values()) != list(range(len(vocab))):
        return
    by_id = sorted(vocab, key=vocab.get)
    target.write_text("".join(token + "\n" for token in by_id), encoding="utf-8")
