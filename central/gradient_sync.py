"""How gradients meet across ranks during gradient accumulation; the one place that wraps a model in DDP.

Three ways, chosen once per run by ``GradientSync``:

* single process: nothing to do;
* DDP (default for several ranks): DDP all-reduces bucket by bucket during the backward pass of the
  last micro-batch; the earlier micro-batches run under ``no_sync()`` so they only accumulate locally;
* post-accumulation (pre-training's ``--allreduce_post_accumulation``, the reference's choice on
  Gaudi): no DDP; the parameters are broadcast from rank 0 once, and at the accumulation boundary all
  gradients are flattened into one buffer and all-reduced in a single call, optionally in bf16
  (``--allreduce_post_accumulation_fp16``: the flag says fp16, the buffer is bf16, which keeps fp32's
  exponent range) to halve the traffic.

Either way every rank ends the boundary micro-step holding the mean gradient over all micro-batches of
all ranks, provided each micro-batch loss was divided by the accumulation count (the flat buffer is
divided by the world size only).

``DDPSettings`` carries DDP's knobs; ``ddp_settings(kind)`` gives both loops their values per device.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DDPSettings:
    bucket_cap_mb: int = 25                # gradient bucket size (25 is torch's default)
    gradient_as_bucket_view: bool = False  # gradients alias the buckets: one copy less, less memory
    sync_buffers: bool = True              # broadcast rank 0's buffers before each forward


def ddp_settings(kind: str) -> DDPSettings:
    """DDP's settings per device kind, for both training loops.

    * Gradients alias DDP's buckets (``gradient_as_bucket_view``): no copy into the buckets and back, and
      one gradient-sized buffer less.
    * No buffer broadcast before each forward: BERT's buffers (if any) are constants.
    * Buckets: 230 MB on HPU, as Habana's scripts use with HCCL; torch's 25 MB elsewhere. With NCCL,
      smaller buckets let the first all-reduces start while the backward pass is still producing the
      other gradients; 25 MB is the size NCCL's DDP default was tuned at (BERT-Large: ~54 buckets of
      1.3 GB fp32 gradients). No GPU measurement here says another size is better.
    """
    return DDPSettings(bucket_cap_mb=230 if kind == "hpu" else 25, gradient_as_bucket_view=True, sync_buffers=False)


def data_parallel(model: torch.nn.Module, settings: DDPSettings = DDPSettings()) -> DistributedDataParallel:
    """``model`` (already on its device) wrapped in DDP with ``settings``; needs a process group."""
    device = next(model.parameters()).device
    options = {}
    if not settings.sync_buffers:  # torch renamed broadcast_buffers; use the name this torch has
        ddp_parameters = inspect.signature(DistributedDataParallel.__init__).parameters
        options["forward_sync_buffers" if "forward_sync_buffers" in ddp_parameters else "broadcast_buffers"] = False
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   bucket_cap_mb=settings.bucket_cap_mb,
                                   gradient_as_bucket_view=settings.gradient_as_bucket_view, **options)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model under torch.compile and DDP wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, DistributedDataParallel):
            model = model.module
        else:
            return model


class GradientSync:
    """``module`` is what the step calls (DDP or the model itself); ``micro_step`` and
    ``after_accumulation`` bracket each micro-batch and each optimizer step."""

    def __init__(self, model: torch.nn.Module, world_size: int, post_accumulation: bool = False,
                 bf16_allreduce: bool = False, ddp: DDPSettings = DDPSettings()):
        self.world_size = world_size
        self.post_accumulation = post_accumulation and world_size > 1
        self.bf16_allreduce = bf16_allreduce and self.post_accumulation
        self.ddp: Optional[DistributedDataParallel] = None
        if world_size > 1 and not self.post_accumulation:
            self.ddp = data_parallel(model, ddp)
        elif self.post_accumulation:
            for tensor in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(tensor.data, src=0)
        self.module = self.ddp if self.ddp is not None else model
        self._params: List[torch.nn.Parameter] = [p for p in model.parameters() if p.requires_grad]

    @property
    def allreduce_dtype(self) -> Optional[str]:
        """The dtype gradients travel in between ranks (None for a single process)."""
        if self.world_size == 1:
            return None
        return "bf16" if self.bf16_allreduce else "fp32"

    def describe(self) -> str:
        if self.ddp is not None:
            return "DDP: gradients all-reduced in fp32 during the last micro-batch's backward"
        if self.post_accumulation:
            return f"one all-reduce of all gradients after accumulation, in {self.allreduce_dtype}"
        return "single process: no gradient all-reduce"

    def micro_step(self, boundary: bool):
        """Context for one micro-batch's forward+backward: DDP skips its all-reduce before the boundary."""
        if self.ddp is not None and not boundary:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    def after_accumulation(self) -> None:
        """At the boundary, after the last backward: the post-accumulation all-reduce (else nothing)."""
        if not self.post_accumulation:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params]
        flat = torch.cat([g.reshape(-1) for g in grads])  # [total parameters]
        if self.bf16_allreduce:
            flat = flat.to(torch.bfloat16)
        flat.div_(self.world_size)
        dist.all_reduce(flat)
        for param, piece in zip(self._params, torch.split(flat, [g.numel() for g in grads])):
            if param.grad is None:
                param.grad = torch.empty_like(param)
            param.grad.copy_(piece.view_as(param))
