"""pretraining/onednn_linear.py: F.linear's values and gradients through oneDNN, and the fallbacks."""
import pytest
import torch
import torch.nn.functional as F

from pretraining import onednn_linear as onednn
from pretraining.bert_config import BertConfig
from pretraining.cpu_kernels import KERNEL_NAMES, kernels_in_use, use_cpu_kernels
from pretraining.modeling import BertForPreTraining

pytestmark = pytest.mark.skipif(not onednn.onednn_available(), reason="this torch build has no oneDNN")


def float64_reference(x, weight, bias, upstream):
    """Output and gradients of F.linear computed in float64 (the values both libraries approximate)."""
    leaves = [t.detach().double().requires_grad_(t.requires_grad) for t in (x, weight)]
    leaves.append(None if bias is None else bias.detach().double().requires_grad_())
    out = F.linear(*leaves)
    out.backward(upstream.double())
    return out, [None if t is None else t.grad for t in leaves]


@pytest.mark.parametrize("case", ["2d", "3d", "strided input", "no bias", "frozen input", "empty"])
def test_values_and_gradients_match_float64(case):
    gen = torch.Generator().manual_seed(0)
    rows = {"empty": 0, "2d": 37}.get(case, 12)
    x = torch.randn(3, rows, 48, generator=gen) if case != "2d" else torch.randn(rows, 48, generator=gen)
    if case == "strided input":
        x = torch.randn(3, 12, 96, generator=gen)[..., ::2]  # [3, 12, 48], not contiguous
        assert not x.is_contiguous()
    x.requires_grad_(case != "frozen input")
    weight = torch.randn(40, 48, generator=gen, requires_grad=True)
    bias = None if case == "no bias" else torch.randn(40, generator=gen, requires_grad=True)
    out = onednn.onednn_linear(x, weight, bias)
    upstream = torch.randn(out.shape, generator=gen)
    out.backward(upstream)
    expected, (grad_x, grad_weight, grad_bias) = float64_reference(x, weight, bias, upstream)
    assert out.shape == expected.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weight.grad.double(), grad_weight, atol=1e-5, rtol=1e-5)
    if bias is not None:
        torch.testing.assert_close(bias.grad.double(), grad_bias, atol=1e-5, rtol=1e-5)
    if case == "frozen input":
        assert x.grad is None
    else:
        torch.testing.assert_close(x.grad.double(), grad_x, atol=1e-5, rtol=1e-5)
    if case != "empty":
        assert out.grad_fn.name().endswith("_OneDnnLinearBackward")  # the oneDNN path ran, not the fallback


def test_falls_back_to_f_linear_where_onednn_is_not_the_plain_case(monkeypatch):
    x, weight, bias = torch.randn(4, 8), torch.randn(6, 8, requires_grad=True), torch.randn(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # F.linear's bf16 matmul, as autocast asks
        out = onednn.onednn_linear(x, weight, bias)
    assert out.dtype == torch.bfloat16
    double = onednn.onednn_linear(x.double(), weight.double(), bias.double())
    assert double.dtype == torch.float64 and "OneDnn" not in double.grad_fn.name()
    monkeypatch.setattr(onednn, "onednn_available", lambda: False)
    out = onednn.onednn_linear(x, weight, bias)
    assert "OneDnn" not in out.grad_fn.name()
    assert torch.equal(out, F.linear(x, weight, bias))


def tiny_config() -> BertConfig:
    return BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def test_use_cpu_kernels_swaps_every_linear_and_keeps_the_state_dict():
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config())
    keys = list(model.state_dict())
    linears = [name for name, m in model.named_modules() if type(m) is torch.nn.Linear]
    use_cpu_kernels(model, linear=True)
    swapped = [name for name, m in model.named_modules() if type(m) is onednn.OneDnnLinear]
    assert swapped == linears and len(swapped) == 2 * 6 + 3  # 6 per layer, pooler, MLM transform, NSP
    assert model.kernels.linear is onednn.onednn_linear  # the concatenated q/k/v projections
    assert list(model.state_dict()) == keys


def test_use_cpu_kernels_leaves_linears_alone_without_onednn(monkeypatch):
    monkeypatch.setattr("pretraining.cpu_kernels.onednn_available", lambda: False)
    model = BertForPreTraining(tiny_config())
    use_cpu_kernels(model, linear=True)  # asked for, but this build has no oneDNN
    assert not any(type(m) is onednn.OneDnnLinear for m in model.modules())
    assert model.kernels.linear is F.linear


@pytest.mark.parametrize("capability, swapped", [("AVX512", True), ("AVX512_BF16", True), ("AVX2", False),
                                                  ("DEFAULT", False)])
def test_by_default_onednn_linear_only_where_aten_runs_avx512(monkeypatch, capability, swapped):
    """Measured faster than MKL's sgemm on an AVX-512 EPYC and slower on an AVX2-only one: the default
    follows the CPU; ``linear=True`` forces it (the benchmark's --onednn_linear on), ``False`` leaves it out."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert onednn.onednn_linear_pays_off() == swapped
    assert ("linear" in kernels_in_use()) == swapped
    assert kernels_in_use(linear=True) == KERNEL_NAMES and "linear" not in kernels_in_use(linear=False)
    model = BertForPreTraining(tiny_config())
    use_cpu_kernels(model)
    assert any(type(m) is onednn.OneDnnLinear for m in model.modules()) == swapped
    assert (model.kernels.linear is onednn.onednn_linear) == swapped
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())  # the other kernels go in regardless
