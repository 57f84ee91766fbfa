"""Pre-training checkpoints: what ``ckpt_<step>.pt`` holds, how it is written, how a run resumes.

A checkpoint is plain data (tensors, numbers, strings, lists, dicts) so that
``torch.load(weights_only=True)`` reads it and no code can ride along:

    format          CHECKPOINT_FORMAT
    model           state_dict of the bare model (no DDP / compile prefixes)
    optimizer       the optimizer's state_dict;  optimizer_name: --optimizer (absent: lamb)
    scheduler       PolyWarmUpScheduler state_dict
    phase           1 or 2;  phase_step: optimizer steps done in this phase
    step            the number in the file name (phase 2 adds --phase1_end_step, as the reference)
    skipped_steps   steps skipped for a non-finite loss (--nonfinite_loss skip)
    ranks           one entry per rank: {"data_position": DataPosition dict, "rng": RNG states}
    files           shard names of the run (to notice a changed data folder)
    config          the BertConfig dict

Written by rank 0 only, to a temporary file that is renamed into place (central.checkpoint), and only
the newest ``keep`` are kept, so a crash or a full disk never costs the previous checkpoint.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from central.checkpoint import (CheckpointError, atomic_write, keep_last, list_checkpoints, safe_load,
                                save_torch_file)
from pretraining.config import PretrainingConfig
from pretraining.hf_conversion import strip_wrapper_prefixes

CHECKPOINT_FORMAT = 1
# Config entries that decide the parameter shapes (dropout and the like may change between phases).
SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "max_position_embeddings", "type_vocab_size")
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "phase", "phase_step", "step", "ranks", "config")


# -- RNG state ------------------------------------------------------------------------------------
def capture_rng_state() -> dict:
    """This process's python/numpy/torch generator states as plain data, and on CUDA the state of the
    rank's own GPU only: a resume may see fewer GPUs per process (one per task under SLURM, say), and
    each rank draws from its own GPU's generator alone."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device: the rank's (central.device)
    return state


def restore_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["key"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # written by an older version: one state per visible GPU
            index = torch.cuda.current_device()
            cuda = cuda[index] if index < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)  # into the rank's own (current) device


def gather_rank_states(local: dict) -> List[dict]:
    """Every rank's ``local`` dict, in rank order (on every rank; a single process gets [local])."""
    if not dist.is_initialized():
        return [local]
    gathered: List[Optional[dict]] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return gathered


# -- writing ------------------------------------------------------------------------------------
def save_checkpoint(state: dict, output_dir: Path, keep: int,
                    write_file: Callable[[dict, str], None] = save_torch_file) -> Path:
    """Write ``ckpt_<state['step']>.pt`` atomically, then prune to the newest ``keep`` (rank 0 calls this).

    ``write_file(state, temporary_path)`` writes the bytes before the rename."""
    path = Path(output_dir) / f"ckpt_{state['step']}.pt"
    atomic_write(path, lambda tmp_path: write_file(state, tmp_path))
    keep_last(output_dir, keep)
    return path


def cpu_state_dict(state_dict: dict) -> dict:
    """A (nested) state dict with every tensor copied to the CPU, so the file loads anywhere."""
    if isinstance(state_dict, torch.Tensor):
        return state_dict.detach().cpu()
    if isinstance(state_dict, dict):
        return {k: cpu_state_dict(v) for k, v in state_dict.items()}
    if isinstance(state_dict, (list, tuple)):
        return type(state_dict)(cpu_state_dict(v) for v in state_dict)
    return state_dict


# -- reading ------------------------------------------------------------------------------------
def check_checkpoint(path: Path, state: dict) -> None:
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a pre-training checkpoint of this project "
                              f"(missing {', '.join(missing)})")


def find_resume_checkpoint(output_dir: Path, resume_step: int, warn: Callable[[str], None]
                           ) -> Optional[Tuple[Path, dict]]:
    """``ckpt_<resume_step>.pt`` when asked for, else the newest checkpoint that loads (broken ones are
    reported in one line each and skipped)."""
    output_dir = Path(output_dir)
    if resume_step >= 0:
        path = output_dir / f"ckpt_{resume_step}.pt"
        state = safe_load(path)
        check_checkpoint(path, state)
        return path, state
    for _, path in reversed(list_checkpoints(output_dir)):
        try:
            state = safe_load(path)
            check_checkpoint(path, state)
            return path, state
        except CheckpointError as err:
            warn(f"warning: skipping {err}")
    return None


def load_init_checkpoint(path: Path) -> dict:
    state = safe_load(path)
    if "model" not in state:
        raise CheckpointError(f"--init_checkpoint {path} has no 'model' entry")
    return state


def reset_schedule(optimizer_state: dict, learning_rate: float) -> dict:
    """An optimizer state for a new phase: moments kept, step counters zeroed, lr set (the reference's way)."""
    for group in optimizer_state["param_groups"]:
        group["lr"] = group["initial_lr"] = learning_rate  # the new phase's scheduler starts from this lr
        if "step" in group:
            group["step"] = 0
    for per_param in optimizer_state["state"].values():
        if "step" in per_param:
            step = per_param["step"]
            per_param["step"] = torch.zeros_like(step) if isinstance(step, torch.Tensor) else 0
    return optimizer_state



# -- the two ends of a run ------------------------------------------------------------------------
@dataclass
class StartPoint:
    """Where training begins, as decided from --resume_from_checkpoint / --init_checkpoint."""
    phase_step: int = 0
    skipped_steps: int = 0
    rank_state: Optional[dict] = None        # this rank's {"data_position", "rng"} (same-phase resume)
    scheduler_state: Optional[dict] = None   # same-phase resume only
    phase_already_done: bool = False         # the newest checkpoint belongs to a later phase
    description: str = "from scratch"


def _load_model(path: Path, model: torch.nn.Module, weights: dict) -> None:
    try:
        model.load_state_dict(strip_wrapper_prefixes(weights))
    except RuntimeError as err:
        first = " ".join(str(err).split())[:300]
        raise CheckpointError(f"checkpoint {path} does not fit this model: {first}") from None


def _load_optimizer(path: Path, optimizer: torch.optim.Optimizer, state: dict) -> None:
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path}: optimizer state does not fit this model ({err})") from None


def load_start_point(cfg: PretrainingConfig, config_dict: dict, file_names: List[str], model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, rank: int, world_size: int,
                     warn: Callable[[str], None]) -> StartPoint:
    """Load model/optimizer state where a checkpoint applies and say where training starts.

    * --resume_from_checkpoint and a valid ckpt of this phase in --output_dir (``ckpt_<resume_step>``
      when that is given without --init_checkpoint, else the newest): continue exactly (optimizer,
      schedule, data position, RNG of every rank). This is what makes re-running a killed command work,
      --init_checkpoint or not;
    * else --init_checkpoint, or (phase 2) phase 1's newest checkpoint in --output_dir: its weights and
      optimizer moments, with the optimizer's step and lr reset for this phase's schedule (the
      reference's phase-2 start);
    * else from scratch.
    """
    phase, found = cfg.phase, None
    if cfg.resume_from_checkpoint:
        explicit_step = cfg.resume_step if not cfg.init_checkpoint else -1  # with init: the init's step
        found = find_resume_checkpoint(cfg.checkpoint_dir, explicit_step, warn)
        if found is not None and int(found[1]["phase"]) < phase and cfg.init_checkpoint:
            found = None  # an explicit --init_checkpoint beats the previous phase's checkpoint
        elif found is None:
            warn(f"note: no checkpoint in {cfg.output_dir} to resume from"
                 + ("; starting from --init_checkpoint" if cfg.init_checkpoint else "; starting from scratch"))
    from_init = found is None and bool(cfg.init_checkpoint)
    if from_init:
        found = Path(cfg.init_checkpoint), load_init_checkpoint(Path(cfg.init_checkpoint))
    if found is None:
        return StartPoint()
    path, state = found
    saved_config = state.get("config")
    changed = [k for k in SHAPE_KEYS if saved_config is not None and saved_config.get(k) != config_dict[k]]
    if changed:
        raise CheckpointError(f"checkpoint {path} was trained with a different model shape "
                              f"({', '.join(f'{k} {saved_config.get(k)} vs {config_dict[k]}' for k in changed)})")
    saved_phase = int(state.get("phase", 1))
    if not from_init and saved_phase > phase:
        return StartPoint(phase_already_done=True, description=f"{path.name} belongs to phase {saved_phase}")

    saved_optimizer = state.get("optimizer_name", "lamb")  # checkpoints before --optimizer: LAMB
    if not from_init and saved_phase == phase and saved_optimizer != cfg.optimizer:
        raise CheckpointError(f"checkpoint {path} was trained with --optimizer {saved_optimizer}: resume it with "
                              f"the same optimizer, not {cfg.optimizer}")
    _load_model(path, model, state["model"])
    if from_init or saved_phase != phase:
        if "optimizer" in state and saved_optimizer == cfg.optimizer:
            _load_optimizer(path, optimizer, reset_schedule(state["optimizer"], cfg.learning_rate))
        elif "optimizer" in state:
            warn(f"note: {path.name} holds {saved_optimizer} moments; --optimizer {cfg.optimizer} starts "
                 f"from its weights with fresh moments")
        if not from_init and int(state["step"]) != cfg.phase1_end_step:
            warn(f"warning: {path.name} ends phase 1 at step {state['step']}, "
                 f"not at --phase1_end_step {cfg.phase1_end_step}")
        return StartPoint(description=f"weights of {path} (phase {saved_phase}, step {state.get('step', '?')}), "
                                      f"new schedule")

    _load_optimizer(path, optimizer, state["optimizer"])
    ranks = state["ranks"]
    rank_state = ranks[rank] if len(ranks) == world_size else None
    if rank_state is None:
        epoch = max(int(r["data_position"]["epoch"]) for r in ranks)
        warn(f"warning: {path.name} was written by {len(ranks)} rank(s), this run has {world_size}: "
             f"data order restarts at epoch {epoch + 1} and the random streams are re-seeded")
        rank_state = {"data_position": {"epoch": epoch + 1, "slot": 0, "batch": 0}}
    if state.get("files") is not None and state["files"] != file_names:
        warn(f"warning: the shards in {cfg.input_dir} differ from those {path.name} was trained on; "
             f"the data order will not continue exactly")
    return StartPoint(phase_step=int(state["phase_step"]), skipped_steps=int(state.get("skipped_steps", 0)),
                      rank_state=rank_state, scheduler_state=state["scheduler"],
                      description=f"resumed from {path} (phase {phase}, step {state['step']})")


def build_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, optimizer_name: str, scheduler,
                     phase: int, phase_step: int, step: int, skipped_steps: int, rank_states: List[dict],
                     file_names: List[str], config_dict: dict) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "model": cpu_state_dict(strip_wrapper_prefixes(model.state_dict())),
        "optimizer": cpu_state_dict(optimizer.state_dict()), "optimizer_name": optimizer_name,
        "scheduler": scheduler.state_dict(),
        "phase": phase, "phase_step": phase_step, "step": step, "skipped_steps": skipped_steps,
        "ranks": rank_states, "files": file_names, "config": config_dict,
    }
