"""What a ``--model_name_or_path`` (or run_pretraining's ``--config_file``) names: one verdict, one error line.

    resolve_model_name("base")                 -> ModelName(PRESET, "base")
    resolve_model_name("runs/x/checkpoints")   -> ModelName(CHECKPOINT_FOLDER, ..., path=<absolute folder>)
    resolve_model_name("huge", hub=False)      -> ModelNameError("--model_name_or_path huge: neither a preset ...")

The kinds, decided in this order:

    preset              tiny, mini (small shapes), base, large (BERT-Base/Large; fine-tuning loads the
                        reference's hub checkpoints FINETUNING_HUB_IDS for them)
    HF model folder     a folder with config.json (e.g. a pre-training HF export, a fine-tuned model)
    checkpoint folder   a folder with ckpt_N.pt files (the newest one is used)
    bert_config.json    a *.json file, or a folder with only a bert_config.json
    checkpoint file     a *.pt file (a pre-training ckpt_N.pt)
    hub model id        any other ``name`` or ``owner/name``, where hub ids are allowed (fine-tuning)

The launcher, run_pretraining (``run_setup.resolve_config``) and fine-tuning's ``load_model`` all ask
``resolve_model_name``; they differ only in what they do with each kind. ``hub_offline`` is the one test
of whether hub downloads are switched off. No torch import (``demo_bert.py -h`` stays fast).
"""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from central.checkpoint_names import list_checkpoints
from central.errors import BadInputError
from pretraining.bert_config import PRESETS

FLAG = "--model_name_or_path"
# The hub checkpoints the reference fine-tunes for its names (pre-training uses only their shapes).
FINETUNING_HUB_IDS = {"base": "bert-base-uncased", "large": "bert-large-uncased-whole-word-masking"}
SHAPE_FILES = ("bert_config.json", "config.json")  # a folder's shape, in order of preference
HELP = (f"a preset ({', '.join(PRESETS)}; fine-tuning loads base and large from the hub as "
        f"{' and '.join(FINETUNING_HUB_IDS.values())}), a bert_config.json, a model folder (config.json), "
        "a ckpt_N.pt or a folder of them, or (fine-tuning) a Hugging Face hub model id")
INSTEAD = ("pass a local model folder (config.json + model.safetensors + vocab.txt), a pre-training ckpt_N.pt, "
           "or a preset (tiny, mini) with --vocab_file")


class ModelNameError(BadInputError):
    """The name is no kind of model; the message is one line naming the flag and the name."""


class ModelKind(enum.Enum):
    PRESET = "preset"
    HF_FOLDER = "HF model folder"
    CHECKPOINT_FOLDER = "folder of ckpt_N.pt files"
    CONFIG_JSON = "bert_config.json"
    CHECKPOINT_FILE = "ckpt_N.pt file"
    HUB_ID = "hub model id"


@dataclass(frozen=True)
class ModelName:
    kind: ModelKind
    name: str                      # as given
    path: Optional[Path] = None    # absolute file or folder (None for presets and hub ids)

    @property
    def hub_id(self) -> Optional[str]:
        """The hub id fine-tuning downloads: base/large's reference checkpoints, or the id itself."""
        if self.kind is ModelKind.HUB_ID:
            return self.name
        return FINETUNING_HUB_IDS.get(self.name) if self.kind is ModelKind.PRESET else None

    def shape_file(self) -> Optional[Path]:
        """The JSON file that gives the model's shape (None: a preset, a hub id, a checkpoint without one)."""
        if self.kind is ModelKind.CONFIG_JSON:
            return self.path
        folder = {ModelKind.HF_FOLDER: self.path, ModelKind.CHECKPOINT_FOLDER: self.path,
                  ModelKind.CHECKPOINT_FILE: self.path.parent if self.path else None}.get(self.kind)
        if folder is None:
            return None
        return next((folder / name for name in SHAPE_FILES if (folder / name).is_file()), None)

    def checkpoint(self) -> Optional[Path]:
        """The pre-training checkpoint it names: the file, or a folder's newest ckpt_N.pt."""
        if self.kind is ModelKind.CHECKPOINT_FILE:
            return self.path
        if self.kind is ModelKind.CHECKPOINT_FOLDER:
            return list_checkpoints(self.path)[-1][1]
        return None


def resolve_model_name(name: str, flag: str = FLAG, hub: bool = True) -> ModelName:
    """Classify ``name``. ``hub=False`` (pre-training: it needs a shape and downloads nothing) refuses what
    would otherwise be read as a hub id. Raises ModelNameError naming ``flag``."""
    name = str(name)
    if name in PRESETS:
        return ModelName(ModelKind.PRESET, name)
    path = Path(name).expanduser()
    if path.is_dir():
        path = path.resolve()
        if (path / "config.json").is_file():
            return ModelName(ModelKind.HF_FOLDER, name, path)
        if list_checkpoints(path):
            return ModelName(ModelKind.CHECKPOINT_FOLDER, name, path)
        if (path / "bert_config.json").is_file():
            return ModelName(ModelKind.CONFIG_JSON, name, path / "bert_config.json")
        raise ModelNameError(f"{flag} {name}: the folder has no config.json (a transformers model), "
                             "bert_config.json or ckpt_N.pt files (pre-training checkpoints)")
    if path.is_file():
        kind = {".json": ModelKind.CONFIG_JSON, ".pt": ModelKind.CHECKPOINT_FILE}.get(path.suffix)
        if kind is None:
            raise ModelNameError(f"{flag} {name}: expected a bert_config.json or a ckpt_N.pt file")
        return ModelName(kind, name, path.resolve())
    if not hub:
        raise ModelNameError(f"{flag} {name}: neither a preset ({', '.join(PRESETS)}) nor an existing "
                             "bert_config.json, model folder or ckpt_N.pt")
    if not looks_like_hub_id(name):
        raise ModelNameError(f"{flag} {name}: no such file or folder")
    return ModelName(ModelKind.HUB_ID, name)


def looks_like_hub_id(name: str) -> bool:
    """``name`` or ``owner/name`` of letters, digits and -_. (what is not a hub id is a missing path)."""
    return (bool(name) and name.count("/") <= 1 and not name.startswith((".", "/", "~")) and
            not name.endswith((".pt", ".json")) and all(c.isalnum() or c in "-_./" for c in name))


# --------------------------------------------------------------------------------------------- the hub
def hub_offline(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether hub downloads are switched off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)."""
    return any(environ.get(key, "").lower() in ("1", "true", "yes", "on")
               for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def not_in_cache_error(shown: str, offline: bool) -> ModelNameError:
    """The one line for a hub model that cannot be downloaded now and is not cached."""
    why = "hub downloads are off (HF_HUB_OFFLINE)" if offline else "the Hugging Face hub cannot be reached"
    return ModelNameError(f"{FLAG} {shown}: {why} and the model is not in the local Hugging Face cache; {INSTEAD}")


def check_hub_id(hub_id: str, cache_dir: Optional[str] = None, shown: Optional[str] = None) -> None:
    """Before a long launch: the hub id must exist (online) or be in the local cache (offline, or no network)."""
    shown = shown or hub_id
    try:
        import huggingface_hub
        from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError
    except ImportError:
        raise ModelNameError(f"{FLAG} {shown}: huggingface_hub is not installed to look it up") from None
    offline = hub_offline()
    if not offline:
        try:
            huggingface_hub.model_info(hub_id, timeout=5)
            return
        except GatedRepoError:
            return  # it exists; access is the download's business
        except RepositoryNotFoundError:
            raise ModelNameError(f"{FLAG} {shown}: no such model on the Hugging Face hub") from None
        except Exception:  # no network: the local cache decides
            pass
    if isinstance(huggingface_hub.try_to_load_from_cache(hub_id, "config.json", cache_dir=cache_dir), str):
        return
    raise not_in_cache_error(shown, offline)
