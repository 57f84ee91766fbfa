"""Pre-training losses: the tied MLM decoder + mean cross-entropy, NSP, and the accuracy counts.

The MLM cross-entropy never materialises log-probabilities (``MeanCrossEntropy``): exp(logits - max)
is computed once, kept, and turned into the gradient in backward. Unused masked-LM slots (position 0,
and every slot after the first 0, as the reference builds its labels) get label -100 and count nowhere.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

IGNORE = -100  # label of a slot that counts in no loss


def valid_mlm_slots(masked_lm_positions: torch.Tensor) -> torch.Tensor:
    """[B, P] bool: slots before the first 0 position (how the reference builds its MLM labels)."""
    return (masked_lm_positions != 0).long().cumprod(dim=1).bool()


def mlm_labels(masked_lm_ids: torch.Tensor, masked_lm_positions: torch.Tensor) -> torch.Tensor:
    """[B, P] long: the masked token ids in the valid slots, -100 (ignore) elsewhere."""
    return torch.where(valid_mlm_slots(masked_lm_positions), masked_lm_ids.long(), IGNORE)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, class_dim: int, in_place: bool):
    """Mean cross-entropy over the rows whose label is >= 0 (0 when there are none), and what its
    gradient needs: (loss, saved) for ``softmax_cross_entropy_grad``.

    logits [N, V] (class_dim 1) or [V, N] (class_dim 0), float; labels [N] long, < 0 = ignore.
    Fewer passes over the big logits than ``F.cross_entropy``: e = exp(logits - max) is computed once
    (into the logits themselves with in_place) and kept; log-probabilities are never built.
    """
    valid = labels >= 0
    count = valid.sum().clamp(min=1)
    target = labels.clamp(min=0).unsqueeze(class_dim)  # [N, 1] or [1, N]
    target_logit = logits.gather(class_dim, target).squeeze(class_dim)  # [N], read before logits change
    row_max = logits.amax(dim=class_dim, keepdim=True)
    exp_shifted = (logits.sub_(row_max) if in_place else torch.sub(logits, row_max)).exp_()  # in [0, 1]
    sum_exp = exp_shifted.sum(dim=class_dim)  # [N], >= 1
    log_norm = row_max.squeeze(class_dim) + sum_exp.log()  # log-sum-exp [N]
    loss = ((log_norm - target_logit) * valid).sum() / count
    return loss, (exp_shifted, sum_exp, target, valid, count)


def softmax_cross_entropy_grad(grad: torch.Tensor, saved, class_dim: int) -> torch.Tensor:
    """d loss / d logits = (softmax - one-hot) * grad / count on the labelled rows, written into the kept
    e = exp(logits - max) (so it can run once per forward)."""
    exp_shifted, sum_exp, target, valid, count = saved
    row_scale = grad * valid / count  # [N]: d loss / d row, 0 for ignored rows
    grad_logits = exp_shifted.mul_((row_scale / sum_exp).unsqueeze(class_dim))  # softmax * row_scale
    grad_logits.scatter_add_(class_dim, target, -row_scale.to(grad_logits.dtype).unsqueeze(class_dim))
    return grad_logits


class MeanCrossEntropy(torch.autograd.Function):
    """``softmax_cross_entropy`` of [N, V] logits under autograd: the same value as
    ``F.cross_entropy(..., ignore_index=-100)``; the logits themselves can be freed after the forward."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # logits [N, V] float; labels [N] long, < 0 = ignore
        loss, saved = softmax_cross_entropy(logits, labels, class_dim=1, in_place=False)
        ctx.save_for_backward(*saved)
        ctx.consumed = False
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        if ctx.consumed:
            raise RuntimeError("pretraining MLM loss: backward can run only once per forward")
        ctx.consumed = True
        return softmax_cross_entropy_grad(grad, ctx.saved_tensors, class_dim=1), None


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.element_size() < 4 else tensor  # bf16/fp16 logits (autocast)


def tied_decoder_logits(x: torch.Tensor, table: torch.Tensor, bias: torch.Tensor, vocab: int) -> torch.Tensor:
    """x [..., H], table [V_padded, H], bias [V_padded] -> logits [..., V_padded], -inf in the padding columns.

    The matmul runs over all V_padded rows: a multiple of 8, so that bf16 rows are 16-byte aligned as
    cuBLASLt wants (30522 is not; 30528 is), and its table gradient comes out whole from autograd
    (slicing the table would zero-fill and copy a [V_padded, H] gradient). The padding columns are
    masked through the bias: -inf, so softmax gives them 0, they are never predicted, and the padding
    rows of the table and bias get exactly zero gradient.
    """
    padding = torch.arange(bias.shape[0], device=bias.device) >= vocab  # [V_padded]
    return F.linear(x, table, bias.masked_fill(padding, float("-inf")))


def decoder_cross_entropy(x: torch.Tensor, table: torch.Tensor, bias: torch.Tensor, labels: torch.Tensor,
                          vocab: int) -> torch.Tensor:
    """Mean MLM cross-entropy of the tied decoder's logits: x [N, H], table [V_padded, H], bias [V_padded],
    labels [N] (< 0 = ignore) -> 0-dim fp32. ``ModelKernels.mlm_loss`` by default."""
    return MeanCrossEntropy.apply(at_least_fp32(tied_decoder_logits(x, table, bias, vocab)), labels)


def nsp_labels(next_sentence_labels: torch.Tensor, next_sentence_weights: Optional[torch.Tensor]) -> torch.Tensor:
    """Flat long labels: [B] (unpacked), or [B, K] with -100 where the weight is 0 (an empty pack slot)."""
    labels = next_sentence_labels.long()
    if next_sentence_weights is not None:
        labels = labels.masked_fill(next_sentence_weights == 0, IGNORE)
    return labels.reshape(-1)


def nsp_cross_entropy(nsp_logits: torch.Tensor, next_sentence_labels: torch.Tensor,
                      next_sentence_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean NSP cross-entropy over the real samples: nsp_logits [B, 2] and labels [B], or (packed)
    [B, K, 2], [B, K] and weights [B, K] (0 = empty slot) -> 0-dim fp32."""
    labels = nsp_labels(next_sentence_labels, next_sentence_weights)  # [B] or [B * K]
    return F.cross_entropy(at_least_fp32(nsp_logits.reshape(-1, 2)), labels, ignore_index=IGNORE)


def pretraining_loss(mlm_logits: torch.Tensor, masked_lm_ids: torch.Tensor, masked_lm_positions: torch.Tensor,
                     nsp_logits: torch.Tensor, next_sentence_labels: torch.Tensor,
                     next_sentence_weights: Optional[torch.Tensor] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mlm_loss, nsp_loss) from the logits: mean CE over the valid masked slots + mean NSP CE over
    the real samples (fp32). Packed batches pass next_sentence_weights [B, K]."""
    labels = mlm_labels(masked_lm_ids, masked_lm_positions).reshape(-1)  # [B * P]
    mlm_loss = MeanCrossEntropy.apply(at_least_fp32(mlm_logits.reshape(-1, mlm_logits.shape[-1])), labels)
    nsp_loss = nsp_cross_entropy(nsp_logits, next_sentence_labels, next_sentence_weights)
    return mlm_loss + nsp_loss, mlm_loss, nsp_loss


def mlm_accuracy(mlm_logits: torch.Tensor, masked_lm_ids: torch.Tensor,
                 masked_lm_positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(correct, total) over the valid masked slots, as tensors so callers can all-reduce before dividing."""
    valid = valid_mlm_slots(masked_lm_positions)
    correct = (mlm_logits.argmax(dim=-1) == masked_lm_ids.long()) & valid
    return correct.sum(), valid.sum()


def nsp_accuracy(nsp_logits: torch.Tensor, next_sentence_labels: torch.Tensor,
                 next_sentence_weights: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(correct, total) over the real samples ([B] or, packed, [B, K] with weights [B, K])."""
    labels = nsp_labels(next_sentence_labels, next_sentence_weights)
    real = labels != IGNORE
    correct = (nsp_logits.reshape(-1, 2).argmax(dim=-1) == labels) & real
    return correct.sum(), real.sum()
