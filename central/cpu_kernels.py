"""Faster CPU stand-ins for dropout, attention with dropout and the MLM decoder's layout, set by ``use_cpu_kernels``.

Why: ATen's CPU dropout draws one Bernoulli sample per element from a serial generator, about 7 ns
per element on the 2-core dev VM and not threaded (14 ms for one [32, 4, 128, 128] attention-probs
mask), and SDPA on CPU falls back to its math path with that same dropout whenever dropout_p > 0.
In a BERT-mini training step that is ~8% of the time. Here the keep mask comes from 64 random bits
per 4 elements: ``int64.random_`` fills a buffer, viewed as int16 lanes each lane is uniform over
65536 values, and ``lane < threshold`` keeps an element with probability threshold / 65536 (within
1 / 65536 of 1 - p; the kept values are scaled by 65536 / threshold, so the expectation is exact).
That costs about 1.6 ms for 1M elements instead of 10 ms.

The model stays device-agnostic: its ``nn.Dropout`` modules are replaced by ``BitsDropout``, its
attention modules' ``attention_fn`` attribute (``F.scaled_dot_product_attention`` by default) by
``attention_with_bits_dropout``, and the MLM head's ``logits_vocab_major`` is turned on (MKL runs the
big decoder matmul ~1.7x faster as table @ x^T than as x @ table^T; BERT-mini steps ~7% faster).
The draws come from torch's default CPU generator, so ``torch.manual_seed`` and the checkpointed RNG
state make runs reproducible and resumable exactly as before; only the masks differ from ATen's.
Eager CPU only: graph mode lets the compiler generate its own dropout, and accelerators have fused
dropout kernels already.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

LANES = 1 << 16  # values of one int16 lane


def keep_mask(shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A dropout multiplier of ``shape``: 0 with probability ~p, else 1 / (keep probability)."""
    count = math.prod(shape)
    keep = round((1.0 - p) * LANES)  # lanes (out of 65536) that keep their element
    if keep == 0:
        return torch.zeros(shape, dtype=dtype, device=device)
    if keep == LANES:  # the int16 comparison below cannot express "keep all"
        return torch.ones(shape, dtype=dtype, device=device)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, None)  # 64 bits each
    lanes = words.view(torch.int16)[:count].view(shape)  # uniform over [-32768, 32767]
    return (lanes < keep - LANES // 2).to(dtype).mul_(LANES / keep)


def bits_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with the random-bits keep mask (autograd saves only the mask)."""
    if not training or p == 0.0:
        return x
    return x * keep_mask(x.shape, p, x.dtype, x.device)


class BitsDropout(nn.Module):
    """Drop-in for ``nn.Dropout`` (same ``p``, same train/eval behaviour)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must lie in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bits_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention_with_bits_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Scaled dot-product attention; with dropout_p > 0 the math path with ``bits_dropout`` on the probs.

    q [B, heads, Q, d], k / v [B, heads, L, d], attn_mask bool [B, 1, 1 or Q, L] (True = attend) or None
    -> [B, heads, Q, d]. Without dropout SDPA runs as is (its fused CPU kernel is the fastest).
    """
    if dropout_p == 0.0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    batch, heads, queries, head_dim = q.shape
    q3, k3, v3 = (t.reshape(batch * heads, -1, head_dim) for t in (q, k, v))  # [B * heads, Q or L, d]
    scale = 1.0 / math.sqrt(head_dim)
    if attn_mask is None:
        scores = torch.bmm(q3, k3.transpose(1, 2)).mul_(scale)  # [B * heads, Q, L]
    else:  # the mask as an additive bias that the matmul adds for free: 0 = attend, -inf = padding
        bias = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~attn_mask, float("-inf"))
        bias = bias.expand(batch, heads, *bias.shape[-2:]).reshape(batch * heads, *bias.shape[-2:])  # [B*heads, 1, L]
        scores = torch.baddbmm(bias, q3, k3.transpose(1, 2), alpha=scale)
    probs = bits_dropout(torch.softmax(scores, dim=-1), dropout_p)
    return torch.bmm(probs, v3).view(batch, heads, queries, head_dim)


def use_cpu_kernels(model: nn.Module) -> int:
    """Swap the stand-ins into ``model`` in place; returns how many modules changed."""
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, name, BitsDropout(child.p).train(child.training))
                swapped += 1
        if getattr(module, "attention_fn", None) is F.scaled_dot_product_attention:
            module.attention_fn = attention_with_bits_dropout
            swapped += 1
        if getattr(module, "logits_vocab_major", None) is False:  # MLM decoder: MKL's faster orientation
            module.logits_vocab_major = True
            swapped += 1
    return swapped
