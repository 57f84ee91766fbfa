"""Faster CPU stand-ins for dropout, attention with dropout, linear layers, the MLM loss and embedding gradients, set by ``use_cpu_kernels``.

Dropout. ATen's CPU dropout draws one Bernoulli sample per element from a serial generator, about
7 ns per element on the 2-core dev VM and not threaded (14 ms for one [32, 4, 128, 128] attention-probs
mask), and SDPA on CPU falls back to its math path with that same dropout whenever dropout_p > 0.
In a BERT-mini training step that is ~8% of the time. Here the keep mask comes from 64 random bits
per 4 elements: ``int64.random_`` fills a buffer, viewed as int16 lanes each lane is uniform over
65536 values, and ``lane < threshold`` keeps an element with probability threshold / 65536 (within
1 / 65536 of 1 - p; the kept values are scaled by 65536 / threshold, so the expectation is exact).
That costs about 1.6 ms for 1M elements instead of 10 ms.

The model stays device-agnostic: its ``nn.Dropout`` modules are replaced by ``BitsDropout``, its plain
``nn.Embedding`` modules by ``IndexAddEmbedding`` (same parameter, a 2-5x faster backward), its attention
modules' ``attention_fn`` attribute (``F.scaled_dot_product_attention`` by default) by
``attention_with_bits_dropout``, the MLM head's ``loss_fn`` by ``FusedDecoderCrossEntropy`` (decoder
and cross-entropy fused over a reused vocab-major buffer; BERT-mini steps ~5% faster),
BertForPreTraining's ``decoder_table_fn`` by ``tied_table_alias`` (the tied word table's two gradients
summed without a table-sized zero fill; BERT-base steps 3-8% faster), and its ``nn.Linear`` modules and
attention ``linear_fn`` (``F.linear``) by oneDNN's fp32 matmul (``central.onednn_linear``; BERT-base
steps ~7% faster).
The draws come from torch's default CPU generator, so ``torch.manual_seed`` and the checkpointed RNG
state make runs reproducible and resumable exactly as before; only the masks differ from ATen's.
Eager CPU only: graph mode lets the compiler generate its own dropout, and accelerators have fused
dropout kernels already.
"""
from __future__ import annotations

import math
import weakref
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from central.onednn_linear import OneDnnLinear, onednn_available, onednn_linear
from pretraining.modeling import (decoder_cross_entropy, decoder_table, padded_table_gradients,
                                  softmax_cross_entropy, softmax_cross_entropy_grad)

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


class _IndexAddLookup(torch.autograd.Function):
    """weight[ids] whose backward is one ``index_add_`` into a zeroed table, or with ``sparse_rows`` the
    looked-up rows' gradients as a sparse COO tensor (no table-sized tensor at all)."""

    @staticmethod
    def forward(ctx, ids: torch.Tensor, weight: torch.Tensor, sparse_rows: bool) -> torch.Tensor:
        # ids [...] long, weight [V, H] -> [..., H]
        ctx.save_for_backward(ids)
        ctx.table_shape = weight.shape
        ctx.sparse_rows = sparse_rows
        return F.embedding(ids, weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])  # [N, H]
        if ctx.sparse_rows:  # duplicate ids are summed when the rows are added to a dense gradient
            return None, torch.sparse_coo_tensor(ids.reshape(1, -1), rows, ctx.table_shape,
                                                 check_invariants=False), None
        return None, rows.new_zeros(ctx.table_shape).index_add_(0, ids.reshape(-1), rows), None


class IndexAddEmbedding(nn.Embedding):
    """Drop-in for a plain ``nn.Embedding`` (no padding_idx, max_norm or scale_grad_by_freq) with a faster
    CPU backward: ATen's ``embedding_dense_backward`` took ~10 ms inside a BERT-mini step (4096 token
    rows into the [30528, 256] table; 1.7-13.7 ms alone, by thread count and run) where zeros +
    ``index_add_`` take 0.9-2.5 ms alone. Same gradient, summed in another order. ``sparse_rows`` (set
    by ``use_cpu_kernels`` for a table tied to the MLM decoder only) returns the rows as a sparse gradient."""

    sparse_rows = False

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _IndexAddLookup.apply(input, self.weight, self.sparse_rows)


class _TableAlias(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: torch.Tensor) -> torch.Tensor:
        return table.view_as(table)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad


def tied_table_alias(word_embeddings: torch.Tensor) -> torch.Tensor:
    """BertForPreTraining's ``decoder_table_fn`` on CPU: the table through an identity node made before
    the encoder runs, so that its two gradients meet without a table-sized zero fill.

    The table gets a dense gradient from the decoder (made late in the forward) and one from the
    embedding lookup (made first). By default the lookup's is a zero-filled [V, H] table with its N rows
    added, then added to the decoder's: on BERT-base two fresh 94 MB tensors per step, page-faulted in
    anew, ~240 ms of a ~3.7 s step on the 2-core dev VM (the faults cost ~5x more inside a step than
    alone). Here the lookup returns its rows as a sparse tensor instead, and the decoder's gradient
    reaches the table through this alias, whose backward autograd's engine runs after the lookup's (it
    runs the latest-made ready node first, and this node is older than the lookup). So the sparse rows
    arrive first and the dense gradient, arriving second, absorbs them in place (autograd's input
    buffer: dense.add_(sparse)). BERT-base: one 94 MB gradient, not two, and steps 3-8% faster in
    interleaved A/B runs (3738 -> 3519 ms alone; 3888 -> 3574 ms beside transformers, medians of 8). Were the order ever different, the sum would only be
    slower (dense + sparse out of place), never different; a backward without the decoder (NSP loss
    alone) leaves a sparse .grad, which ``_densify_grad`` turns dense.
    """
    return _TableAlias.apply(word_embeddings)


def _densify_grad(parameter: torch.Tensor) -> None:
    """Post-accumulate hook: a sparse .grad (the lookup's rows alone) becomes dense before anything reads it."""
    if parameter.grad is not None and parameter.grad.is_sparse:
        parameter.grad = parameter.grad.to_dense()


def _plain_embedding(module: nn.Module) -> bool:
    return (type(module) is nn.Embedding and module.padding_idx is None and module.max_norm is None
            and not module.scale_grad_by_freq and not module.sparse)


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


class _VocabMajorDecoderCrossEntropy(torch.autograd.Function):
    """The tied decoder and the MLM cross-entropy in one step, over logits stored vocab-major in a buffer.

    forward: logits [V, N] = table[:V] @ x^T + bias[:V] written into ``buffer`` (MKL runs this
    orientation ~1.7x faster than x @ table^T for BERT-mini's [640, 256] x [256, 30522]), then turned
    into e = exp(logits - max) in place (``softmax_cross_entropy``); backward: e becomes d loss / d logits
    in place, then grad_x = e^T @ table[:V] and the padded table/bias gradients. One [V, N] tensor for
    the whole step, and the same memory every step: a fresh 78 MB allocation is mmap'ed and page-faulted
    in anew each time (two per step before, ~40k faults, ~40 ms of a ~0.8 s BERT-mini step).
    ``FusedDecoderCrossEntropy`` only hands out a buffer no pending backward still needs; should that
    ever fail, the buffer is saved for backward, so autograd's version check raises "modified by an
    inplace operation" instead of a wrong gradient being computed.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, table: torch.Tensor, bias: torch.Tensor, labels: torch.Tensor,
                vocab: int, buffer: torch.Tensor, owner: "FusedDecoderCrossEntropy") -> torch.Tensor:
        # x [N, H], table [V_padded, H], bias [V_padded], labels [N] (< 0 = ignore), buffer flat >= V * N
        logits = buffer[:vocab * x.shape[0]].view(vocab, x.shape[0])  # [V, N]
        torch.addmm(bias[:vocab, None], table[:vocab], x.t(), out=logits)
        loss, saved = softmax_cross_entropy(logits, labels, class_dim=0, in_place=True)
        ctx.save_for_backward(x, table, *saved)
        ctx.consumed = False
        if buffer is owner.buffer:
            owner.user = weakref.ref(ctx)  # dies with the graph (or right away under no_grad)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        ctx.consumed = True  # the buffer is free again once this backward has read it
        x, table, *saved = ctx.saved_tensors
        grad_logits = softmax_cross_entropy_grad(grad, saved, class_dim=0)  # [V, N], in the buffer
        grad_x = grad_logits.t() @ table[:grad_logits.shape[0]] if ctx.needs_input_grad[0] else None
        grad_table, grad_bias = padded_table_gradients(grad_logits, x, table, ctx.needs_input_grad[1],
                                                       ctx.needs_input_grad[2])
        return grad_x, grad_table, grad_bias, None, None, None, None


class FusedDecoderCrossEntropy:
    """Drop-in for ``pretraining.modeling.decoder_cross_entropy`` (the MLM head's ``loss_fn``) on CPU:
    ``_VocabMajorDecoderCrossEntropy`` over its own logits buffer, grown as needed and reused.

    Only the labelled rows go in: unused prediction slots (label < 0; ~9% of a phase-1 batch, as 128 *
    15% rounds to 19 of 20 slots) would cost decoder matmul time for nothing. Their count is rounded up
    to a multiple of 8 with ignored rows, as MKL is much slower for a [V, N] output whose N is not
    (83 ms against 53 ms for N = 570 and 576). Under autocast it defers to the default (bf16 matmuls).
    """

    def __init__(self):
        self.buffer: Optional[torch.Tensor] = None
        self.user: Callable[[], Optional[object]] = lambda: None  # weakref to the ctx of the buffer's last forward

    def __call__(self, x: torch.Tensor, table: torch.Tensor, bias: torch.Tensor, labels: torch.Tensor,
                 vocab: int) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type) or x.dtype != torch.float32:
            return decoder_cross_entropy(x, table, bias, labels, vocab)
        rows = torch.nonzero(labels >= 0).squeeze(1)  # [n]
        padding = -rows.numel() % 8
        if padding:  # ignored rows (label -100) fill up to a multiple of 8
            ignored = torch.nonzero(labels < 0).squeeze(1)[:padding]
            rows = torch.cat([rows, ignored])
        if rows.numel() < labels.numel():
            x, labels = x.index_select(0, rows), labels.index_select(0, rows)  # [n8, H], [n8]
        return _VocabMajorDecoderCrossEntropy.apply(x, table, bias, labels, vocab,
                                                    self._free_buffer(vocab * x.shape[0], x.device), self)

    def _free_buffer(self, size: int, device: torch.device) -> torch.Tensor:
        """The reused buffer, unless a graph whose backward has not run yet still holds it (say, two
        losses computed before either backward): then a fresh one for this call."""
        user = self.user()
        if user is not None and not user.consumed:
            return torch.empty(size, dtype=torch.float32, device=device)
        if self.buffer is None or self.buffer.numel() < size or self.buffer.device != device:
            self.buffer = torch.empty(size, dtype=torch.float32, device=device)
        return self.buffer


def use_cpu_kernels(model: nn.Module) -> int:
    """Swap the stand-ins into ``model`` in place; returns how many modules changed."""
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, name, BitsDropout(child.p).train(child.training))
                swapped += 1
            elif _plain_embedding(child):  # the same Parameter, a faster backward
                lookup = IndexAddEmbedding(child.num_embeddings, child.embedding_dim, device="meta")
                lookup.weight = child.weight
                setattr(module, name, lookup.train(child.training))
                swapped += 1
            elif type(child) is nn.Linear and onednn_available():  # the same Parameters, oneDNN's matmul
                linear = OneDnnLinear(child.in_features, child.out_features, bias=child.bias is not None,
                                      device="meta")
                linear.weight, linear.bias = child.weight, child.bias
                setattr(module, name, linear.train(child.training))
                swapped += 1
        if getattr(module, "attention_fn", None) is F.scaled_dot_product_attention:
            module.attention_fn = attention_with_bits_dropout
            swapped += 1
        if getattr(module, "linear_fn", None) is F.linear and onednn_available():
            module.linear_fn = onednn_linear
            swapped += 1
        if getattr(module, "loss_fn", None) is decoder_cross_entropy:  # the MLM head
            module.loss_fn = FusedDecoderCrossEntropy()
            swapped += 1
    for module in model.modules():  # after the loop above: the word embeddings are IndexAddEmbedding by now
        if getattr(module, "decoder_table_fn", None) is decoder_table:  # BertForPreTraining: the tied table
            lookup = module.bert.embeddings.word_embeddings
            if isinstance(lookup, IndexAddEmbedding):
                module.decoder_table_fn = tied_table_alias
                lookup.sparse_rows = True
                lookup.weight.register_post_accumulate_grad_hook(_densify_grad)
                swapped += 1
    return swapped
