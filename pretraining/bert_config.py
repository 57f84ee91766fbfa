"""BERT shape configuration: the ``bert_config.json`` format and the named presets.

One source of truth for model shapes: ``pretraining.model_names`` resolves a name to a preset or a
file, pre-training builds its model from ``BertConfig``, fine-tuning turns it into a
``transformers.BertConfig``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Union

PathLike = Union[str, Path]


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, values: dict) -> "BertConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_json_file(cls, path: PathLike) -> "BertConfig":
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    def with_vocab_size(self, vocab_size: int) -> "BertConfig":
        return replace(self, vocab_size=vocab_size)


PRESETS = {
    # Small shapes for CPU work and tests.
    "tiny": BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256),
    "mini": BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    # The published shapes.
    "base": BertConfig(),
    "large": BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def count_vocab(vocab_file: PathLike) -> int:
    """Number of WordPiece entries in a vocab.txt (one token per line)."""
    with open(vocab_file, encoding="utf-8") as handle:
        return sum(1 for _ in handle)
