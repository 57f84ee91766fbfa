"""Device, execution mode and precision: the one place that knows about HPU, CUDA and CPU.

Model code never imports this module; the training scripts ask it for a device, wrap their step in
``autocast``, compile for graph mode and call ``mark_step``. Every Habana import lives here, behind
``habana_module``, so that machines without the Habana stack never touch it (tests substitute a
stand-in module of their own under the same names).

Table (DESIGN.md):
    mode   | hpu                         | cuda                         | cpu
    eager  | plain                       | plain                        | plain
    graph  | torch.compile(hpu_backend)  | torch.compile                | torch.compile
    lazy   | PT_HPU_LAZY_MODE=1 + marks  | note once, run as graph      | warn once, run eager

Lazy mode is Gaudi's way of running whole graphs instead of single ops; on CUDA the same intent is
``torch.compile``, which is why ``large`` (whose reference default is lazy) compiles on a GPU. On the CPU
the eager path has its own kernels (pretraining/cpu_kernels.py), so lazy stays eager there.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import warnings
from typing import Iterable, Optional

import torch

from central.choices import DEVICE_CHOICES, MODE_CHOICES, PRECISION_CHOICES
from central.errors import BadInputError
from central.mode_environment import mode_environment  # noqa: F401  (re-exported: the launcher asks here)

DIST_BACKENDS = {"hpu": "hccl", "cuda": "nccl", "cpu": "gloo"}


class DeviceUnavailableError(BadInputError):
    """The requested device kind cannot be used on this machine."""


def habana_module(name: str = "habana_frameworks.torch.core"):
    """Import a Habana module, or return None when the Habana stack is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def resolve_device_kind(requested: str = "auto") -> str:
    """Map ``--device`` to 'hpu' | 'cuda' | 'cpu'; auto prefers hpu, then cuda, then cpu."""
    if requested not in DEVICE_CHOICES:
        raise DeviceUnavailableError(f"--device {requested!r}: choose from {', '.join(DEVICE_CHOICES)}")
    if requested == "auto":
        if habana_module() is not None:
            return "hpu"
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "hpu" and habana_module() is None:
        raise DeviceUnavailableError("--device hpu: the Habana stack (habana_frameworks.torch) is not installed")
    if requested == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("--device cuda: no CUDA device is available to PyTorch")
    return requested


def torch_device(kind: str, local_rank: int = 0) -> torch.device:
    """The torch.device a rank trains on (CUDA: one GPU per local rank)."""
    if kind == "cuda":
        index = local_rank % max(1, torch.cuda.device_count())
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if kind == "hpu":
        habana_module()  # registers the 'hpu' device type with torch
        return torch.device("hpu")
    return torch.device("cpu")


def effective_mode(kind: str, mode: Optional[str]) -> str:
    """The mode that really runs: lazy exists only on HPU; on CUDA it compiles (graph), on the CPU it runs
    eager (each said once, as a warning)."""
    mode = mode or "eager"
    if mode not in MODE_CHOICES:
        raise ValueError(f"--mode {mode!r}: choose from {', '.join(MODE_CHOICES)}")
    if mode == "lazy" and kind == "cuda":
        warnings.warn("--mode lazy is an HPU mode; on cuda it runs as --mode graph (torch.compile)", stacklevel=2)
        return "graph"
    if mode == "lazy" and kind != "hpu":
        warnings.warn(f"--mode lazy is an HPU mode; running eager on {kind}", stacklevel=2)
        return "eager"
    return mode


def allow_tf32_matmuls(kind: str) -> None:
    """CUDA: fp32 matmuls run on the tensor cores as TF32 (inputs rounded to 10 mantissa bits, fp32
    accumulation), several times the rate of full fp32 on Ampere and later. fp32 is the default
    --data_type, and bf16 runs keep some fp32 matmuls outside autocast. NVIDIA_TF32_OVERRIDE=0 in the
    environment turns TF32 off for a run (cuBLAS reads it). Other devices keep their fp32 matmuls."""
    if kind == "cuda":
        # The long-standing switch. Used alone, torch 2.9+'s newer fp32_precision setter makes
        # torch.get_float32_matmul_precision(), which torch.compile reads, raise about mixed APIs.
        torch.backends.cuda.matmul.allow_tf32 = True


def compile_for_mode(module: torch.nn.Module, kind: str, mode: str):
    """Graph mode compiles the module (HPU through its own dynamo backend); other modes return it as is."""
    if mode != "graph":
        return module
    if kind == "hpu":
        habana_module("habana_frameworks.torch.dynamo.compile_backend")
        return torch.compile(module, backend="hpu_backend")
    return torch.compile(module)


def mark_step(kind: str, mode: str) -> None:
    """Flush the accumulated lazy graph (HPU lazy mode only; a no-op elsewhere)."""
    if kind == "hpu" and mode == "lazy":
        habana_module().mark_step()


def autocast(kind: str, precision: str):
    """bf16 autocast on the given device kind; fp32 runs without a context."""
    if precision == "bf16":
        return torch.autocast(device_type=kind, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"precision {precision!r}: choose from {', '.join(PRECISION_CHOICES)}")
    return contextlib.nullcontext()


def zero_grad(optimizer: torch.optim.Optimizer) -> None:
    """Drop the gradients (None: the next backward writes fresh ones, no zero-filling pass). hpex
    FusedLamb's ``zero_grad`` takes no argument (and sets them to None itself); torch's optimizers and
    hpex FusedAdamW take ``set_to_none``."""
    if "set_to_none" in inspect.signature(optimizer.zero_grad).parameters:
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.zero_grad()


def habana_optimizer_class(name: str):
    """A fused optimizer class from hpex (FusedLamb, FusedAdamW), or None without the Habana stack."""
    module = habana_module("habana_frameworks.torch.hpex.optimizers")
    return getattr(module, name, None) if module is not None else None


def adamw(params, kind: str, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
          habana_fused: bool = False):
    """AdamW: hpex FusedAdamW on HPU when ``habana_fused`` (--use_fused_adam, as the reference chooses it),
    else torch's fused kernel where the device has one, else its multi-tensor (foreach) kernel."""
    if kind == "hpu" and habana_fused:
        fused = habana_optimizer_class("FusedAdamW")
        if fused is not None:
            return fused(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    params = list(params)  # a generator would be used up by the first attempt
    try:
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=True)


def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float, kind: str,
                   habana_fused: bool = False) -> torch.Tensor:
    """Global gradient-norm clipping: hpex FusedClipNorm on HPU when ``habana_fused``
    (--use_fused_clip_norm), else torch's multi-tensor kernels (where the device has them)."""
    params = [p for p in params if p.grad is not None]
    if kind == "hpu" and habana_fused:
        module = habana_module("habana_frameworks.torch.hpex.normalization")
        if module is not None and hasattr(module, "FusedClipNorm"):
            return module.FusedClipNorm(params, max_norm).clip_norm(params)
    return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True if kind in ("cpu", "cuda") else None)


def dist_backend(kind: str) -> str:
    return DIST_BACKENDS[kind]
