"""Running a fine-tuned model over features in batches (evaluation and prediction)."""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence, Tuple

import torch

from central.device import autocast, compile_for_mode, mark_step
from central.gradient_sync import unwrap
from central.runtime import Runtime
from finetuning.batches import Feature, PaddingCollator, to_device


@torch.no_grad()
def predict(model: torch.nn.Module, features: Sequence[Feature], runtime: Runtime, batch_size: int,
            collate: Optional[Callable] = None) -> Iterator[Tuple[range, dict]]:
    """Run the model over ``features`` in order; yield (feature index range, outputs on CPU in float32).

    Only the model inputs among a feature's keys should be collated (use ``drop_keys`` on the collator
    for bookkeeping keys). Runs on the calling rank alone, on the plain (unwrapped) model, compiled
    in graph mode.
    """
    collate = collate or PaddingCollator()
    plain = unwrap(model)
    plain.to(runtime.device)
    plain.eval()
    forward = compile_for_mode(plain, runtime.kind, runtime.mode)
    for start in range(0, len(features), batch_size):
        chunk = features[start:start + batch_size]
        batch = to_device(collate(list(chunk)), runtime.device)
        with autocast(runtime.kind, runtime.precision):
            outputs = forward(**batch)
        mark_step(runtime.kind, runtime.mode)
        host = {k: v.float().cpu() for k, v in outputs.items() if isinstance(v, torch.Tensor)}
        yield range(start, start + len(chunk)), host
