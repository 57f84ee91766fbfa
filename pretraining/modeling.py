"""BERT for pre-training: encoder + masked-LM head (tied, vocab padded to a multiple of 8) + NSP head.

Parameter names follow ``transformers.BertForPreTraining`` (``bert.embeddings...``,
``bert.encoder.layer.N.attention.self.query...``, ``cls.predictions...``) so checkpoints convert to and
from Hugging Face by renaming nothing: ``pretraining.hf_conversion`` only trims or pads the vocab rows
and adds the tied decoder entries that this model does not store twice.

What makes it fast (DESIGN.md, "Performance design"):
  * the MLM head (transform + vocab projection, the largest matmul of the model) runs only on the
    gathered ``masked_lm_positions`` (20 of 128 positions in phase 1) instead of every position;
  * attention is ``torch.nn.functional.scaled_dot_product_attention`` with a boolean key mask
    (or no mask at all when the batch has no padding, which lets SDPA pick its fastest kernel);
  * query/key/value run as one matmul (the three weights are concatenated on the fly, so the
    parameters, their names and the per-tensor LAMB trust ratios stay those of the reference);
  * position embeddings are a slice of the table, not a lookup (no index backward).

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

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
        # x: [B, L, H]; key_mask: [B, 1, 1, L] bool (True = attend) or None -> context [B, L, H]
        batch, seq_len, hidden = x.shape
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # [3H, H]
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])  # [3H]
        qkv = F.linear(x, weight, bias).view(batch, seq_len, 3, self.num_heads, hidden // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, L, head_dim]
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=self.dropout_prob if self.training else 0.0)
        return context.transpose(1, 2).reshape(batch, seq_len, hidden)


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

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
        return self.output(self.self(x, key_mask), x)


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

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.attention(x, key_mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, key_mask)
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

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # -> sequence output [B, L, H], pooled [CLS] output [B, H]
        hidden = self.encoder(self.embeddings(input_ids, token_type_ids), key_mask_for_sdpa(attention_mask))
        return hidden, self.pooler(hidden)


def key_mask_for_sdpa(attention_mask: torch.Tensor) -> Optional[torch.Tensor]:
    """[B, L] 1 = token / 0 = padding -> [B, 1, 1, L] bool (True = attend), or None without padding.

    None lets SDPA use its unmasked (fastest) kernels. The check reads the tensor, so under
    torch.compile we skip it and always pass the mask (no data-dependent graph break).
    """
    if not torch.compiler.is_compiling() and bool(attention_mask.all()):
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


class BertLMPredictionHead(nn.Module):
    """transform -> tied decoder; the decoder weight is ``word_embeddings.weight`` (padded vocab)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.bias = nn.Parameter(torch.zeros(padded_vocab_size(config.vocab_size)))

    def forward(self, x: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(x), decoder_weight, self.bias)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


class BertForPreTraining(nn.Module):
    """forward(input_ids, token_type_ids, attention_mask, masked_lm_positions) -> (mlm_logits, nsp_logits).

    Shapes: input_ids / token_type_ids / attention_mask [B, L]; masked_lm_positions [B, P] (0 in
    unused slots: position 0 is always [CLS] and never masked); mlm_logits [B, P, vocab_size] with the
    real vocab (padding columns sliced off, so they can never be predicted); nsp_logits [B, 2].
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
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

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor,
                masked_lm_positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = self.bert(input_ids, token_type_ids, attention_mask)  # [B, L, H], [B, H]
        # Gather the masked positions first: the head then works on [B, P, H], not [B, L, H].
        index = masked_lm_positions.long().unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        masked_hidden = torch.gather(hidden, 1, index)  # [B, P, H]
        logits = self.cls.predictions(masked_hidden, self.bert.embeddings.word_embeddings.weight)
        mlm_logits = logits[..., : self.config.vocab_size]  # [B, P, V]: drop the padding columns
        nsp_logits = self.cls.seq_relationship(pooled)  # [B, 2]
        return mlm_logits, nsp_logits


def valid_mlm_slots(masked_lm_positions: torch.Tensor) -> torch.Tensor:
    """[B, P] bool: slots before the first 0 position (how the reference builds its MLM labels)."""
    return (masked_lm_positions != 0).long().cumprod(dim=1).bool()


def pretraining_loss(mlm_logits: torch.Tensor, masked_lm_ids: torch.Tensor, masked_lm_positions: torch.Tensor,
                     nsp_logits: torch.Tensor, next_sentence_labels: torch.Tensor
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mlm_loss, nsp_loss): mean CE over the valid masked slots + mean NSP CE (fp32 math)."""
    labels = torch.where(valid_mlm_slots(masked_lm_positions), masked_lm_ids.long(), -100)  # [B, P]
    mlm_loss = F.cross_entropy(mlm_logits.reshape(-1, mlm_logits.shape[-1]).float(), labels.reshape(-1),
                               ignore_index=-100)
    nsp_loss = F.cross_entropy(nsp_logits.float(), next_sentence_labels.long().reshape(-1))
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
