"""Writing a fine-tuned model in HF format: the final model and the checkpoint-<step> folders."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch

from central.distributed import barrier
from central.gradient_sync import unwrap
from central.runtime import Runtime


def save_model(model: torch.nn.Module, tokenizer, output_dir, runtime: Runtime) -> None:
    """Write the model (and tokenizer) in HF format to ``output_dir`` on rank 0; other ranks wait.

    Files are written to a temporary sibling folder and moved in one by one, so a crash mid-save
    never leaves a half-written config.json/model.safetensors pair behind.
    """
    output_dir = Path(output_dir)
    if runtime.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=output_dir.parent))
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # no "Writing model shards" bar in the training log
            unwrap(model).save_pretrained(staging, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
                _write_vocab_txt(tokenizer, staging)
            for item in staging.iterdir():
                os.replace(item, output_dir / item.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if runtime.dist.distributed:  # not for a runtime that works alone (Runtime.alone)
        barrier()


def save_checkpoint(model: torch.nn.Module, directory: Path, runtime: Runtime,
                    save_callback: Optional[Callable[[torch.nn.Module, str], None]] = None) -> None:
    """A mid-training checkpoint: ``save_callback(model, directory)`` on rank 0 when given (it may add the
    tokenizer), else ``save_model`` without a tokenizer; every rank returns once it is written."""
    if save_callback is None:
        save_model(model, None, directory, runtime)
        return
    if runtime.is_main:
        save_callback(model, str(directory))
    if runtime.dist.distributed:
        barrier()


def _write_vocab_txt(tokenizer, directory: Path) -> None:
    """vocab.txt beside tokenizer.json (transformers 5 writes only the latter), so that tools reading a
    WordPiece vocab (--vocab_file, BERT tokenizers of older transformers) can use the folder too."""
    target = directory / "vocab.txt"
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    if target.exists() or not vocab or sorted(vocab.values()) != list(range(len(vocab))):
        return
    by_id = sorted(vocab, key=vocab.get)
    target.write_text("".join(token + "\n" for token in by_id), encoding="utf-8")
