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
  * attention goes through one dispatch (``pretraining.attention``): SDPA with a boolean key mask, or
    no mask at all when the caller passes attention_mask=None for an unpadded batch;
  * packed batches (several samples end to end per row, Habana's format) waste no slots on padding:
    per-sample positions, attention confined to each sample (a block-diagonal mask, or a varlen kernel
    over per-sample offsets where the runtime provides one), NSP at each sample's [CLS];
  * query/key/value run as one matmul (the three weights are concatenated on the fly, so the
    parameters, their names and the per-tensor LAMB trust ratios stay those of the reference);
  * position embeddings are a slice of the table, not a lookup (no index backward);
  * the MLM cross-entropy never materialises log-probabilities (``pretraining.losses``).

One extension point: ``ModelKernels``, held by ``BertForPreTraining.kernels`` and handed down to the
layers in forward, names the three computations that a device may run by other means (attention, the
concatenated projections, the decoder + MLM loss). The defaults are plain torch and run everywhere;
``pretraining.cpu_kernels`` builds the CPU set. Swapping whole modules (nn.Dropout, nn.Linear) needs
no hook here and is done from outside.

The decoder is tied structurally: the MLM head multiplies by ``word_embeddings.weight`` itself, so the
tie cannot be broken by moving the module between devices (a trap of the reference).
This module knows nothing of devices, precision or DDP; the runtime applies them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pretraining.attention import AttentionDispatch, AttentionLayout
from pretraining.bert_config import BertConfig
from pretraining.losses import decoder_cross_entropy, mlm_labels, nsp_cross_entropy, tied_decoder_logits

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


@dataclass(frozen=True)
class ModelKernels:
    """What the model computes through replaceable functions (its one extension point).

    attention  the attention dispatch: builds each batch's layout, runs every layer's attention
    linear     ``F.linear``'s signature, for the projections computed from concatenated weights (q/k/v)
    mlm_loss   ``decoder_cross_entropy``'s signature: hidden states [N, H], table, bias, labels [N], vocab
               -> mean MLM cross-entropy (the tied decoder and the loss together, so a fused version
               never has to hand back its [N, V] logits)
    """
    attention: AttentionDispatch = field(default_factory=AttentionDispatch)
    linear: Callable[..., torch.Tensor] = F.linear
    mlm_loss: Callable[..., torch.Tensor] = decoder_cross_entropy


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(padded_vocab_size(config.vocab_size), config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
                position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        # input_ids, token_type_ids, position_ids (None: 0..L-1 in every row): [B, L] -> [B, L, H]
        seq_len = input_ids.shape[1]
        if seq_len > self.position_embeddings.num_embeddings:
            raise ValueError(f"sequence length {seq_len} exceeds max_position_embeddings "
                             f"{self.position_embeddings.num_embeddings}")
        if position_ids is None:
            positions = self.position_embeddings.weight[:seq_len]  # [L, H]: a slice, broadcast over the batch
        else:
            positions = self.position_embeddings(position_ids)  # [B, L, H]: packed rows restart per sample
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

    def forward(self, x: torch.Tensor, layout: AttentionLayout, kernels: ModelKernels,
                queries: Optional[torch.Tensor] = None) -> torch.Tensor:
        # x: [B, L, H]; queries: [B, Q, H] rows of x whose output is wanted (None: all L), with the
        # matching layout -> context [B, Q or L, H]
        batch, seq_len, hidden = x.shape
        head_dim = hidden // self.num_heads
        if queries is None:  # one [3H, H] matmul for q, k and v
            weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
            bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
            qkv = kernels.linear(x, weight, bias).view(batch, seq_len, 3, self.num_heads, head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, L, head_dim]
        else:  # keys and values for every position, queries only where asked
            weight = torch.cat([self.key.weight, self.value.weight])  # [2H, H]
            kv = kernels.linear(x, weight, torch.cat([self.key.bias, self.value.bias]))
            k, v = kv.view(batch, seq_len, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            q = self.query(queries).view(batch, -1, self.num_heads, head_dim).transpose(1, 2)  # [B, heads, Q, hd]
        context = kernels.attention(q, k, v, layout, self.dropout_prob if self.training else 0.0)
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

    def forward(self, x: torch.Tensor, layout: AttentionLayout, kernels: ModelKernels,
                query_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        # query_index: [B, Q] positions whose output is wanted (None: all) -> [B, Q or L, H]
        if query_index is None:
            return self.output(self.self(x, layout, kernels), x)
        queries = torch.gather(x, 1, query_index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [B, Q, H]
        return self.output(self.self(x, layout, kernels, queries), queries)


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

    def forward(self, x: torch.Tensor, layout: AttentionLayout, kernels: ModelKernels,
                query_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.attention(x, layout, kernels, query_index)  # [B, Q or L, H]
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, layout: AttentionLayout, kernels: ModelKernels,
                query_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        # Every layer but the last needs all L positions (they are the next layer's keys and values);
        # the last one only computes the rows in query_index. -> [B, Q or L, H]
        for layer in self.layer[:-1]:
            x = layer(x, layout, kernels)
        if query_index is None:
            return self.layer[-1](x, layout, kernels)
        return self.layer[-1](x, kernels.attention.for_queries(layout, query_index), kernels, query_index)


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(cls_hidden))  # [..., H] at [CLS] tokens -> [..., H]


class BertModel(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.attention_dropout = config.attention_probs_dropout_prob

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                kernels: ModelKernels, output_positions: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, cls_positions: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> (sequence output [B, L, H], or [B, Q, H] at output_positions [B, Q];
        pooled [CLS] [B, H], or [B, K, H] for a packed batch).

        Unpacked: attention_mask [B, L] 1 = token / 0 = padding, or None (no padding). Packed (given
        cls_positions [B, K], the [CLS] position of each sample slot): attention_mask holds each token's
        sample number 1..K (0 = padding) and position_ids [B, L] restart at 0 for every sample.
        With output_positions the last layer runs only for those rows and the [CLS] rows (exact, and for
        pre-training 21 of 128 rows: the last layer's queries, attention output and FFN shrink ~6x).
        """
        packed = cls_positions is not None
        hidden = self.embeddings(input_ids, token_type_ids, position_ids)
        layout = kernels.attention.layout(attention_mask, cls_positions.shape[1] if packed else None,
                                          self.attention_dropout if self.training else 0.0)
        batch = input_ids.shape[0]
        cls_index = cls_positions.long() if packed else input_ids.new_zeros(batch, 1, dtype=torch.long)  # [B, C]
        if output_positions is None:
            hidden = self.encoder(hidden, layout, kernels)  # [B, L, H]
            cls_hidden = torch.gather(hidden, 1, cls_index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        else:
            query_index = torch.cat([cls_index, output_positions.long()], dim=1)  # [B, C + Q]
            hidden = self.encoder(hidden, layout, kernels, query_index)  # [B, C + Q, H]
            cls_hidden, hidden = hidden.split([cls_index.shape[1], output_positions.shape[1]], dim=1)
        pooled = self.pooler(cls_hidden)  # [B, C, H]
        return hidden, (pooled if packed else pooled[:, 0])


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """transform -> tied decoder; the decoder weight is ``word_embeddings.weight`` (padded vocab).

    The decoder multiplies by the whole padded table with the padding columns masked to -inf
    (``pretraining.losses.tied_decoder_logits``); the logits handed out are the real-vocab columns.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.vocab_size = config.vocab_size
        self.transform = BertPredictionHeadTransform(config)
        self.bias = nn.Parameter(torch.zeros(padded_vocab_size(config.vocab_size)))

    def forward(self, x: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        # x [..., H], decoder_weight [V_padded, H] -> logits [..., V] over the real vocab (a view)
        return tied_decoder_logits(self.transform(x), decoder_weight, self.bias, self.vocab_size)[..., :self.vocab_size]

    def loss(self, x: torch.Tensor, decoder_weight: torch.Tensor, labels: torch.Tensor,
             kernels: ModelKernels) -> torch.Tensor:
        # x [N, H], labels [N] (< 0 = ignore) -> mean cross-entropy over the labelled rows (fp32, 0-dim)
        return kernels.mlm_loss(self.transform(x), decoder_weight, self.bias, labels, self.vocab_size)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


class BertForPreTraining(nn.Module):
    """BERT with the masked-LM and next-sentence heads.

    forward(input_ids, token_type_ids, attention_mask, masked_lm_positions) -> (mlm_logits, nsp_logits);
    forward(..., masked_lm_positions, masked_lm_ids, next_sentence_labels) -> (loss, mlm_loss, nsp_loss),
    the losses of ``pretraining.losses.pretraining_loss`` without returning the logits (what training
    calls, so that a fused ``kernels.mlm_loss`` never has to hand its [N, V] logits back).

    Unpacked batch: input_ids / token_type_ids / attention_mask [B, L] (attention_mask 1 = token,
    0 = padding; None for a batch without padding); masked_lm_positions / masked_lm_ids [B, P] (0 in
    unused slots: position 0 is always [CLS] and never masked); next_sentence_labels [B];
    mlm_logits [B, P, vocab_size] over the real vocab (the padding columns are masked, never predicted);
    nsp_logits [B, 2].

    Packed batch (Habana's format: up to K samples end to end per row), given by the keyword arguments:
    attention_mask [B, L] the sample number 1..K of each token (0 = padding), position_ids [B, L]
    restarting at 0 for every sample, next_sentence_positions [B, K] each sample's [CLS] position,
    next_sentence_weights [B, K] 1 for a real sample and 0 for an empty slot; masked_lm_positions /
    masked_lm_ids [B, P'] offsets into the row; next_sentence_labels [B, K]; nsp_logits [B, K, 2]. Each
    sample gets the computation it would get unpacked (its own positions, attention confined to it, NSP
    at its [CLS]); MLM is the mean over every masked token of the batch and NSP over the real samples.
    ``kernels`` (a ``ModelKernels``; plain torch by default) may be replaced at any time.
    """

    def __init__(self, config: BertConfig, kernels: Optional[ModelKernels] = None):
        super().__init__()
        self.config = config
        self.kernels = kernels or ModelKernels()
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config)
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
                next_sentence_labels: Optional[torch.Tensor] = None, *, position_ids: Optional[torch.Tensor] = None,
                next_sentence_positions: Optional[torch.Tensor] = None,
                next_sentence_weights: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, ...]:
        if (masked_lm_ids is None) != (next_sentence_labels is None):
            raise ValueError("pass both masked_lm_ids and next_sentence_labels (losses) or neither (logits)")
        packed = next_sentence_positions is not None
        if packed and (attention_mask is None or position_ids is None
                       or (next_sentence_labels is not None and next_sentence_weights is None)):
            raise ValueError("a packed batch needs attention_mask (sample numbers), position_ids and, with "
                             "labels, next_sentence_weights")
        table = self.bert.embeddings.word_embeddings.weight  # [V_padded, H], the tied decoder
        # Only the masked positions go through the last layer and the head: [B, P, H], not [B, L, H].
        masked_hidden, pooled = self.bert(input_ids, token_type_ids, attention_mask, self.kernels,
                                          masked_lm_positions, position_ids, next_sentence_positions)
        nsp_logits = self.cls.seq_relationship(pooled)  # [B, 2], or [B, K, 2] packed
        if masked_lm_ids is None:
            return self.cls.predictions(masked_hidden, table), nsp_logits  # [B, P, V], nsp
        labels = mlm_labels(masked_lm_ids, masked_lm_positions)  # [B, P], -100 in unused slots
        mlm_loss = self.cls.predictions.loss(masked_hidden.reshape(-1, masked_hidden.shape[-1]), table,
                                             labels.reshape(-1), self.kernels)
        nsp_loss = nsp_cross_entropy(nsp_logits, next_sentence_labels, next_sentence_weights)
        return mlm_loss + nsp_loss, mlm_loss, nsp_loss
