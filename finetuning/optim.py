"""The fine-tuning optimizer and its schedule: AdamW in parameter groups, linear warm-up then decay."""
from __future__ import annotations

import torch

from central.device import adamw
from finetuning.config import FinetuneConfig


def build_optimizer(model: torch.nn.Module, cfg: FinetuneConfig, kind: str) -> torch.optim.Optimizer:
    """AdamW (fused where the device has it); no weight decay on biases and LayerNorm weights (1-D)."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return adamw(groups, kind, lr=cfg.learning_rate, eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay,
                 habana_fused=cfg.use_fused_adam)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """LR factor rises linearly 0 -> 1 over warm-up, then falls linearly to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
