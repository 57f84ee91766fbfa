"""How gradients meet across ranks during gradient accumulation.

Three ways, chosen once per run:

* single process: nothing to do;
* DDP (default for several ranks): DDP all-reduces bucket by bucket during the backward pass of the
  last micro-batch; the earlier micro-batches run under ``no_sync()`` so they only accumulate locally;
* post-accumulation (``--allreduce_post_accumulation``, the reference's choice on Gaudi): no DDP; the
  parameters are broadcast from rank 0 once, and at the accumulation boundary all gradients are
  flattened into one buffer and all-reduced in a single call, optionally in bf16
  (``--allreduce_post_accumulation_fp16``) to halve the traffic.

Either way every rank ends the boundary micro-step holding the mean gradient over all micro-batches of
all ranks. (The reference sums un-scaled micro-batch gradients and divides the flat buffer by
world x accumulation; here each micro-batch loss is already divided by the accumulation count, so the
buffer is divided by the world size only: the same mean.)
"""
from __future__ import annotations

import contextlib
from typing import List

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


class GradientSync:
    def __init__(self, model: torch.nn.Module, world_size: int, post_accumulation: bool = False,
                 bf16_allreduce: bool = False, device_ids=None):
        self.world_size = world_size
        self.post_accumulation = post_accumulation and world_size > 1
        self.bf16_allreduce = bf16_allreduce
        self.ddp = None
        if world_size > 1 and not self.post_accumulation:
            # bucket_cap_mb as the reference: few, large buckets for BERT-sized gradients.
            self.ddp = DistributedDataParallel(model, device_ids=device_ids, bucket_cap_mb=230)
        elif self.post_accumulation:
            for tensor in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(tensor.data, src=0)
        self.module = self.ddp if self.ddp is not None else model
        self._params: List[torch.nn.Parameter] = [p for p in model.parameters() if p.requires_grad]

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
