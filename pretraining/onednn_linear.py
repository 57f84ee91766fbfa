"""fp32 linear layers through oneDNN on the CPU: ``onednn_linear`` (F.linear's signature) and ``OneDnnLinear``.

ATen sends a CPU ``F.linear`` / ``addmm`` to MKL's sgemm. On AVX-512 AMD EPYC CPUs oneDNN's fp32
inner-product primitive (the one ``torch.ops.mkldnn._linear_pointwise`` runs, shipped in every x86
PyTorch wheel) computes BERT's forward and input-gradient products faster, while MKL stays faster for
most weight-gradient shapes ([out, N] @ [N, in]). So ``_OneDnnLinear`` runs the forward and the input
gradient through oneDNN and the weight gradient through ``torch.mm`` (MKL). Both libraries compute in
IEEE fp32 (``torch.backends.mkldnn.matmul.fp32_precision`` is "none" by default); results differ from
F.linear only in summation order (~1e-6 relative). Its share of a training step is measured with
``python -m benchmarks.pretraining_throughput --without linear``.

``onednn_linear`` falls back to ``F.linear`` wherever that path is not the plain case above:
no oneDNN in this torch build, a non-CPU or non-fp32 tensor, CPU autocast on (F.linear would run in
bf16 there), or torch.compile tracing. ``pretraining.cpu_kernels.use_cpu_kernels`` swaps it in where
``onednn_linear_pays_off`` (AVX-512); on an AVX2-only CPU MKL's sgemm was the faster of the two.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache  # asked on every onednn_linear call; the build does not change
def onednn_available() -> bool:
    """True when this torch build has oneDNN and its fp32 linear op (x86 and aarch64 wheels do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_linear_pays_off() -> bool:
    """Whether ``use_cpu_kernels`` puts oneDNN's linear in by default on this CPU: where ATen runs its
    AVX-512 kernels. There it was measured faster than MKL's sgemm for BERT's shapes; on an AVX2-only AMD
    EPYC it was measured slower, so MKL stays (docs/performance.md, the kernels' shares per machine)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _inner_product(x_2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    # x_2d [N, in] (any strides), weight [out, in] (any strides), bias [out] or None -> [N, out]
    return torch.ops.mkldnn._linear_pointwise(x_2d, weight, bias, "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    """y = x @ weight^T + bias: forward and input gradient by oneDNN, weight gradient by torch.mm (MKL)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        # x [..., in], weight [out, in], bias [out] or None -> [..., out]
        x_2d = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x_2d, weight)
        ctx.has_bias = bias is not None
        return _inner_product(x_2d, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x_2d, weight = ctx.saved_tensors
        grad_2d = grad.reshape(-1, grad.shape[-1])  # [N, out]
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:  # [N, out] @ [out, in]: an inner product with the weight's transpose
            grad_x = _inner_product(grad_2d, weight.t(), None).view(*grad.shape[:-1], weight.shape[1])
        if ctx.needs_input_grad[1]:
            grad_weight = grad_2d.t().mm(x_2d)  # [out, in]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_2d.sum(0)
        return grad_x, grad_weight, grad_bias


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN for fp32 CPU tensors outside autocast and compile."""
    plain_fp32_cpu = (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
                      and (bias is None or bias.dtype == torch.float32))
    if (not plain_fp32_cpu or torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling()
            or not onednn_available()):
        return F.linear(x, weight, bias)
    return _OneDnnLinear.apply(x, weight, bias)


class OneDnnLinear(nn.Linear):
    """Drop-in for ``nn.Linear`` (same parameters and state-dict keys) that runs ``onednn_linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn_linear(x, self.weight, self.bias)
