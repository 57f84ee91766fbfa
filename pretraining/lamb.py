"""LAMB (NVLAMB flavour, as the reference pre-training uses it) and its poly warm-up schedule.

One optimizer step, for every parameter w with gradient g (t = step number, from 1):
    g     = g * min(1, max_grad_norm / ||all gradients||)     global clipping, before the moments
    m     = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
    u     = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + weight_decay * w      decoupled decay
    ratio = ||w|| / ||u||  if weight_decay != 0 and both norms > 0, else 1          per tensor
    w     = w - lr * ratio * u
The arithmetic runs as multi-tensor ``torch._foreach_*`` kernels over all parameters of one device and
dtype at once (no Python loop per tensor, no host synchronisation). On HPU, ``make_lamb`` returns
Habana's FusedLamb instead.

On the CPU the update takes about a dozen elementwise passes over the parameters, moments and gradients,
and each pass over all of them streams them from memory: BERT-base's 110M parameters are 440 MB per
tensor kind. So there the parameters are cut into flat pieces and taken in blocks of ``cpu_block_elements``
(default 512K elements: the five tensors of a block, 10 MB, stay in a server CPU's last-level cache) and
all passes run on one block before the next; the per-tensor trust ratio is applied once a tensor's last
piece is done, from the norms of its pieces, so the update reads the parameters from memory about once
instead of once per pass (the step times before and after: docs/performance.md). Accelerators keep one
block of whole tensors.

On CUDA every ``_foreach_*`` call is one kernel launch (or a few) over all tensors, as long as its lists
pair tensors of the same shape. The trust ratio is the exception: it multiplies each tensor by its own
0-dim ratio, and a full tensor paired with a 0-dim one falls off the multi-tensor fast path into one
kernel per tensor (~150 for BERT-Large's decayed weights, every step). So on CUDA that last part, from
the norms to ``w -= lr * ratio * u``, is compiled once with ``torch.compile``: inductor turns the
per-tensor scaling and the update into a handful of fused multi-tensor kernels (``compile_update``;
if compiling fails, a warning says so and it runs eagerly).
"""
from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

NO_DECAY_KEYS = ("bias", "gamma", "beta", "LayerNorm")
CPU_BLOCK_ELEMENTS = 1 << 19  # elements per cache-sized block of the CPU update (module docstring)


class Lamb(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, max_grad_norm: float = 1.0, bias_correction: bool = True,
                 cpu_block_elements: Optional[int] = CPU_BLOCK_ELEMENTS, compile_update: Optional[bool] = None):
        """compile_update: compile the trust-ratio update (module docstring); None: on CUDA only."""
        if lr < 0.0:
            raise ValueError(f"Lamb: learning rate must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Lamb: betas must lie in [0, 1), got {betas}")
        if eps <= 0.0:
            raise ValueError(f"Lamb: eps must be > 0, got {eps}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        max_grad_norm=max_grad_norm, bias_correction=bias_correction, step=0)
        super().__init__(params, defaults)
        if cpu_block_elements is not None and cpu_block_elements <= 0:
            raise ValueError(f"Lamb: cpu_block_elements must be > 0 or None, got {cpu_block_elements}")
        self.cpu_block_elements = cpu_block_elements
        self.compile_update = compile_update
        self._scratch: Dict[torch.Tensor, torch.Tensor] = {}
        self._compiled: Optional[Callable] = None  # trust_ratio_update under torch.compile, made on first use

    @torch.no_grad()
    def _global_grad_norm(self) -> torch.Tensor:
        """||all gradients of all groups||_2 as a 0-dim tensor (no host sync)."""
        buckets: Dict[Tuple[torch.device, torch.dtype], List[torch.Tensor]] = defaultdict(list)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    buckets[(p.grad.device, p.grad.dtype)].append(p.grad)
        if not buckets:
            return torch.zeros(())
        sums = [torch.stack(torch._foreach_norm(grads)).float().square().sum() for grads in buckets.values()]
        target = sums[0].device
        return torch.stack([s.to(target) for s in sums]).sum().sqrt()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        global_norm = self._global_grad_norm()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("Lamb does not support sparse gradients")
            group["step"] += 1
            buckets: Dict[Tuple[torch.device, torch.dtype], List[torch.Tensor]] = defaultdict(list)
            for p in params:
                buckets[(p.device, p.dtype)].append(p)
            for (device, _), bucket in buckets.items():
                self._update_bucket(group, bucket, global_norm.to(device))
        return loss

    def _scratch_buffers(self, params: List[torch.Tensor]) -> List[torch.Tensor]:
        """One persistent work buffer per parameter (not optimizer state: never checkpointed).

        Fresh parameter-sized temporaries every step are what made this step slow on CPU: buffers
        that large come straight from mmap, so each step paid a page fault per 4 KiB, which costs far
        more per element than the in-place pass that writes it, and they took 2x the parameters at
        their peak where this takes 1x.
        """
        buffers = []
        for p in params:
            buffer = self._scratch.get(p)
            if buffer is None or buffer.shape != p.shape or buffer.dtype != p.dtype or buffer.device != p.device:
                buffer = self._scratch[p] = torch.empty_like(p, memory_format=torch.preserve_format)
            buffers.append(buffer)
        return buffers

    def _update_bucket(self, group: dict, params: List[torch.Tensor], global_norm: torch.Tensor) -> None:
        beta1, beta2 = group["betas"]
        step = group["step"]
        for p in params:
            if not self.state[p]:
                self.state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                self.state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        tensors = list(zip(params, [p.grad for p in params], [self.state[p]["exp_avg"] for p in params],
                           [self.state[p]["exp_avg_sq"] for p in params], self._scratch_buffers(params)))
        # Global clipping: scale = min(1, max_norm / norm), as a tensor so nothing waits for the device.
        max_norm = group["max_grad_norm"]
        scale = None
        if max_norm is not None and max_norm > 0:
            scale = torch.clamp(max_norm / global_norm.clamp(min=1e-30), max=1.0).to(params[0].dtype)
        if group["bias_correction"]:
            correction1, correction2 = 1.0 - beta1 ** step, 1.0 - beta2 ** step
        else:
            correction1 = correction2 = 1.0
        # (m / c1) / (sqrt(v / c2) + eps) == c * m / (sqrt(v) + eps * sqrt(c2)) with c = sqrt(c2) / c1:
        # the corrections become scalars folded into other kernels (fewer passes over the state).
        c = math.sqrt(correction2) / correction1
        eps = group["eps"] * math.sqrt(correction2)
        block = self.cpu_block_elements if params[0].device.type == "cpu" else None
        done: Dict[int, List[tuple]] = defaultdict(list)  # tensor -> its pieces so far: (w, u', ||w||, ||u'||)
        for pieces in _blocks(tensors, block):  # pieces: (tensor index, last piece?, (p, g, m, v, work) views)
            p, g, m, v, work = (list(views) for views in zip(*(views for _, _, views in pieces)))
            torch._foreach_copy_(work, g)  # work = g (p.grad is left as computed)
            if scale is not None:
                torch._foreach_mul_(work, scale)
            torch._foreach_lerp_(m, work, 1.0 - beta1)  # m = b1 m + (1 - b1) g
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, work, work, value=1.0 - beta2)  # v = b2 v + (1 - b2) g^2
            torch._foreach_copy_(work, v)
            torch._foreach_sqrt_(work)
            torch._foreach_add_(work, eps)  # work = sqrt(v) + eps'
            if group["weight_decay"] == 0:  # no decay, no trust ratio: w -= lr * c * m / work in one kernel
                torch._foreach_addcdiv_(p, m, work, value=-group["lr"] * c)
                continue
            # u = c * (m / work + (wd / c) w) = c * u'. The trust ratio ||w|| / ||u|| times u equals
            # ||w|| / ||u'|| times u', so c only matters where the ratio falls back to 1.
            torch._foreach_reciprocal_(work)
            torch._foreach_mul_(work, m)
            torch._foreach_add_(work, p, alpha=group["weight_decay"] / c)  # work = u'
            for (index, _, views), w_norm, u_norm in zip(pieces, torch._foreach_norm(p), torch._foreach_norm(work)):
                done[index].append((views[0], views[4], w_norm, u_norm))
            finished = [done.pop(index) for index, last, _ in pieces if last]
            if not finished:
                continue
            if block is None and self._compiling(params[0].device):  # whole tensors: one piece each
                self._compiled_update(group["lr"], c, finished)
            else:
                _apply_trust_ratios(group["lr"], c, finished)

    def _compiling(self, device: torch.device) -> bool:
        return self.compile_update if self.compile_update is not None else device.type == "cuda"

    def _compiled_update(self, lr: float, c: float, tensors: List[List[tuple]]) -> None:
        """``trust_ratio_update`` compiled: lr and c go in as 0-dim device tensors (filled on the device,
        no host copy), so a new lr each step reuses the same compiled code."""
        w = [pieces[0][0] for pieces in tensors]
        u = [pieces[0][1] for pieces in tensors]
        w_norms, u_norms = torch.stack([pieces[0][2] for pieces in tensors]), torch.stack([pieces[0][3] for pieces in tensors])
        scalars = dict(device=w_norms.device, dtype=w_norms.dtype)
        arguments = (w, u, w_norms, u_norms, torch.full((), -lr, **scalars), torch.full((), c, **scalars))
        if self._compiled is None:
            self._compiled = torch.compile(trust_ratio_update, fullgraph=True, dynamic=False)
            try:
                return self._compiled(*arguments)
            except Exception as err:  # noqa: BLE001 (any compiler failure: run eagerly from now on)
                warnings.warn(f"Lamb: torch.compile of the trust-ratio update failed, running it eagerly "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
                self._compiled = trust_ratio_update
        self._compiled(*arguments)


def trust_ratio_update(w: List[torch.Tensor], u: List[torch.Tensor], w_norms: torch.Tensor, u_norms: torch.Tensor,
                       neg_lr: torch.Tensor, c: torch.Tensor) -> None:
    """w -= lr * ratio * u' per tensor, ratio = ||w|| / ||u'|| (c where a norm is 0); w_norms, u_norms [n],
    neg_lr = -lr and c 0-dim. Eagerly the first ``_foreach_mul_`` pairs each tensor with a 0-dim ratio:
    one kernel per tensor on CUDA; compiled, inductor fuses it (module docstring)."""
    ratios = torch.where((w_norms > 0) & (u_norms > 0), w_norms / u_norms, c) * neg_lr  # [n]
    torch._foreach_mul_(u, list(ratios.to(u[0].dtype).unbind(0)))
    torch._foreach_add_(w, u)


def _apply_trust_ratios(lr: float, c: float, tensors: List[List[tuple]]) -> None:
    """w -= lr * ratio * u' per tensor, ratio = ||w|| / ||u'|| (c where a norm is 0); each tensor given
    as its pieces (w, u', ||w||, ||u'||), u' held in the work buffer."""
    def whole(piece_norms: List[torch.Tensor]) -> torch.Tensor:  # ||tensor|| from the norms of its pieces
        return piece_norms[0] if len(piece_norms) == 1 else torch.stack(piece_norms).norm()

    w_norms = torch.stack([whole([piece[2] for piece in pieces]) for pieces in tensors])
    u_norms = torch.stack([whole([piece[3] for piece in pieces]) for pieces in tensors])
    ratios = torch.where((w_norms > 0) & (u_norms > 0), w_norms / u_norms, torch.full_like(w_norms, c))
    w, u, piece_ratios = [], [], []
    for pieces, ratio in zip(tensors, ratios.to(tensors[0][0][0].dtype).unbind(0)):
        for piece in pieces:
            w.append(piece[0])
            u.append(piece[1])
            piece_ratios.append(ratio)
    torch._foreach_mul_(u, piece_ratios)
    torch._foreach_add_(w, u, alpha=-lr)


def _pieces(views: tuple, block: Optional[int]) -> List[tuple]:
    """Same-shaped tensors (w, g, m, v, work) split into flat element ranges of at most ``block`` elements
    (whole when block is None or a tensor is not contiguous)."""
    numel = views[0].numel()
    if block is None or numel <= block or not all(t.is_contiguous() for t in views):
        return [views]
    flat = [t.view(-1) for t in views]
    return [tuple(t[start:start + block] for t in flat) for start in range(0, numel, block)]


def _blocks(tensors: List[tuple], block: Optional[int]):
    """Yield lists of (tensor index, is its last piece, piece views) holding about ``block`` elements
    each (everything at once when block is None)."""
    pending, size = [], 0
    for index, views in enumerate(tensors):
        pieces = _pieces(views, block)
        for number, piece in enumerate(pieces):
            pending.append((index, number == len(pieces) - 1, piece))
            size += piece[0].numel()
            if block is not None and size >= block:
                yield pending
                pending, size = [], 0
    if pending:
        yield pending


def lamb_param_groups(model: nn.Module, weight_decay: float = 0.01) -> List[dict]:
    """Two groups as the reference: decay for weights, none for names with bias/gamma/beta/LayerNorm."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if any(key in name for key in NO_DECAY_KEYS) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_lamb(param_groups: Iterable, lr: float, kind: str, use_fused: bool = True) -> torch.optim.Optimizer:
    """Habana's FusedLamb on HPU when asked for and installed, else the multi-tensor ``Lamb`` above."""
    if kind == "hpu" and use_fused:
        from central.device import habana_optimizer_class

        fused = habana_optimizer_class("FusedLamb")
        if fused is not None:
            return fused(param_groups, lr=lr)
    return Lamb(param_groups, lr=lr)


class PolyWarmUpScheduler:
    """lr = base * p / warmup while p < warmup, then base * (1 - p) ** degree, with p = step / total_steps.

    ``step`` is the number of the optimizer step about to run (1, 2, ...): the optimizer's own count
    ``param_groups[0]['step'] + 1`` when it keeps one (Lamb, FusedLamb), else this scheduler's count.
    Call ``scheduler.step()`` before each ``optimizer.step()``, as the reference does; construction
    already sets the first step's lr. Past total_steps the lr stays 0.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: float, total_steps: int, degree: float = 0.5):
        if total_steps <= 0:
            raise ValueError(f"PolyWarmUpScheduler: total_steps must be > 0, got {total_steps}")
        if not 0.0 <= warmup <= 1.0:
            raise ValueError(f"PolyWarmUpScheduler: warmup is a fraction of total_steps in [0, 1], got {warmup}")
        self.optimizer = optimizer
        self.warmup = float(warmup)
        self.total_steps = int(total_steps)
        self.degree = float(degree)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = 0  # optimizer steps this scheduler has prepared
        self.step()

    def lr_at(self, step: int) -> List[float]:
        progress = min(step / self.total_steps, 1.0)
        if progress < self.warmup:
            factor = progress / self.warmup
        else:
            factor = (1.0 - progress) ** self.degree
        return [base * factor for base in self.base_lrs]

    def step(self) -> None:
        group = self.optimizer.param_groups[0]
        self.last_epoch = group["step"] + 1 if "step" in group else self.last_epoch + 1
        for group, lr in zip(self.optimizer.param_groups, self.lr_at(self.last_epoch)):
            group["lr"] = lr

    def get_last_lr(self) -> List[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"warmup": self.warmup, "total_steps": self.total_steps, "degree": self.degree,
                "base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.warmup = float(state["warmup"])
        self.total_steps = int(state["total_steps"])
        self.degree = float(state["degree"])
        self.base_lrs = [float(lr) for lr in state["base_lrs"]]
        self.last_epoch = int(state["last_epoch"])
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["initial_lr"] = base
        for group, lr in zip(self.optimizer.param_groups, self.lr_at(self.last_epoch)):
            group["lr"] = lr
