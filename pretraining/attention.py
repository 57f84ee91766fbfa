"""Attention for the BERT encoder: one dispatch over the backends, and the per-batch layout it reads.

The model calls the dispatch twice: once per batch to build the layout (who may attend to whom), and
once per layer to compute attention under it::

    layout = dispatch.layout(attention_mask, samples_per_row, dropout_p)   # BertModel, once per forward
    rows = dispatch.for_queries(layout, query_index)                       # the last layer's query rows
    context = dispatch(q, k, v, layout, dropout_p)                         # every layer: [B, heads, Q, d]

Batches. Unpacked: attention_mask [B, L] is 1 on tokens and 0 on padding, or None for a batch without
padding (the caller knows: the data loader has the lengths on the host). Packed (Habana's format, up to
K samples end to end in a row): attention_mask holds the sample number 1..K of each token, 0 on padding.

Backends.
  masked  SDPA's signature ``(q, k, v, attn_mask=None, dropout_p=0.0)``: ``F.scaled_dot_product_attention``
          by default (every device and mode), ``eager_attention`` (the softmax written out: the test
          oracle), or a CPU kernel (``pretraining.cpu_kernels``). Unpadded: no mask (SDPA may pick its
          flash kernel); padded: a [B, 1, 1, L] key mask; packed: a [B, 1, L, L] block-diagonal mask,
          True where query and key carry the same sample number. Padding carries 0, so it attends to
          padding only: no row is fully masked (no NaN) and no real token ever reads it.
  varlen  packed batches only, when the runtime gives a ``VarlenKernel`` (``attention_for_device``: on
          CUDA, FlashAttention's ``flash_attn_varlen_func`` when installed, else torch's
          ``torch.nn.attention.varlen.varlen_attn``, torch >= 2.10). The flat [B * L, heads, d] tokens
          form B * (K + 1) sequences: each row's K sample slots (empty ones have length 0) and its padding,
          so nothing is gathered or scattered and the offsets have a fixed shape (no recompiles).
          Used for the full layers; the last layer, whose queries are a few rows per sample, uses the
          masked backend with those rows of the block mask. A kernel without dropout (torch's) serves
          only batches run without attention dropout; with dropout, packed batches take the masked path.

No host sync, no device inspection: which path runs follows from what the caller passes, the dropout
probability and the dtype, all known while tracing; the varlen offsets are computed on the device from
the sample numbers, and max_seqlen is the row length L (an upper bound is all the kernels need).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

MaskedAttention = Callable[..., torch.Tensor]  # SDPA's signature
HALF_DTYPES = (torch.float16, torch.bfloat16)


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


@dataclass(frozen=True)
class VarlenKernel:
    """A variable-length attention kernel: ``run(q, k, v, cu_seqlens, max_seqlen, dropout_p)`` with
    q / k / v [T, heads, d], cu_seqlens [S + 1] int32 -> [T, heads, d]."""
    name: str
    run: Callable[..., torch.Tensor]
    has_dropout: bool
    dtypes: Tuple[torch.dtype, ...] = HALF_DTYPES


@dataclass
class AttentionLayout:
    """Who attends to whom in one batch: built once per forward pass, read by every layer.

    mask        bool, broadcastable to [B, heads, Q, L] (True = attend), or None: every query sees every key
    sample_ids  [B, L] sample numbers of a packed batch (None when unpacked)
    cu_seqlens  [B * (K + 1) + 1] int32 offsets for the varlen kernel (None: masked path)
    max_seqlen  the longest sequence the offsets describe, at most (the row length L)
    """
    mask: Optional[torch.Tensor] = None
    sample_ids: Optional[torch.Tensor] = None
    cu_seqlens: Optional[torch.Tensor] = None
    max_seqlen: int = 0


@dataclass(frozen=True)
class AttentionDispatch:
    """The one attention entry point of the model (its ``ModelKernels.attention``).

    masked  the masked backend, SDPA's signature (``dataclasses.replace`` swaps it, as the CPU kernels do)
    varlen  the kernel for packed batches, or None (masked path only)
    """
    masked: MaskedAttention = F.scaled_dot_product_attention
    varlen: Optional[VarlenKernel] = None

    def layout(self, attention_mask: Optional[torch.Tensor], samples_per_row: Optional[int] = None,
               dropout_p: float = 0.0) -> AttentionLayout:
        """The batch's layout. attention_mask [B, L]: 1 / 0 (unpacked), None (unpacked, no padding), or
        sample numbers 1..K with samples_per_row = K (packed). dropout_p: the attention dropout in effect."""
        if samples_per_row is None:
            return AttentionLayout(mask=key_mask_for_sdpa(attention_mask))
        if attention_mask is None:
            raise ValueError("a packed batch needs its attention_mask (the sample number of every token)")
        if self.varlen is not None and (dropout_p == 0.0 or self.varlen.has_dropout):
            offsets = packed_cu_seqlens(attention_mask, samples_per_row)
            return AttentionLayout(sample_ids=attention_mask, cu_seqlens=offsets, max_seqlen=attention_mask.shape[1])
        return AttentionLayout(mask=same_sample(attention_mask, attention_mask), sample_ids=attention_mask)

    def for_queries(self, layout: AttentionLayout, query_index: torch.Tensor) -> AttentionLayout:
        """The layout for the queries at query_index [B, Q] only (keys stay all L): the masked path with
        the block mask's rows for a packed batch; a key mask serves any rows as it is."""
        if layout.sample_ids is None:
            return layout
        return AttentionLayout(mask=same_sample(layout.sample_ids.gather(1, query_index), layout.sample_ids))

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout,
                 dropout_p: float) -> torch.Tensor:
        """q [B, heads, Q, d], k / v [B, heads, L, d] -> context [B, heads, Q, d]."""
        mask = layout.mask
        if layout.cu_seqlens is not None:
            if q.dtype in self.varlen.dtypes:
                return self._varlen(q, k, v, layout, dropout_p)
            mask = same_sample(layout.sample_ids, layout.sample_ids)  # e.g. fp32: the kernel cannot run it
        return self.masked(q, k, v, attn_mask=mask, dropout_p=dropout_p)

    def _varlen(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout,
                dropout_p: float) -> torch.Tensor:
        batch, heads, length, head_dim = q.shape
        # [B, heads, L, d] (a permuted view of the q/k/v projection) -> [B * L, heads, d] views, no copy
        flat = [t.transpose(1, 2).reshape(batch * length, heads, head_dim) for t in (q, k, v)]
        out = self.varlen.run(*flat, layout.cu_seqlens, layout.max_seqlen, dropout_p)  # [B * L, heads, d]
        return out.view(batch, length, heads, head_dim).transpose(1, 2)


def same_sample(query_ids: torch.Tensor, key_ids: torch.Tensor) -> torch.Tensor:
    """query_ids [B, Q], key_ids [B, L] sample numbers -> [B, 1, Q, L] bool: True where they are equal."""
    return query_ids[:, None, :, None] == key_ids[:, None, None, :]


def packed_cu_seqlens(sample_ids: torch.Tensor, samples_per_row: int) -> torch.Tensor:
    """sample_ids [B, L] (samples 1..K laid end to end from position 0, padding 0 at the tail, as the
    packed format guarantees) -> [B * (K + 1) + 1] int32 offsets into the flat B * L tokens: per row the
    K sample slots (0 long when unused), then its padding. Computed on the device (no host sync)."""
    numbers = torch.arange(1, samples_per_row + 1, device=sample_ids.device)
    lengths = (sample_ids.unsqueeze(-1) == numbers).sum(1)  # [B, K]
    padding = sample_ids.shape[1] - lengths.sum(1, keepdim=True)  # [B, 1]
    segments = torch.cat([lengths, padding], dim=1).flatten()  # [B * (K + 1)]
    return F.pad(segments.cumsum(0), (1, 0)).to(torch.int32)


def key_mask_for_sdpa(attention_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """[B, L] 1 = token / 0 = padding -> [B, 1, 1, L] bool (True = attend); None (no padding) -> None.

    The mask is never read here: whether a batch has padding is the caller's word (the data loader
    knows the lengths on the host). Reading it would force a host sync on an accelerator (a graph flush
    in HPU lazy mode) and a data-dependent graph break under torch.compile.
    """
    return None if attention_mask is None else attention_mask.bool()[:, None, None, :]


def _flash_attn_varlen(q, k, v, cu_seqlens, max_seqlen, dropout_p):
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p=dropout_p)


def _torch_varlen(q, k, v, cu_seqlens, max_seqlen, dropout_p):
    from torch.nn.attention.varlen import varlen_attn

    if dropout_p:  # the layout never asks it to drop
        raise ValueError("torch's varlen_attn has no dropout")
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen)


def available_varlen_kernel() -> Optional[VarlenKernel]:
    """FlashAttention's varlen kernel when installed (it has dropout), else torch's (>= 2.10, no
    dropout), else None."""
    try:
        import flash_attn  # noqa: F401
        return VarlenKernel("flash_attn.flash_attn_varlen_func", _flash_attn_varlen, has_dropout=True)
    except ImportError:
        pass
    try:
        import torch.nn.attention.varlen  # noqa: F401
        return VarlenKernel("torch.nn.attention.varlen.varlen_attn", _torch_varlen, has_dropout=False)
    except ImportError:
        return None


def attention_for_device(device_type: str, precision: str, attention_dropout: float
                         ) -> Tuple[AttentionDispatch, str]:
    """The dispatch a run on ``device_type`` ("cuda", "hpu", "cpu") in ``precision`` ("fp32", "bf16")
    should give its model, and one line saying how packed batches will be attended (log it once).

    The runtime calls this (the model never looks at devices): CUDA in bf16 gets the varlen kernel for
    packed batches; everything else the masked path."""
    masked_line = "attention: masked SDPA (packed batches: block-diagonal [B, 1, L, L] mask)"
    if device_type != "cuda":
        return AttentionDispatch(), masked_line
    if precision not in ("bf16", "fp16"):
        return AttentionDispatch(), f"{masked_line}; varlen kernels need bf16, this run is {precision}"
    kernel = available_varlen_kernel()
    if kernel is None:
        return AttentionDispatch(), f"{masked_line}; no varlen kernel (torch < 2.10 and no flash-attn)"
    line = f"attention: packed batches through {kernel.name} (per-sample offsets), others masked SDPA"
    if attention_dropout > 0 and not kernel.has_dropout:
        line += (f"; it has no dropout, so training with attention dropout {attention_dropout} uses the "
                 f"masked path (block-diagonal mask) and only dropout-free passes use varlen; install "
                 f"flash-attn for varlen attention with dropout")
    return AttentionDispatch(varlen=kernel), line
