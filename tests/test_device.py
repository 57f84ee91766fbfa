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
    """Builds fake ``habana_frameworks.*`` modules: mark_step counter, FusedLamb/FusedAdamW/FusedClipNorm.

    The optimizers are torch optimizers (plain SGD steps, counted) with the interfaces of Habana's: both
    count ``group["step"]`` as hpex does, FusedAdamW keeps torch's ``zero_grad(set_to_none=True)``, and
    FusedLamb's ``zero_grad`` takes no argument and sets the gradients to None, as hpex's does (its
    default ``set_grad_none=True``)."""

    def __init__(self):
        self.marks = 0
        self.clipped = []
        self.steps = 0
        stand_in = self

        class FusedAdamW(torch.optim.Optimizer):
            def __init__(self, params, lr, **kwargs):
                super().__init__(params, {"lr": lr})
                self.lr, self.kwargs = lr, kwargs

            @torch.no_grad()
            def step(self, closure=None):
                stand_in.steps += 1
                for group in self.param_groups:
                    group["step"] = group.get("step", 0) + 1
                    for p in group["params"]:
                        if p.grad is not None:
                            p.add_(p.grad, alpha=-group["lr"])

        class FusedLamb(FusedAdamW):
            def zero_grad(self):  # noqa: D102  (hpex's signature: no set_to_none)
                for group in self.param_groups:
                    for p in group["params"]:
                        p.grad = None

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


def test_one_zero_grad_for_torch_and_hpex_optimizers(habana):
    """hpex FusedLamb.zero_grad() takes no argument (a TypeError with set_to_none=True); torch's
    optimizers and hpex FusedAdamW take set_to_none. central.device.zero_grad drops the gradients of all."""
    for make in (habana.FusedLamb, habana.FusedAdamW, lambda ps, lr: torch.optim.SGD(ps, lr=lr)):
        ps = params()
        optimizer = make(ps, lr=0.1)
        device.zero_grad(optimizer)
        assert all(p.grad is None for p in ps)
    with pytest.raises(TypeError):
        habana.FusedLamb(params(), lr=0.1).zero_grad(set_to_none=True)  # what the loops called before


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
    with pytest.warns(UserWarning, match="lazy is an HPU mode; running eager on cpu"):
        assert device.effective_mode("cpu", "lazy") == "eager"
    with pytest.warns(UserWarning, match=r"on cuda it runs as --mode graph \(torch.compile\)"):
        assert device.effective_mode("cuda", "lazy") == "graph"  # Gaudi's whole-graph mode = compile on a GPU
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


def test_pretraining_loop_runs_with_hpex_fused_lamb(habana, tmp_path):
    """The real pre-training loop on an "hpu" runtime whose tensors stay on the CPU: --use_fused_lamb
    takes the stand-in FusedLamb, whose zero_grad() takes no argument (the loop used to call it with
    set_to_none=True: a TypeError at the first step); lazy mode marks a step after every backward and
    after every optimizer step."""
    import time

    from central.distributed import DistEnv
    from central.runtime import Runtime
    from pretraining.config import PretrainingConfig
    from pretraining.fault_injection import InjectedFaults
    from pretraining.run_pretraining import build_parser
    from pretraining.run_setup import plan_run
    from pretraining.training import build_session, train_loop
    from pretraining_runs import pretraining_args
    from pretraining_shards import make_dataset

    data = make_dataset(tmp_path / "shards", num_files=1, samples=16, seed=3)
    argv = pretraining_args(data, tmp_path / "run", "--use_fused_lamb", "--mode", "lazy", steps=3, accumulation=2)
    cfg = PretrainingConfig.from_args(build_parser().parse_args(argv))
    plan = plan_run(cfg)
    hpu_on_cpu = Runtime("hpu", "lazy", "fp32", torch.device("cpu"), DistEnv())  # the stand-in computes nothing
    session = build_session(cfg, plan, hpu_on_cpu, InjectedFaults())
    try:
        assert isinstance(session.optimizer, habana.FusedLamb)
        assert train_loop(cfg, plan, session, time.time()) == 0
    finally:
        session.close()
    assert habana.steps == 3 and habana.marks == 3 * (2 + 1)
    assert all(p.grad is None for p in session.model.parameters())  # FusedLamb.zero_grad() ran
    assert (tmp_path / "run" / "checkpoints" / "ckpt_3.pt").exists()


def test_fine_tuning_loop_runs_with_hpex_fused_adamw(habana, tmp_path):
    """--use_fused_adam on HPU: the stand-in FusedAdamW (torch's zero_grad signature) steps every time."""
    from central.distributed import DistEnv
    from central.dllog import DLLogger
    from central.runtime import Runtime
    from finetuning.train_loop import train
    from test_finetune_loop import make_args, qa_model, toy_features

    model = qa_model()
    before = [p.detach().clone() for p in model.parameters()]
    hpu_on_cpu = Runtime("hpu", "eager", "fp32", torch.device("cpu"), DistEnv())
    config = make_args(tmp_path, max_steps=3, logging_steps=0, use_fused_adam=True)
    assert train(model, toy_features(32), config, hpu_on_cpu, DLLogger(None, enabled=False)).global_step == 3
    assert habana.steps == 3
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))


def test_large_on_cuda_compiles(tmp_path, monkeypatch):
    """The launcher's default for large is the reference's --mode lazy; on a CUDA machine the script
    resolves that to graph mode (torch.compile), not to eager."""
    import demo_bert
    from launcher.machine import Machine
    from launcher_helpers import make_shard_dirs, split_script

    p1, p2 = make_shard_dirs(tmp_path)
    args = demo_bert.build_parser().parse_args(["pretraining", "--model_name_or_path", "large", "--data_type",
                                                "bf16", "-p", str(p1), str(p2), "-o", str(tmp_path)])
    plan = demo_bert.build_plan(args, Machine("cuda"))
    flags = split_script(list(plan.commands[0].argv))[2]
    mode = next(flag.split("=", 1)[1] for flag in flags if flag.startswith("--mode="))
    assert mode == "lazy" and "PT_HPU_LAZY_MODE" not in plan.env
    with pytest.warns(UserWarning, match="graph"):
        assert device.effective_mode("cuda", mode) == "graph"
    with pytest.warns(UserWarning, match="eager"):
        assert device.effective_mode("cpu", mode) == "eager"  # the CPU keeps its eager kernels
