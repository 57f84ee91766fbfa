"""Weights both ways between ``pretraining.modeling.BertForPreTraining`` and ``transformers``.

Our parameter names are those of ``transformers.BertForPreTraining``; the differences are only
  * the vocab: ours is padded to a multiple of 8 (``bert.embeddings.word_embeddings.weight`` [Vp, H],
    ``cls.predictions.bias`` [Vp]); transformers holds the real vocab size V;
  * the tied decoder: ours has no ``cls.predictions.decoder.*`` entries (the head multiplies by the
    word embeddings directly); transformers lists ``decoder.weight`` / ``decoder.bias`` (tied copies).
Fine-tuning loads ``to_hf_state_dict(ckpt["model"], config)`` into any ``transformers.Bert*`` model
(the ``bert.*`` keys match). ``export_hf`` writes a folder that ``from_pretrained`` loads.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Union

import torch

from central.checkpoint import atomic_write, atomic_write_text
from central.errors import BadInputError
from pretraining.bert_config import BertConfig
from pretraining.modeling import padded_vocab_size

PathLike = Union[str, Path]
VOCAB_KEYS = ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias")
DECODER_WEIGHT = "cls.predictions.decoder.weight"
DECODER_BIAS = "cls.predictions.decoder.bias"
BUFFER_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")
# Prefixes that wrappers add to state-dict keys: DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class ConversionError(BadInputError):
    """A state dict does not fit the given BertConfig (one line naming the key and the mismatch)."""


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    result = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        result[key] = value
    return result


def _vocab_rows(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        raise ConversionError(f"state dict has no {key!r} (not a BERT pre-training state dict?)")
    return state_dict[key]


def to_hf_state_dict(our_state_dict: Mapping[str, torch.Tensor], config: BertConfig) -> Dict[str, torch.Tensor]:
    """Our state dict (padded vocab, possibly DDP/compile-prefixed) -> transformers.BertForPreTraining's."""
    state = strip_wrapper_prefixes(our_state_dict)
    vocab = config.vocab_size
    for key in VOCAB_KEYS:
        rows = _vocab_rows(state, key).shape[0]
        if rows not in (vocab, padded_vocab_size(vocab)):
            raise ConversionError(f"{key} has {rows} vocab rows; config vocab_size is {vocab}")
    hf = {key: value for key, value in state.items() if key not in (DECODER_WEIGHT, DECODER_BIAS)}
    for key in VOCAB_KEYS:
        hf[key] = state[key][:vocab]
    hf[DECODER_WEIGHT] = hf["bert.embeddings.word_embeddings.weight"]
    hf[DECODER_BIAS] = hf["cls.predictions.bias"]
    return hf


def from_hf_state_dict(hf_state_dict: Mapping[str, torch.Tensor], config: BertConfig) -> Dict[str, torch.Tensor]:
    """transformers.BertForPreTraining's state dict -> ours (vocab rows zero-padded to a multiple of 8).

    Entries we do not store are dropped: the tied decoder copies and the position_ids /
    token_type_ids buffers that older transformers versions saved.
    """
    state = strip_wrapper_prefixes(hf_state_dict)
    if "cls.predictions.bias" not in state and DECODER_BIAS in state:
        state["cls.predictions.bias"] = state[DECODER_BIAS]
    padded = padded_vocab_size(config.vocab_size)
    ours = {key: value for key, value in state.items()
            if key not in (DECODER_WEIGHT, DECODER_BIAS) and not key.endswith(BUFFER_SUFFIXES)}
    for key in VOCAB_KEYS:
        value = _vocab_rows(state, key)
        if value.shape[0] != config.vocab_size:
            raise ConversionError(f"{key} has {value.shape[0]} vocab rows; config vocab_size is {config.vocab_size}")
        pad = value.new_zeros((padded - value.shape[0],) + tuple(value.shape[1:]))
        ours[key] = torch.cat([value, pad])
    return ours


def to_hf_config(config: BertConfig):
    """Our BertConfig -> transformers.BertConfig (same shape; architectures set for from_pretrained)."""
    import transformers

    # Our field names are transformers' (both follow bert_config.json), so the dict carries over.
    return transformers.BertConfig(**config.to_dict(), tie_word_embeddings=True, architectures=["BertForPreTraining"])


def tokenizer_config(config: BertConfig, do_lower_case: bool) -> dict:
    """tokenizer_config.json for a WordPiece vocab.txt (AutoTokenizer -> BertTokenizer[Fast])."""
    return {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": bool(do_lower_case),
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "model_max_length": config.max_position_embeddings,
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
        "cls_token": "[CLS]", "mask_token": "[MASK]",
    }


def export_hf(model_or_state_dict, config: BertConfig, vocab_file: PathLike, out_dir: PathLike,
              do_lower_case: bool = True) -> Path:
    """Write config.json, model.safetensors, vocab.txt, tokenizer_config.json into ``out_dir``.

    Each file is written to a temporary name and renamed (config.json last, so a folder with a
    config.json is complete); other files in ``out_dir`` are left alone. Tied decoder copies are not
    stored (transformers re-ties them on load), tensors are saved contiguous on CPU.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    vocab_file = Path(vocab_file)
    if not vocab_file.is_file():
        raise FileNotFoundError(f"vocab file {vocab_file} does not exist")
    state = model_or_state_dict.state_dict() if hasattr(model_or_state_dict, "state_dict") else model_or_state_dict
    hf = to_hf_state_dict(state, config)
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in hf.items()
               if key not in (DECODER_WEIGHT, DECODER_BIAS)}
    vocab_text = vocab_file.read_text(encoding="utf-8")
    vocab_lines = len(vocab_text.splitlines())
    if vocab_lines != config.vocab_size:
        raise ValueError(f"vocab file {vocab_file} has {vocab_lines} entries; config vocab_size is {config.vocab_size}")

    atomic_write(out_dir / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write_text(out_dir / "vocab.txt", vocab_text)
    atomic_write_text(out_dir / "tokenizer_config.json",
                      json.dumps(tokenizer_config(config, do_lower_case), indent=2) + "\n")
    atomic_write_text(out_dir / "config.json", to_hf_config(config).to_json_string())
    return out_dir
