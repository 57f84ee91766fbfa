"""The yardstick of benchmarks.time_to_quality: held-out masked-token accuracy and loss of a checkpoint,
the time each side needs to reach a given accuracy, and the accuracy-vs-time figure.

Both sides are scored by the same code: every checkpoint becomes (or already is) a Hugging Face model
folder, loaded as ``transformers.BertForMaskedLM``; the encoder runs on the fixed masked rows of
``time_to_quality_text.heldout_set`` and the MLM head scores the masked positions only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from central.checkpoint import safe_load
from pretraining.bert_config import BertConfig
from pretraining.hf_conversion import export_hf


@dataclass
class Point:
    """One evaluated checkpoint."""
    seconds: float      # wall time since its run was launched, when the checkpoint was complete
    step: int
    accuracy: float     # held-out masked-token accuracy
    loss: float         # mean cross-entropy over the masked tokens (nats)
    model_dir: str


def export_ours(checkpoint: Path, vocab_file: Path, out_dir: Path) -> Path:
    """A pre-training ckpt_N.pt -> an HF folder (config.json, model.safetensors, vocab.txt)."""
    state = safe_load(checkpoint)
    return export_hf(state["model"], BertConfig.from_dict(state["config"]), vocab_file, out_dir)


@torch.no_grad()
def evaluate(model_dir: Path, heldout: Dict[str, np.ndarray], batch_size: int = 64) -> Tuple[float, float]:
    """(accuracy, loss) of the model in ``model_dir`` on the masked held-out rows."""
    import transformers
    from transformers import BertForMaskedLM

    transformers.logging.set_verbosity_error()  # our export also holds the NSP head: "unused weights"
    transformers.utils.logging.disable_progress_bar()
    model = BertForMaskedLM.from_pretrained(str(model_dir)).eval()
    correct, total, loss_sum = 0, 0, 0.0
    ids = torch.from_numpy(heldout["input_ids"]).long()
    positions = torch.from_numpy(heldout["masked_lm_positions"]).long()
    labels = torch.from_numpy(heldout["masked_lm_ids"]).long()
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]                       # [B, L]
        hidden = model.bert(input_ids=batch, attention_mask=torch.ones_like(batch),
                            token_type_ids=torch.zeros_like(batch)).last_hidden_state  # [B, L, H]
        where = positions[start:start + batch_size]                 # [B, P], 0 = unused slot
        valid = where > 0
        picked = torch.gather(hidden, 1, where.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))[valid]  # [M, H]
        logits = model.cls(picked)                                  # [M, V]
        target = labels[start:start + batch_size][valid]            # [M]
        correct += int((logits.argmax(-1) == target).sum())
        loss_sum += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
        total += int(valid.sum())
    return correct / total, loss_sum / total


def first_reach(curve: Sequence[Point], target: float) -> Optional[Point]:
    """The earliest checkpoint at or above ``target`` accuracy (None: never)."""
    for point in sorted(curve, key=lambda p: p.seconds):
        if point.accuracy >= target:
            return point
    return None


def interpolated_reach(curve: Sequence[Point], target: float) -> Optional[float]:
    """When the straight line between two checkpoints first crosses ``target`` (a run starts at 0 s with
    accuracy 0); None if the curve never gets there."""
    previous = (0.0, 0.0)
    for point in sorted(curve, key=lambda p: p.seconds):
        if point.accuracy >= target:
            (t0, a0), (t1, a1) = previous, (point.seconds, point.accuracy)
            return t1 if a1 == a0 else t0 + (target - a0) * (t1 - t0) / (a1 - a0)
        previous = (point.seconds, point.accuracy)
    return None


def plot_curves(curves: Dict[str, List[Point]], target: Optional[float], reach_seconds: Optional[float],
                title: str, path: Path) -> Path:
    """Held-out MLM accuracy (left) and loss (right) against wall minutes, one line per side (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (accuracy_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for name, points in curves.items():
        points = sorted(points, key=lambda p: p.seconds)
        minutes = [p.seconds / 60 for p in points]
        accuracy_axis.plot([0] + minutes, [0] + [100 * p.accuracy for p in points], marker="o", markersize=3,
                           linewidth=1.4, label=name)
        loss_axis.plot(minutes, [p.loss for p in points], marker="o", markersize=3, linewidth=1.4, label=name)
    if target is not None:
        accuracy_axis.axhline(100 * target, color="gray", linestyle="--", linewidth=0.8,
                              label=f"HF route final {100 * target:.1f}%")
    if reach_seconds is not None:
        accuracy_axis.axvline(reach_seconds / 60, color="gray", linestyle=":", linewidth=0.8,
                              label=f"ours reaches it at {reach_seconds / 60:.1f} min")
    for axis, label in ((accuracy_axis, "held-out masked-token accuracy (%)"), (loss_axis, "held-out MLM loss (nats)")):
        axis.set_xlabel("wall time since launch (minutes)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path
