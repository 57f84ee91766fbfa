"""Resolve ``--model_name_or_path`` into a transformers model for a task, plus its tokenizer.

    loaded = load_model(args.model_name_or_path, BertForQuestionAnswering,
                        vocab_file=args.vocab_file, do_lower_case=args.do_lower_case,
                        cache_dir=args.cache_dir)            # raises ModelLoadError (one line)
    loaded.model, loaded.tokenizer, loaded.source            # source: how it was found, for the log

What the name may be, checked in this order:
  * ``base`` / ``large``           -> the reference's hub ids (pretraining.bert_config.FINETUNING_HUB_IDS)
  * ``tiny`` / ``mini`` (any preset in pretraining.bert_config.PRESETS except base/large)
                                     -> random initialisation of that shape; needs --vocab_file
  * a ``*.json`` file              -> a bert_config.json: random initialisation; needs --vocab_file
  * a ``*.pt`` file                -> a pre-training checkpoint ``ckpt_N.pt`` ({'model': state_dict,
                                      'config': BertConfig fields, ...}), converted with
                                      pretraining.hf_conversion.to_hf_state_dict; the task head is new
  * a directory with config.json   -> a local HF model (e.g. the pre-training HF export, or a fine-tuned
                                      model this project saved); task head new if the folder has none
  * a directory with ckpt_N.pt     -> its newest readable checkpoint, as above
  * anything else                  -> a hub id; offline and not cached -> ModelLoadError that names
                                      --model_name_or_path and what to pass instead.

Tokenizer: the model folder's own (vocab.txt / tokenizer.json), else ``--vocab_file`` (a fast WordPiece
tokenizer, lower-casing unless ``--do_lower_case false``). Attention runs through SDPA.
"""
from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Type

import torch

from central.checkpoint import CheckpointError, latest_valid_checkpoint, safe_load
from central.errors import BadInputError
from pretraining.bert_config import FINETUNING_HUB_IDS, PRESETS, BertConfig

ATTENTION = "sdpa"
RANDOM_PRESETS = tuple(name for name in PRESETS if name not in FINETUNING_HUB_IDS)  # tiny, mini
FLAG = "--model_name_or_path"


class ModelLoadError(BadInputError):
    """The model or tokenizer cannot be found or read; the message is one line for the user."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object  # a transformers fast BERT tokenizer
    source: str        # e.g. "hub bert-base-uncased", "random init (tiny)", "pre-training checkpoint ..."


def hub_offline(environ=os.environ) -> bool:
    return any(environ.get(key, "").lower() in ("1", "true", "yes", "on")
               for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


# --------------------------------------------------------------------------------------------- tokenizer
def tokenizer_from_vocab(vocab_file, do_lower_case: Optional[bool] = None):
    """A fast BERT WordPiece tokenizer from a vocab.txt (works with transformers 4.x and 5.x)."""
    from transformers import BertTokenizerFast

    path = Path(vocab_file)
    if not path.is_file():
        raise ModelLoadError(f"--vocab_file {vocab_file}: no such file")
    lower = True if do_lower_case is None else do_lower_case
    parameters = inspect.signature(BertTokenizerFast.__init__).parameters
    # transformers 5 takes the vocabulary as ``vocab`` (a path or a dict); 4.x as ``vocab_file``.
    key = "vocab_file" if "vocab_file" in parameters else "vocab"
    try:
        tokenizer = BertTokenizerFast(**{key: str(path)}, do_lower_case=lower)
    except Exception as err:  # unreadable or not a WordPiece vocab
        raise ModelLoadError(f"--vocab_file {vocab_file}: not a usable WordPiece vocab.txt ({_first_line(err)})")
    # transformers 5 appends missing special tokens as new ids, so ask the file itself.
    listed = {line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()}
    if tokenizer.cls_token not in listed or tokenizer.sep_token not in listed:
        raise ModelLoadError(f"--vocab_file {vocab_file}: the vocabulary has no [CLS]/[SEP] tokens")
    return tokenizer


def _tokenizer_for_dir(directory: Path, vocab_file, do_lower_case: Optional[bool]):
    """The folder's own tokenizer when it has one; else --vocab_file."""
    if vocab_file:
        return tokenizer_from_vocab(vocab_file, do_lower_case)
    if (directory / "tokenizer.json").is_file() or (directory / "vocab.txt").is_file():
        from transformers import AutoTokenizer

        kwargs = {} if do_lower_case is None else {"do_lower_case": do_lower_case}
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), use_fast=True, **kwargs)
        except Exception as err:
            raise ModelLoadError(f"{FLAG} {directory}: its tokenizer cannot be read ({_first_line(err)})")
        if not getattr(tokenizer, "is_fast", False):
            raise ModelLoadError(f"{FLAG} {directory}: needs a fast tokenizer (tokenizer.json or vocab.txt)")
        return tokenizer
    raise ModelLoadError(f"{FLAG} {directory}: the folder has no vocab.txt or tokenizer.json; pass --vocab_file")


def _require_vocab(vocab_file, what: str, do_lower_case: Optional[bool]):
    if not vocab_file:
        raise ModelLoadError(f"{FLAG} {what} has no tokenizer: pass --vocab_file <vocab.txt> as well")
    return tokenizer_from_vocab(vocab_file, do_lower_case)


# --------------------------------------------------------------------------------------------- models
def _hf_config(config: BertConfig, overrides: dict):
    from transformers import BertConfig as HFBertConfig

    return HFBertConfig(**config.to_dict(), **overrides)


def _random_model(model_class, config: BertConfig, overrides: dict):
    return model_class._from_config(_hf_config(config, overrides), attn_implementation=ATTENTION)


def _checkpoint_model(path: Path, model_class, overrides: dict):
    """Task model whose encoder comes from a pre-training ckpt_N.pt (the task head starts fresh)."""
    try:
        checkpoint = safe_load(path)
    except CheckpointError as err:
        raise ModelLoadError(f"{FLAG} {err}")
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        raise ModelLoadError(f"{FLAG} {path}: not a pre-training checkpoint (needs 'model' and 'config' entries)")
    from pretraining.hf_conversion import to_hf_state_dict

    config = BertConfig.from_dict(checkpoint["config"])
    try:
        state = to_hf_state_dict(checkpoint["model"], config)
    except (KeyError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"{FLAG} {path}: the checkpoint does not convert ({_first_line(err)})")
    model = _random_model(model_class, config, overrides)
    wanted = model.state_dict()
    # BertForPreTraining keys (bert.*, cls.*) -> the task model: keep what it has (cls.* is dropped).
    usable = {k: v for k, v in state.items() if k in wanted}
    mismatched = [k for k, v in usable.items() if tuple(v.shape) != tuple(wanted[k].shape)]
    if mismatched:
        raise ModelLoadError(f"{FLAG} {path}: tensor {mismatched[0]} has shape {tuple(usable[mismatched[0]].shape)}, "
                             f"the model expects {tuple(wanted[mismatched[0]].shape)}")
    encoder_keys = [k for k in wanted if k.startswith("bert.") and "pooler" not in k]
    missing = [k for k in encoder_keys if k not in usable and not k.endswith(("position_ids", "token_type_ids"))]
    if missing:
        raise ModelLoadError(f"{FLAG} {path}: the checkpoint lacks {missing[0]} (and {len(missing) - 1} more)")
    model.load_state_dict(usable, strict=False)
    step = checkpoint.get("global_step", checkpoint.get("step"))
    return model, f"pre-training checkpoint {path}" + (f" (step {step})" if step is not None else "")


def _hf_dir_model(directory: Path, model_class, overrides: dict):
    try:
        with _quiet_hub_logs():  # a new task head is expected; its "newly initialized" report is noise
            return model_class.from_pretrained(str(directory), attn_implementation=ATTENTION, **overrides)
    except Exception as err:
        raise ModelLoadError(f"{FLAG} {directory}: not a loadable transformers BERT folder ({_first_line(err)})")


def _hub_model(name: str, model_class, overrides: dict, cache_dir, vocab_file, do_lower_case, shown: str = ""):
    from transformers import AutoTokenizer

    shown = shown or name
    offline = hub_offline()
    instead = ("pass a local model folder (config.json + model.safetensors + vocab.txt), a pre-training "
               "ckpt_N.pt, or a preset (tiny, mini) with --vocab_file")
    try:
        with _quiet_hub_logs():  # connection retries would print many lines before our one-line error
            model = model_class.from_pretrained(name, attn_implementation=ATTENTION, cache_dir=cache_dir,
                                                local_files_only=offline, **overrides)
        if vocab_file:
            tokenizer = tokenizer_from_vocab(vocab_file, do_lower_case)
        else:
            kwargs = {} if do_lower_case is None else {"do_lower_case": do_lower_case}
            tokenizer = AutoTokenizer.from_pretrained(name, use_fast=True, cache_dir=cache_dir,
                                                      local_files_only=offline, **kwargs)
    except ModelLoadError:
        raise
    except Exception as err:
        if offline:
            raise ModelLoadError(f"{FLAG} {shown}: hub downloads are off (HF_HUB_OFFLINE) and the model is not in "
                                 f"the local cache; {instead}")
        raise ModelLoadError(f"{FLAG} {shown}: cannot be downloaded or found ({_first_line(err)}); {instead}")
    return model, tokenizer


def load_model(name_or_path: str, model_class: Type, vocab_file: Optional[str] = None,
               do_lower_case: Optional[bool] = None, cache_dir: Optional[str] = None,
               **config_overrides) -> LoadedModel:
    """Build ``model_class`` (a transformers BertFor... class) from any accepted ``--model_name_or_path``.

    ``config_overrides`` go into the transformers config (e.g. ``num_labels=2``).
    Raises ModelLoadError with a one-line message for anything the user can fix.
    """
    name = str(name_or_path)
    if name in FINETUNING_HUB_IDS:
        hub_id = FINETUNING_HUB_IDS[name]
        model, tokenizer = _hub_model(hub_id, model_class, config_overrides, cache_dir, vocab_file, do_lower_case,
                                      shown=f"{name} (hub id {hub_id})")
        return LoadedModel(model, tokenizer, f"hub {hub_id} ({name})")
    if name in RANDOM_PRESETS:
        tokenizer = _require_vocab(vocab_file, f"preset {name!r}", do_lower_case)
        config = PRESETS[name].with_vocab_size(len(tokenizer))
        return LoadedModel(_random_model(model_class, config, config_overrides), tokenizer, f"random init ({name})")

    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".json":
        try:
            config = BertConfig.from_json_file(path)
        except (OSError, ValueError, TypeError, AttributeError) as err:  # unreadable, not JSON, not an object
            raise ModelLoadError(f"{FLAG} {path}: not a readable bert_config.json ({_first_line(err)})")
        tokenizer = _require_vocab(vocab_file or _sibling_vocab(path), f"{path} (a bert_config.json)", do_lower_case)
        if config.vocab_size < len(tokenizer):
            raise ModelLoadError(f"{FLAG} {path}: vocab_size {config.vocab_size} is smaller than the vocab file's "
                                 f"{len(tokenizer)} tokens")
        return LoadedModel(_random_model(model_class, config, config_overrides), tokenizer, f"random init ({path})")
    if path.is_file() and path.suffix == ".pt":
        tokenizer = _require_vocab(vocab_file or _sibling_vocab(path), f"{path} (a pre-training checkpoint)",
                                   do_lower_case)
        model, source = _checkpoint_model(path, model_class, config_overrides)
        return LoadedModel(model, tokenizer, source)
    if path.is_dir():
        if (path / "config.json").is_file():
            tokenizer = _tokenizer_for_dir(path, vocab_file, do_lower_case)
            return LoadedModel(_hf_dir_model(path, model_class, config_overrides), tokenizer, f"local model {path}")
        newest = latest_valid_checkpoint(path, warn=lambda message: None)
        if newest is not None:
            tokenizer = _require_vocab(vocab_file or _sibling_vocab(newest[0]), f"{newest[0]}", do_lower_case)
            model, source = _checkpoint_model(newest[0], model_class, config_overrides)
            return LoadedModel(model, tokenizer, source)
        raise ModelLoadError(f"{FLAG} {path}: the folder has neither config.json (a transformers model) "
                             f"nor ckpt_N.pt files (pre-training checkpoints)")
    if path.exists() or name.endswith((".pt", ".json")) or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"{FLAG} {name}: no such file or folder")

    model, tokenizer = _hub_model(name, model_class, config_overrides, cache_dir, vocab_file, do_lower_case)
    return LoadedModel(model, tokenizer, f"hub {name}")


@contextlib.contextmanager
def _quiet_hub_logs():
    import huggingface_hub.utils.logging as hub_logging
    from transformers.utils import logging as hf_logging

    levels = hub_logging.get_verbosity(), hf_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hub_logging.set_verbosity(levels[0])
        hf_logging.set_verbosity(levels[1])


def _sibling_vocab(path: Path) -> Optional[str]:
    """vocab.txt next to a checkpoint or config (pre-training data folders carry the vocab they used)."""
    candidate = Path(path).parent / "vocab.txt"
    return str(candidate) if candidate.is_file() else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
