"""Attention for the BERT encoder: one dispatch over the backends, and the per-batch layout it reads.

The model calls the dispatch twice: once per batch to build the layout (who may attend to whom), and
once per layer to compute attention under it::

    layout = dispatch.layout(attention_mask)             # BertModel, once per forward
    rows = dispatch.for_queries(layout, query_index)     # the last layer's query rows
    context = dispatch(q, k, v, layout, dropout_p)       # every layer: [B, heads, Q, d]

Backends. ``masked`` has SDPA's signature ``(q, k, v, attn_mask=None, dropout_p=0.0)``:
``F.scaled_dot_product_attention`` by default (every device and mode), ``eager_attention`` (softmax
written out: the test oracle), or a CPU kernel (``pretraining.cpu_kernels``). An unpadded batch gets no
mask at all, which lets SDPA pick its fastest (flash) kernel; a padded batch a [B, 1, 1, L] key mask.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

MaskedAttention = Callable[..., torch.Tensor]  # SDPA's signature


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                    dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d), masked) v, written out: the oracle the other backends are tested against.

    q [B, heads, Q, d], k / v [B, heads, L, d], attn_mask bool broadcastable to [B, heads, Q, L]
    (True = attend) or None -> [B, heads, Q, d].
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [B, heads, Q, L]
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return F.dropout(torch.softmax(scores, dim=-1), dropout_p) @ v


@dataclass
class AttentionLayout:
    """Who attends to whom in one batch: built once per forward pass, read by every layer.

    mask: bool [B, 1, 1, L] (True = a real key) for a padded batch; None: every query sees every key.
    """
    mask: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class AttentionDispatch:
    """The one attention entry point of the model (its ``ModelKernels.attention``).

    masked: the masked backend, SDPA's signature (``dataclasses.replace`` swaps it, as the CPU kernels do).
    """
    masked: MaskedAttention = F.scaled_dot_product_attention

    def layout(self, attention_mask: Optional[torch.Tensor]) -> AttentionLayout:
        """attention_mask [B, L] (1 = token, 0 = padding) or None (no padding) -> the batch's layout."""
        return AttentionLayout(mask=key_mask_for_sdpa(attention_mask))

    def for_queries(self, layout: AttentionLayout, query_index: torch.Tensor) -> AttentionLayout:
        """The layout for queries at query_index [B, Q] only (keys stay all L): a key mask serves any rows."""
        return layout

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout,
                 dropout_p: float) -> torch.Tensor:
        """q [B, heads, Q, d], k / v [B, heads, L, d] -> context [B, heads, Q, d]."""
        return self.masked(q, k, v, attn_mask=layout.mask, dropout_p=dropout_p)


def key_mask_for_sdpa(attention_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """[B, L] 1 = token / 0 = padding -> [B, 1, 1, L] bool (True = attend), or None without padding.

    None lets SDPA pick its unmasked (fastest) kernels. Callers may pass attention_mask=None for a
    batch they know is unpadded; otherwise a mask held on the CPU is inspected (free there). A mask on
    an accelerator is always passed as is: reading it would force a host sync (a graph flush in HPU
    lazy mode), and under torch.compile the check would be a data-dependent graph break.
    """
    if attention_mask is None:
        return None
    if (attention_mask.device.type == "cpu" and not torch.compiler.is_compiling()
            and bool(attention_mask.all())):
        return None
    return attention_mask.bool()[:, None, None, :]
