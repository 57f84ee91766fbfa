"""BERT for pre-training: encoder + masked-LM head (tied, vocab padded to a multiple of 8) + NSP head.

Parameter names follow ``transformers.BertForPreTraining`` (``bert.embeddings...``,
``bert.encoder.layer.N.attention.self.query...``, ``cls.predictions...``) so checkpoints convert to and
from Hugging Face by renaming nothing: ``pretraining.hf_conversion`` only trims or pads the vocab rows
and adds the tied decoder entries that this model does not store twice.

What makes it fast (DESIGN.md, "Performance design"):
  * the MLM head (transform + vocab projection, the largest matmul of the model) runs only on the
    gathered ``masked_lm_positions`` (20 of 128 positions in phase 1) instead of every position;
  * so does the last encoder layer (its queries, attention output and FFN; keys and values still
    cover every position): nothing else reads its other rows, so the result is exact;
  * attention is ``torch.nn.functional.scaled_dot_product_attention`` with a boolean key mask
    (or no mask at all when the batch has no padding, which lets SDPA pick its fastest kernel);
  * query/key/value run as one matmul (the three weights are concatenated on the fly, so the
    parameters, their names and the per-tensor LAMB trust ratios stay those of the reference);
  * position embeddings are a slice of the table, not a lookup (no index backward);
  * the MLM cross-entropy never materialises log-probabilities (``_MeanCrossEntropy``).

The decoder is tied structurally: the MLM head multiplies by ``word_embeddings.weight`` itself, so the
tie cannot be broken by moving the module between devices (a trap of the reference).
This module knows nothing of devices, precision or DDP; ``central`` applies them.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pretraining.bert_config import BertConfig

VOCAB_MULTIPLE = 8  # tensor cores / matrix engines like matmul sizes that are multiples of 8


def padded_vocab_size(vocab_size: int) -> int:
    return int(math.ceil(vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# bert_config.json "hidden_act" names (as Google/NVIDIA/HF spell them) -> functions.
ACTIVATIONS = {
    "gelu": F.gelu,  # exact (erf) GELU, what BERT uses
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act {name!r} is not supported; choose from {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(padded_vocab_size(config.vocab_size), config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        # input_ids, token_type_ids: [B, L] -> [B, L, H]
        seq_len = input_ids.shape[1]
        if seq_len > self.position_embeddings.num_embeddings:
            raise ValueError(f"sequence length {seq_len} exceeds max_position_embeddings "
                             f"{self.position_embeddings.num_embeddings}")
        positions = self.position_embeddings.weight[:seq_len]  # [L, H]: a slice, broadcast over the batch
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids) + positions
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(f"hidden_size {config.hidden_size} is not a multiple of "
                             f"num_attention_heads {config.num_attention_heads}")
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob
        # SDPA's signature; central.cpu_kernels swaps in a CPU version with a faster dropout.
        self.attention_fn = F.scaled_dot_product_attention
        # F.linear's signature, for the concatenated projections; central.cpu_kernels swaps in oneDNN's.
        self.linear_fn = F.linear

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor],
                queries: Optional[torch.Tensor] = None) -> torch.Tensor:
        # x: [B, L, H]; key_mask: [B, 1, 1, L] bool (True = attend) or None;
        # queries: [B, Q, H] rows of x whose output is wanted (None: all L) -> context [B, Q or L, H]
        batch, seq_len, hidden = x.shape
        head_dim = hidden // self.num_heads
        if queries is None:  # one [3H, H] matmul for q, k and v
            weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
            bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
            qkv = self.linear_fn(x, weight, bias).view(batch, seq_len, 3, self.num_heads, head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, L, head_dim]
        else:  # keys and values for every position, queries only where asked
            weight = torch.cat([self.key.weight, self.value.weight])  # [2H, H]
            kv = self.linear_fn(x, weight, torch.cat([self.key.bias, self.value.bias]))
            k, v = kv.view(batch, seq_len, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            q = self.query(queries).view(batch, -1, self.num_heads, head_dim).transpose(1, 2)  # [B, heads, Q, hd]
        context = self.attention_fn(
            q, k, v, attn_mask=key_mask, dropout_p=self.dropout_prob if self.training else 0.0)
        return context.transpose(1, 2).reshape(batch, -1, hidden)


class BertSelfOutput(nn.Module):
    """dense -> dropout -> residual add -> LayerNorm (used after attention and after the FFN)."""

    def __init__(self, in_features: int, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config.hidden_size, config)

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor],
                query_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        # query_index: [B, Q] positions whose output is wanted (None: all) -> [B, Q or L, H]
        if query_index is None:
            return self.output(self.self(x, key_mask), x)
        queries = torch.gather(x, 1, query_index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [B, Q, H]
        return self.output(self.self(x, key_mask, queries), queries)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertSelfOutput(config.intermediate_size, config)

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor],
                query_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.attention(x, key_mask, query_index)  # [B, Q or L, H]
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor],
                query_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        # Every layer but the last needs all L positions (they are the next layer's keys and values);
        # the last one only computes the rows in query_index. -> [B, Q or L, H]
        for number, layer in enumerate(self.layer):
            x = layer(x, key_mask, query_index if number == len(self.layer) - 1 else None)
        return x


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # [B, H] from the [CLS] token


class BertModel(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                output_positions: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> (sequence output [B, L, H], or [B, Q, H] at output_positions [B, Q]; pooled [CLS] [B, H]).

        With output_positions the last layer runs only for those rows and [CLS] (exact, and for
        pre-training 21 of 128 rows: the last layer's queries, attention output and FFN shrink ~6x).
        """
        hidden = self.embeddings(input_ids, token_type_ids)
        key_mask = key_mask_for_sdpa(attention_mask)
        if output_positions is None:
            hidden = self.encoder(hidden, key_mask)
            return hidden, self.pooler(hidden)
        cls_position = output_positions.new_zeros(output_positions.shape[0], 1)
        query_index = torch.cat([cls_position, output_positions.long()], dim=1)  # [B, 1 + Q]
        hidden = self.encoder(hidden, key_mask, query_index)  # [B, 1 + Q, H]
        return hidden[:, 1:], self.pooler(hidden)


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


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


def padded_table_gradients(grad_vn: torch.Tensor, x_2d: torch.Tensor, table: torch.Tensor, want_table: bool,
                           want_bias: bool) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of the padded table [V_padded, H] and bias [V_padded] from d loss / d logits.

    grad_vn [V, N] (any strides: row-major logits pass their gradient's transposed view), x_2d [N, H].
    The weight-gradient matmul writes its V rows straight into the padded buffer and only the padding
    rows are zeroed: slicing the table under autograd would zero-fill a fresh [V_padded, H] gradient and
    copy the [V, H] one into it (on CPU the fill alone was 5.5% of a BERT-base step).
    """
    vocab = grad_vn.shape[0]
    grad_table = grad_bias = None
    if want_table:
        x_2d = x_2d.to(grad_vn.dtype)  # autocast: compute in the logits' dtype
        grad_table = table.new_empty(table.shape)
        if grad_vn.dtype == table.dtype:
            torch.mm(grad_vn, x_2d, out=grad_table[:vocab])
        else:
            grad_table[:vocab] = grad_vn @ x_2d
        grad_table[vocab:].zero_()
    if want_bias:
        grad_bias = table.new_zeros(table.shape[0])
        grad_bias[:vocab] = grad_vn.sum(1)
    return grad_table, grad_bias


class _TiedDecoder(torch.autograd.Function):
    """logits = x @ table[:V]^T + bias[:V] over the real vocab, with gradients for the padded table and bias
    (``padded_table_gradients``: no [V_padded, H] zero-fill and copy per step)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, table: torch.Tensor, bias: torch.Tensor, vocab: int) -> torch.Tensor:
        # x [..., H], table [V_padded, H], bias [V_padded] -> logits [..., V]
        ctx.save_for_backward(x, table)
        return F.linear(x, table[:vocab], bias[:vocab])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, table = ctx.saved_tensors
        grad_2d = grad.reshape(-1, grad.shape[-1])  # [N, V]
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_2d @ table[:grad_2d.shape[1]].to(grad.dtype)).view(x.shape)
        grad_table, grad_bias = padded_table_gradients(grad_2d.t(), x.reshape(-1, x.shape[-1]), table,
                                                       ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        return grad_x, grad_table, grad_bias, None


def decoder_cross_entropy(x: torch.Tensor, table: torch.Tensor, bias: torch.Tensor, labels: torch.Tensor,
                          vocab: int) -> torch.Tensor:
    """Mean MLM cross-entropy of the tied decoder's logits: x [N, H], table [V_padded, H], bias [V_padded],
    labels [N] (< 0 = ignore) -> 0-dim fp32. The head's default ``loss_fn``; central.cpu_kernels swaps in
    a fused CPU version with the same signature."""
    return _MeanCrossEntropy.apply(_at_least_fp32(_TiedDecoder.apply(x, table, bias, vocab)), labels)


class BertLMPredictionHead(nn.Module):
    """transform -> tied decoder; the decoder weight is ``word_embeddings.weight`` (padded vocab).

    The decoder multiplies by the first ``vocab_size`` rows of the table (``_TiedDecoder``), so the
    logits never hold padding columns: slicing [N, V_padded] logits afterwards would make autograd
    zero-fill and copy a gradient of that size every step. ``loss`` goes from hidden states straight to
    the mean cross-entropy through ``loss_fn`` (``decoder_cross_entropy`` unless swapped).
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.vocab_size = config.vocab_size
        self.transform = BertPredictionHeadTransform(config)
        self.bias = nn.Parameter(torch.zeros(padded_vocab_size(config.vocab_size)))
        self.loss_fn = decoder_cross_entropy

    def forward(self, x: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        # x [..., H], decoder_weight [V_padded, H] -> logits [..., V] over the real vocab
        return _TiedDecoder.apply(self.transform(x), decoder_weight, self.bias, self.vocab_size)

    def loss(self, x: torch.Tensor, decoder_weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # x [N, H], labels [N] (< 0 = ignore) -> mean cross-entropy over the labelled rows (fp32, 0-dim)
        return self.loss_fn(self.transform(x), decoder_weight, self.bias, labels, self.vocab_size)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


def decoder_table(word_embeddings: torch.Tensor) -> torch.Tensor:
    """The MLM decoder's table: the word-embedding weight itself (BertForPreTraining's default
    ``decoder_table_fn``)."""
    return word_embeddings


class BertForPreTraining(nn.Module):
    """BERT with the masked-LM and next-sentence heads.

    forward(input_ids, token_type_ids, attention_mask, masked_lm_positions) -> (mlm_logits, nsp_logits);
    forward(..., masked_lm_positions, masked_lm_ids, next_sentence_labels) -> (loss, mlm_loss, nsp_loss),
    the losses of ``pretraining_loss`` without returning the logits (what training calls, so that a
    fused loss such as central.cpu_kernels' never has to hand its [N, V] logits back).

    Shapes: input_ids / token_type_ids / attention_mask [B, L] (attention_mask may be None: no padding);
    masked_lm_positions / masked_lm_ids [B, P] (0 in unused slots: position 0 is always [CLS] and never
    masked); next_sentence_labels [B]; mlm_logits [B, P, vocab_size] with the real vocab (the decoder
    skips the padding rows, so they can never be predicted); nsp_logits [B, 2].
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config)
        # Gives the tied decoder its table; called before the encoder runs (central.cpu_kernels swaps in an
        # alias whose early place in the autograd graph matters, see tied_table_alias there).
        self.decoder_table_fn = decoder_table
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # BERT's initialisation: N(0, initializer_range) weights, zero biases, LayerNorm 1 / 0.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if isinstance(module, BertLMPredictionHead):
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                masked_lm_positions: torch.Tensor, masked_lm_ids: Optional[torch.Tensor] = None,
                next_sentence_labels: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, ...]:
        if (masked_lm_ids is None) != (next_sentence_labels is None):
            raise ValueError("pass both masked_lm_ids and next_sentence_labels (losses) or neither (logits)")
        table = self.decoder_table_fn(self.bert.embeddings.word_embeddings.weight)  # [V_padded, H], tied decoder
        # Only the masked positions go through the last layer and the head: [B, P, H], not [B, L, H].
        masked_hidden, pooled = self.bert(input_ids, token_type_ids, attention_mask, masked_lm_positions)
        nsp_logits = self.cls.seq_relationship(pooled)  # [B, 2]
        if masked_lm_ids is None:
            return self.cls.predictions(masked_hidden, table), nsp_logits  # [B, P, V], [B, 2]
        labels = mlm_labels(masked_lm_ids, masked_lm_positions)  # [B, P], -100 in unused slots
        mlm_loss = self.cls.predictions.loss(masked_hidden.reshape(-1, masked_hidden.shape[-1]), table,
                                             labels.reshape(-1))
        nsp_loss = nsp_cross_entropy(nsp_logits, next_sentence_labels)
        return mlm_loss + nsp_loss, mlm_loss, nsp_loss


def valid_mlm_slots(masked_lm_positions: torch.Tensor) -> torch.Tensor:
    """[B, P] bool: slots before the first 0 position (how the reference builds its MLM labels)."""
    return (masked_lm_positions != 0).long().cumprod(dim=1).bool()


def mlm_labels(masked_lm_ids: torch.Tensor, masked_lm_positions: torch.Tensor) -> torch.Tensor:
    """[B, P] long: the masked token ids in the valid slots, -100 (ignore) elsewhere."""
    return torch.where(valid_mlm_slots(masked_lm_positions), masked_lm_ids.long(), -100)


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
    exp_shifted = (logits.sub_(row_max) if in_place else torch.sub(logits, row_max)).exp_()  # in (0, 1]
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


class _MeanCrossEntropy(torch.autograd.Function):
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


def _at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.element_size() < 4 else tensor  # bf16/fp16 logits (autocast)


def nsp_cross_entropy(nsp_logits: torch.Tensor, next_sentence_labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(_at_least_fp32(nsp_logits), next_sentence_labels.long().reshape(-1))


def pretraining_loss(mlm_logits: torch.Tensor, masked_lm_ids: torch.Tensor, masked_lm_positions: torch.Tensor,
                     nsp_logits: torch.Tensor, next_sentence_labels: torch.Tensor
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mlm_loss, nsp_loss) from the logits: mean CE over the valid masked slots + mean NSP CE (fp32)."""
    labels = mlm_labels(masked_lm_ids, masked_lm_positions).reshape(-1)  # [B * P]
    mlm_loss = _MeanCrossEntropy.apply(_at_least_fp32(mlm_logits.reshape(-1, mlm_logits.shape[-1])), labels)
    nsp_loss = nsp_cross_entropy(nsp_logits, next_sentence_labels)
    return mlm_loss + nsp_loss, mlm_loss, nsp_loss


def mlm_accuracy(mlm_logits: torch.Tensor, masked_lm_ids: torch.Tensor,
                 masked_lm_positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(correct, total) over the valid masked slots, as tensors so callers can all-reduce before dividing."""
    valid = valid_mlm_slots(masked_lm_positions)
    correct = (mlm_logits.argmax(dim=-1) == masked_lm_ids.long()) & valid
    return correct.sum(), valid.sum()


def nsp_accuracy(nsp_logits: torch.Tensor, next_sentence_labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    correct = nsp_logits.argmax(dim=-1) == next_sentence_labels.long().reshape(-1)
    return correct.sum(), torch.tensor(correct.numel(), device=correct.device)
