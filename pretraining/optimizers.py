"""The pre-training optimizer chosen by --optimizer, with the parts every choice shares.

Both choices decay weights but not biases and LayerNorm parameters (``lamb_param_groups``, 0.01), clip
the global gradient norm to ``MAX_GRAD_NORM`` before the update and follow ``PolyWarmUpScheduler``:
  lamb   the reference's LAMB (``pretraining.lamb``; hpex FusedLamb on HPU): per-tensor trust ratios make
         its large learning rates safe at the reference's batches of thousands of sequences;
  adamw  AdamW (``central.device.adamw``: torch's fused kernel, hpex FusedAdamW on HPU) with BERT's
         epsilon 1e-6; at the batches of one CPU or GPU (tens of sequences) it leaves the unigram plateau
         of masked-LM training in fewer steps (docs/time-to-quality.md). LAMB clips inside its step;
         AdamW's clipping is ``clip_before_step``.
"""
from __future__ import annotations

import torch
from torch import nn

from central.device import adamw, clip_grad_norm
from pretraining.lamb import lamb_param_groups, make_lamb

MAX_GRAD_NORM = 1.0
ADAMW_EPS = 1e-6


def make_optimizer(name: str, model: nn.Module, learning_rate: float, kind: str,
                   use_fused_lamb: bool = True) -> torch.optim.Optimizer:
    groups = lamb_param_groups(model)
    if name == "lamb":
        return make_lamb(groups, learning_rate, kind, use_fused_lamb)  # clips inside its step (MAX_GRAD_NORM)
    if name == "adamw":
        return adamw(groups, kind, lr=learning_rate, eps=ADAMW_EPS)
    raise ValueError(f"unknown optimizer {name!r} (lamb or adamw)")


def clip_before_step(name: str, model: nn.Module, kind: str) -> None:
    """The global-norm clipping of optimizers that do not clip inside their step (AdamW)."""
    if name != "lamb":
        clip_grad_norm(model.parameters(), MAX_GRAD_NORM, kind)
