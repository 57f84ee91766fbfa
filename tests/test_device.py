"""central.device: device/mode/precision selection, and the HPU wiring exercised through a stand-in
for the Habana stack (``habana_frameworks``) that this test defines itself — the real one cannot be
installed here. The stand-in records what the code asks of it."""
import sys
import types
import warnings

import pytest
import torch

from central import device


class StandInHabana:
    """Builds fake ``habana_frameworks.*`` modules: mark_step counter, FusedLamb/FusedAdamW/FusedClipNorm."""

    def __init__(self):
        self.marks = 0
        self.clipped = []
        stand_in = self

        class FusedAdamW:
            def __init__(self, params, lr, **kwargs):
                self.params, self.lr, self.kwargs = list(params), lr, kwargs

        class FusedLamb(FusedAdamW):
            pass

        class FusedClipNorm:
            def __init__(self, params, max_norm):
                self.max_norm = max_norm

            def clip_norm(self, params):
                stand_in.clipped.append((len(params), self.max_norm))
                return torch.tensor(1.0)

        def mark_step():
            stand_in.marks += 1

        def module(name, **attrs):
            mod = types.ModuleType(name)
            mod.__dict__.update(attrs)
            return mod

        self.modules = {
            "habana_frameworks": module("habana_frameworks"),
            "habana_frameworks.torch": module("habana_frameworks.torch"),
            "habana_frameworks.torch.core": module("habana_frameworks.torch.core", mark_step=mark_step),
            "habana_frameworks.torch.hpex": module("habana_frameworks.torch.hpex"),
            "habana_frameworks.torch.hpex.optimizers": module("habana_frameworks.torch.hpex.optimizers",
                                                              FusedAdamW=FusedAdamW, FusedLamb=FusedLamb),
            "habana_frameworks.torch.hpex.normalization": module("habana_frameworks.torch.hpex.normalization",
                                                                 FusedClipNorm=FusedClipNorm),
            "habana_frameworks.torch.distributed": module("habana_frameworks.torch.distributed"),
            "habana_frameworks.torch.distributed.hccl": module("habana_frameworks.torch.distributed.hccl"),
        }
        self.FusedAdamW, self.FusedLamb = FusedAdamW, FusedLamb


@pytest.fixture
def habana(monkeypatch):
    stand_in = StandInHabana()
    for name, module in stand_in.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return stand_in


@pytest.fixture
def no_habana(monkeypatch):
    for name in list(sys.modules):
        if name.startswith("habana_frameworks"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "habana_frameworks", None)  # import fails like on a machine without it


def params():
    layer = torch.nn.Linear(4, 3)
    layer(torch.ones(2, 4)).pow(2).sum().backward()
    return list(layer.parameters())


def test_auto_prefers_hpu_when_the_habana_stack_imports(habana):
    assert device.resolve_device_kind("auto") == "hpu"
    assert device.resolve_device_kind("hpu") == "hpu"
    assert device.resolve_device_kind("cpu") == "cpu"
    assert device.torch_device("hpu") == torch.device("hpu")
    assert device.dist_backend("hpu") == "hccl"


def test_without_habana_auto_falls_back_and_hpu_is_refused(no_habana):
    assert device.habana_module() is None
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert device.resolve_device_kind("auto") == expected
    with pytest.raises(device.DeviceUnavailableError, match="--device hpu"):
        device.resolve_device_kind("hpu")
    if not torch.cuda.is_available():
        with pytest.raises(device.DeviceUnavailableError, match="--device cuda"):
            device.resolve_device_kind("cuda")
    with pytest.raises(device.DeviceUnavailableError, match="choose from"):
        device.resolve_device_kind("tpu")
    assert device.torch_device("cpu") == torch.device("cpu")
    assert (device.dist_backend("cpu"), device.dist_backend("cuda")) == ("gloo", "nccl")


def test_lazy_mode_marks_steps_only_on_hpu(habana):
    device.mark_step("hpu", "lazy")
    device.mark_step("hpu", "lazy")
    device.mark_step("hpu", "eager")
    device.mark_step("cpu", "lazy")
    assert habana.marks == 2
    assert device.mode_environment("hpu", "lazy") == {"PT_HPU_LAZY_MODE": "1"}
    assert device.mode_environment("hpu", "graph") == {"PT_HPU_LAZY_MODE": "0"}
    assert device.mode_environment("cpu", "lazy") == {}


def test_effective_mode_table():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert device.effective_mode("hpu", "lazy") == "lazy"
        assert device.effective_mode("cpu", None) == "eager"
        assert device.effective_mode("cuda", "graph") == "graph"
    with pytest.warns(UserWarning, match="lazy is an HPU mode"):
        assert device.effective_mode("cpu", "lazy") == "eager"
    with pytest.raises(ValueError, match="--mode"):
        device.effective_mode("cpu", "turbo")


def test_fused_optimizers_come_from_hpex_on_hpu(habana):
    assert device.habana_optimizer_class("FusedLamb") is habana.FusedLamb
    assert device.habana_optimizer_class("NoSuchOptimizer") is None
    optimizer = device.adamw(params(), "hpu", lr=1e-3, weight_decay=0.01, habana_fused=True)
    assert isinstance(optimizer, habana.FusedAdamW) and optimizer.lr == 1e-3
    assert optimizer.kwargs["weight_decay"] == 0.01
    norm = device.clip_grad_norm(params(), 1.0, "hpu", habana_fused=True)
    assert habana.clipped == [(2, 1.0)] and norm.item() == 1.0


def test_hpex_kernels_only_when_asked_for_as_the_reference(habana):
    """Without --use_fused_adam / --use_fused_clip_norm, HPU runs torch's AdamW and clipping."""
    optimizer = device.adamw(params(), "hpu", lr=1e-3)
    assert isinstance(optimizer, torch.optim.AdamW) and not isinstance(optimizer, habana.FusedAdamW)
    ps = params()
    before = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in ps]))
    assert torch.isclose(device.clip_grad_norm(ps, 1.0, "hpu"), before) and habana.clipped == []


def test_fused_flags_reach_the_fine_tuning_optimizer_and_loop(habana, tmp_path):
    """--use_fused_adam / --use_fused_clip_norm travel through FinetuneConfig into central.device."""
    from central.distributed import DistEnv
    from central.dllog import DLLogger
    from central.runtime import Runtime
    from finetuning.optim import build_optimizer
    from finetuning.train_loop import train
    from test_finetune_loop import make_args, qa_model, toy_features

    assert isinstance(build_optimizer(qa_model(), make_args(tmp_path, use_fused_adam=True), "hpu"), habana.FusedAdamW)
    assert not isinstance(build_optimizer(qa_model(), make_args(tmp_path), "hpu"), habana.FusedAdamW)
    hpu_on_cpu = Runtime("hpu", "eager", "fp32", torch.device("cpu"), DistEnv())  # the stand-in computes nothing
    for fused, clips in ((False, 0), (True, 2)):
        habana.clipped.clear()
        config = make_args(tmp_path, max_steps=2, logging_steps=0, use_fused_clip_norm=fused)
        assert train(qa_model(), toy_features(16), config, hpu_on_cpu, DLLogger(None, enabled=False)).global_step == 2
        assert len(habana.clipped) == clips and all(max_norm == 1.0 for _, max_norm in habana.clipped)


def test_cpu_uses_torch_optimizers_and_clipping(no_habana):
    assert device.habana_optimizer_class("FusedLamb") is None
    optimizer = device.adamw(params(), "cpu", lr=2e-5)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 2e-5
    ps = params()
    before = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in ps]))
    returned = device.clip_grad_norm(ps, 0.5, "cpu")
    after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in ps]))
    assert torch.isclose(returned, before) and before > 0.5 and torch.isclose(after, torch.tensor(0.5), atol=1e-4)


def test_autocast_precision():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with device.autocast("cpu", "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with device.autocast("cpu", "fp32"):
        assert (a @ b).dtype == torch.float32
    with pytest.raises(ValueError, match="precision"):
        device.autocast("cpu", "fp8")


def test_compile_only_in_graph_mode():
    module = torch.nn.Linear(2, 2)
    assert device.compile_for_mode(module, "cpu", "eager") is module
    assert device.compile_for_mode(module, "cpu", "lazy") is module
    compiled = device.compile_for_mode(module, "cpu", "graph")
    assert compiled is not module and getattr(compiled, "_orig_mod", None) is module  # compiled lazily, not run


def test_launcher_wires_hpu_flags_and_environment(habana, tmp_path):
    """With the stand-in stack, --device auto resolves to hpu: fused LAMB/AdamW flags and PT_HPU_LAZY_MODE."""
    import demo_bert
    from launcher_helpers import make_shard_dirs, split_script

    p1, p2 = make_shard_dirs(tmp_path)
    args = demo_bert.build_parser().parse_args(["pretraining", "--model_name_or_path", "large", "--data_type",
                                                "bf16", "-p", str(p1), str(p2), "-o", str(tmp_path)])
    plan = demo_bert.build_plan(args)
    assert plan.env["PT_HPU_LAZY_MODE"] == "1"
    flags = split_script(list(plan.commands[0].argv))[2]
    assert "--device=hpu" in flags and "--mode=lazy" in flags and "--use_fused_lamb" in flags
    args = demo_bert.build_parser().parse_args(["finetuning", "--model_name_or_path", "base", "--data_type",
                                                "fp32", "-p", str(tmp_path), "--mode", "graph"])
    plan = demo_bert.build_plan(args)
    flags = split_script(list(plan.commands[0].argv))[2]
    assert plan.env["PT_HPU_LAZY_MODE"] == "0"
    assert {"--device=hpu", "--mode=graph", "--use_fused_adam", "--use_fused_clip_norm"} <= set(flags)
