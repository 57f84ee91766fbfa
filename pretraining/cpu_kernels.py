"""CPU kernels for eager pre-training, kept where each earns its keep; ``use_cpu_kernels`` puts them in.

Each is swapped in as a module (from outside the model) or as a ``ModelKernels`` entry (the model's one
extension point), and each can be left out by name (``without``) so that its share of a training step
can be measured against the plain path (``benchmarks/pretraining_throughput.py --without NAME``):

  dropout    ``nn.Dropout`` -> ``BitsDropout``. ATen's CPU dropout draws one Bernoulli sample per element
             from a serial generator; here the keep mask compares the 16-bit lanes of random 64-bit words
             with a threshold (4 elements per draw, keep probability within 1/65536 of 1 - p).
  attention  ``ModelKernels.attention`` with ``attention_with_bits_dropout`` as its masked backend: with
             dropout on, SDPA falls back to its math path with ATen's dropout on CPU; this is that math
             path with the bits mask (without dropout it is SDPA itself).
  linear     ``nn.Linear`` -> ``OneDnnLinear`` and ``ModelKernels.linear`` -> ``onednn_linear``: forward and
             input gradient through oneDNN's fp32 inner product, faster than MKL's sgemm for BERT's
             shapes on AVX-512 AMD EPYC, slower on AVX2-only ones: by default only where ATen runs
             AVX-512 kernels; the weight gradient stays on MKL (``pretraining.onednn_linear``).
  mlm_loss   ``ModelKernels.mlm_loss`` -> ``FusedDecoderCrossEntropy``: decoder and cross-entropy in one
             autograd function, only over the labelled rows and the real vocab rows, vocab-major logits
             (MKL's faster orientation) in one buffer reused every step (no fresh page-faulted [V, N]
             tensors). fp32 only: the padded, aligned decoder of the default serves bf16.

The random draws come from torch's default CPU generator, so ``torch.manual_seed`` and the checkpointed
RNG state make runs reproducible and resumable exactly; only the masks differ from ATen's. Eager CPU
only: graph mode lets the compiler generate its own kernels, and accelerators have fused ones already.
"""
from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Callable, Collection, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pretraining.losses import decoder_cross_entropy, softmax_cross_entropy, softmax_cross_entropy_grad
from pretraining.modeling import BertForPreTraining
from pretraining.onednn_linear import OneDnnLinear, onednn_available, onednn_linear, onednn_linear_pays_off

KERNEL_NAMES = ("dropout", "attention", "linear", "mlm_loss")
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
    else:  # the mask as an additive bias that the matmul adds for free: 0 = attend, -inf = masked
        bias = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~attn_mask, float("-inf"))
        bias = bias.expand(batch, heads, *bias.shape[-2:]).reshape(batch * heads, *bias.shape[-2:])  # [B*h, 1|Q, L]
        scores = torch.baddbmm(bias, q3, k3.transpose(1, 2), alpha=scale)
    probs = bits_dropout(torch.softmax(scores, dim=-1), dropout_p)
    return torch.bmm(probs, v3).view(batch, heads, queries, head_dim)


def padded_table_gradients(grad_vn: torch.Tensor, x_2d: torch.Tensor, table: torch.Tensor, want_table: bool,
                           want_bias: bool) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of the padded table [V_padded, H] and bias [V_padded] from d loss / d logits over the
    real vocab: grad_vn [V, N] (any strides), x_2d [N, H]. The weight-gradient matmul writes its V rows
    straight into the padded buffer and only the padding rows are zeroed (no zero-fill and copy)."""
    vocab = grad_vn.shape[0]
    grad_table = grad_bias = None
    if want_table:
        grad_table = table.new_empty(table.shape)
        torch.mm(grad_vn, x_2d, out=grad_table[:vocab])
        grad_table[vocab:].zero_()
    if want_bias:
        grad_bias = table.new_zeros(table.shape[0])
        grad_bias[:vocab] = grad_vn.sum(1)
    return grad_table, grad_bias


class _VocabMajorDecoderCrossEntropy(torch.autograd.Function):
    """The tied decoder and the MLM cross-entropy in one step, over logits stored vocab-major in a buffer.

    forward: logits [V, N] = table[:V] @ x^T + bias[:V] written into ``buffer`` (MKL runs this
    orientation faster than x @ table^T for BERT's decoder shapes), then turned into
    e = exp(logits - max) in place (``softmax_cross_entropy``); backward: e becomes d loss / d logits
    in place, then grad_x = e^T @ table[:V] and the padded table/bias gradients. One [V, N] tensor for
    the whole step, and the same memory every step (a fresh one would be mmap'ed and page-faulted in anew).
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
    """Drop-in for ``pretraining.losses.decoder_cross_entropy`` (``ModelKernels.mlm_loss``) on CPU:
    ``_VocabMajorDecoderCrossEntropy`` over its own logits buffer, grown as needed and reused.

    Only the labelled rows go in: unused prediction slots (label < 0; ~9% of a phase-1 batch, as 128 *
    15% rounds to 19 of 20 slots) would cost decoder matmul time for nothing. Their count is rounded up
    to a multiple of 8 with ignored rows, as MKL is much slower for a [V, N] output whose N is not.
    Under autocast, or for other dtypes, it defers to the default (bf16 matmuls).
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


def kernels_in_use(without: Collection[str] = (), linear: Optional[bool] = None) -> Tuple[str, ...]:
    """The names of ``KERNEL_NAMES`` that ``use_cpu_kernels`` puts in on this machine: all but ``without``;
    ``linear`` only with oneDNN in this torch build and, unless ``linear=True`` forces it (to measure its
    share anyway), where it pays off (``onednn_linear_pays_off``)."""
    unknown = set(without) - set(KERNEL_NAMES)
    if unknown:
        raise ValueError(f"unknown CPU kernel(s) {', '.join(sorted(unknown))}; choose from {', '.join(KERNEL_NAMES)}")
    wanted = onednn_linear_pays_off() if linear is None else linear
    return tuple(name for name in KERNEL_NAMES if name not in without
                 and (name != "linear" or (wanted and onednn_available())))


def use_cpu_kernels(model: BertForPreTraining, without: Collection[str] = (), linear: Optional[bool] = None) -> int:
    """Put the CPU kernels into ``model`` in place, those of ``kernels_in_use(without, linear)``; returns how
    many modules and kernel entries changed. Parameters and state-dict keys stay the same."""
    chosen = kernels_in_use(without, linear)
    use_linear = "linear" in chosen
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout and "dropout" in chosen:
                setattr(module, name, BitsDropout(child.p).train(child.training))
                swapped += 1
            elif type(child) is nn.Linear and use_linear:  # the same Parameters, oneDNN's matmul
                replacement = OneDnnLinear(child.in_features, child.out_features, bias=child.bias is not None,
                                           device="meta")
                replacement.weight, replacement.bias = child.weight, child.bias
                setattr(module, name, replacement.train(child.training))
                swapped += 1
    entries = {}
    if "attention" in chosen and model.kernels.attention.masked is F.scaled_dot_product_attention:
        entries["attention"] = dataclasses.replace(model.kernels.attention, masked=attention_with_bits_dropout)
    if use_linear and model.kernels.linear is F.linear:
        entries["linear"] = onednn_linear
    if "mlm_loss" in chosen and model.kernels.mlm_loss is decoder_cross_entropy:
        entries["mlm_loss"] = FusedDecoderCrossEntropy()
    model.kernels = dataclasses.replace(model.kernels, **entries)
    return swapped + len(entries)
