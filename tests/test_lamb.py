"""LAMB against a plain per-tensor reference, its state round trip, param groups, and the poly schedule."""
import io
import math
import sys
import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pretraining.bert_config import BertConfig
from pretraining.lamb import Lamb, PolyWarmUpScheduler, lamb_param_groups, make_lamb, trust_ratio_update
from pretraining.modeling import BertForPreTraining


def reference_lamb_step(params, grads, states, step, lr, weight_decays, betas=(0.9, 0.999), eps=1e-6,
                        max_grad_norm=1.0):
    """NVLAMB written out per tensor in the plainest form (float64 math), returning new params."""
    beta1, beta2 = betas
    global_norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    clip = max_grad_norm / global_norm if global_norm > max_grad_norm else 1.0
    new_params = []
    for w, g, state, wd in zip(params, grads, states, weight_decays):
        w, g = w.double(), g.double() * clip
        state["m"] = beta1 * state["m"] + (1 - beta1) * g
        state["v"] = beta2 * state["v"] + (1 - beta2) * g * g
        m_hat = state["m"] / (1 - beta1 ** step)
        v_hat = state["v"] / (1 - beta2 ** step)
        update = m_hat / (v_hat.sqrt() + eps) + wd * w
        ratio = 1.0
        w_norm, u_norm = float(w.norm()), float(update.norm())
        if wd != 0 and w_norm > 0 and u_norm > 0:
            ratio = w_norm / u_norm
        new_params.append((w - lr * ratio * update).float())
    return new_params


def make_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(6, 5, generator=gen), torch.randn(7, generator=gen), torch.randn(3, 4, generator=gen)]
    zero_bias = torch.zeros(5)  # ||w|| = 0: trust ratio must fall back to 1
    return weights + [zero_bias]


def grads_for(step, scale, seed=0):
    gen = torch.Generator().manual_seed(1000 * seed + step)
    return [torch.randn(s, generator=gen) * scale for s in [(6, 5), (7,), (3, 4), (5,)]]


@pytest.mark.parametrize("grad_scale", [10.0, 0.01])  # clipping active / inactive
@pytest.mark.parametrize("block", [None, 7, 1 << 19])  # whole tensors / 30-element weight in 5 pieces / default
def test_steps_match_per_tensor_reference(grad_scale, block):
    initial = make_problem()
    params = [torch.nn.Parameter(w.clone()) for w in initial]
    # Group 0 decays (weights and the zero "bias"), group 1 does not: trust ratio only in group 0.
    optimizer = Lamb([{"params": [params[0], params[3]], "weight_decay": 0.01},
                      {"params": [params[1], params[2]], "weight_decay": 0.0}], lr=0.05, cpu_block_elements=block)
    ref_params = [w.clone() for w in initial]
    ref_states = [{"m": torch.zeros_like(w, dtype=torch.float64), "v": torch.zeros_like(w, dtype=torch.float64)}
                  for w in initial]
    decays = [0.01, 0.0, 0.0, 0.01]
    for step in range(1, 4):
        grads = grads_for(step, grad_scale)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        ref_params = reference_lamb_step(ref_params, grads, ref_states, step, 0.05, decays)
        for p, expected in zip(params, ref_params):
            torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=1e-5)
        for p, g in zip(params, grads):
            assert torch.equal(p.grad, g)  # clipping does not rewrite the gradients
    assert optimizer.param_groups[0]["step"] == 3
    assert not torch.equal(params[3].detach(), torch.zeros(5))  # the zero bias moved (ratio 1)


def test_state_round_trips_through_weights_only_load():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

    def train_step(model, optimizer, scheduler, seed):
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(1, 50, (2, 8), generator=gen)
        mlm, nsp = model(ids, torch.zeros_like(ids), torch.ones_like(ids), torch.tensor([[1, 2], [3, 0]]))
        (mlm.square().mean() + nsp.square().mean()).backward()
        scheduler.step()
        optimizer.step()
        optimizer.zero_grad()

    def build(state=None):
        model = BertForPreTraining(config)
        if state:
            model.load_state_dict(state["model"])
        optimizer = Lamb(lamb_param_groups(model), lr=1e-2)
        scheduler = PolyWarmUpScheduler(optimizer, warmup=0.5, total_steps=10)
        if state:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        return model, optimizer, scheduler

    model, optimizer, scheduler = build()
    for seed in range(2):
        train_step(model, optimizer, scheduler, seed)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    restored = build(torch.load(buffer, weights_only=True))
    for seed in range(2, 4):
        train_step(model, optimizer, scheduler, seed)
        train_step(*restored, seed)
    for (name, a), b in zip(model.state_dict().items(), restored[0].state_dict().values()):
        assert torch.equal(a, b), name
    assert restored[1].param_groups[0]["step"] == 4
    assert restored[1].param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_param_groups_split_bias_and_layernorm():
    model = BertForPreTraining(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=64))
    decay, no_decay = lamb_param_groups(model, weight_decay=0.02)
    assert decay["weight_decay"] == 0.02 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "bert.encoder.layer.0.attention.self.query.weight" in decay_names
    assert "bert.embeddings.word_embeddings.weight" in decay_names
    assert "bert.embeddings.LayerNorm.weight" in no_decay_names
    assert "cls.predictions.bias" in no_decay_names
    assert all("bias" in n or "LayerNorm" in n for n in no_decay_names)
    assert len(decay_names) + len(no_decay_names) == len(list(model.parameters()))


def test_poly_warmup_schedule_values():
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = Lamb([param], lr=1.0)
    scheduler = PolyWarmUpScheduler(optimizer, warmup=0.25, total_steps=8)
    seen = []
    for _ in range(10):
        scheduler.step()
        seen.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.ones(2)
        optimizer.step()
    # steps 1, 2: linear warm-up to step 2 = 0.25 * 8; then (1 - step/8) ** 0.5; 0 from step 8 on.
    expected = [0.5, (1 - 2 / 8) ** 0.5, (1 - 3 / 8) ** 0.5, (1 - 4 / 8) ** 0.5, (1 - 5 / 8) ** 0.5,
                (1 - 6 / 8) ** 0.5, (1 - 7 / 8) ** 0.5, 0.0, 0.0, 0.0]
    assert seen == pytest.approx(expected)
    state = scheduler.state_dict()
    assert state["last_epoch"] == 10 and state["base_lrs"] == [1.0]


def test_schedule_without_optimizer_step_count():
    """An optimizer that keeps no 'step' in its groups: the scheduler counts itself."""
    param = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([param], lr=2.0)
    scheduler = PolyWarmUpScheduler(optimizer, warmup=0.5, total_steps=4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2.0 * 0.25 / 0.5)  # step 1 set at construction
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2.0 * (1 - 2 / 4) ** 0.5)
    fresh = PolyWarmUpScheduler(torch.optim.SGD([param], lr=2.0), warmup=0.5, total_steps=4)
    fresh.load_state_dict(scheduler.state_dict())
    assert fresh.optimizer.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])


def test_make_lamb_picks_fused_on_hpu_only(monkeypatch):
    param = torch.nn.Parameter(torch.ones(1))
    assert type(make_lamb([param], lr=0.1, kind="cpu", use_fused=True)) is Lamb
    assert type(make_lamb([param], lr=0.1, kind="hpu", use_fused=True)) is Lamb  # no Habana stack here

    class StandInFusedLamb(torch.optim.SGD):
        """Stand-in for habana_frameworks.torch.hpex.optimizers.FusedLamb, defined by this test."""

    stand_in = types.ModuleType("habana_frameworks.torch.hpex.optimizers")
    stand_in.FusedLamb = StandInFusedLamb
    for name in ["habana_frameworks", "habana_frameworks.torch", "habana_frameworks.torch.hpex"]:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "habana_frameworks.torch.hpex.optimizers", stand_in)
    fused = make_lamb([param], lr=0.1, kind="hpu", use_fused=True)
    assert type(fused) is StandInFusedLamb and fused.param_groups[0]["lr"] == 0.1
    assert type(make_lamb([param], lr=0.1, kind="hpu", use_fused=False)) is Lamb
    assert type(make_lamb([param], lr=0.1, kind="cpu", use_fused=True)) is Lamb


def test_bad_hyperparameters_are_rejected():
    param = torch.nn.Parameter(torch.ones(1))
    with pytest.raises(ValueError, match="learning rate"):
        Lamb([param], lr=-1.0)
    with pytest.raises(ValueError, match="total_steps"):
        PolyWarmUpScheduler(Lamb([param], lr=1.0), warmup=0.1, total_steps=0)
    with pytest.raises(ValueError, match="cpu_block_elements"):
        Lamb([param], lr=1.0, cpu_block_elements=0)


def test_cpu_blocks_match_whole_tensor_update_on_a_model():
    """The cache-sized blocks (tensors split into pieces, pieces grouped) give the whole-tensor update."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)
    whole_model = BertForPreTraining(config)
    blocked_model = BertForPreTraining(config)
    blocked_model.load_state_dict(whole_model.state_dict())
    initial = {name: value.clone() for name, value in whole_model.state_dict().items()}
    whole = Lamb(lamb_param_groups(whole_model), lr=1e-2, cpu_block_elements=None)
    blocked = Lamb(lamb_param_groups(blocked_model), lr=1e-2, cpu_block_elements=1000)  # [104, 32] table: 4 pieces
    for step in range(3):
        gen = torch.Generator().manual_seed(step)
        for a, b in zip(whole_model.parameters(), blocked_model.parameters()):
            a.grad = torch.randn(a.shape, generator=gen) * 0.1
            b.grad = a.grad.clone()
        whole.step()
        blocked.step()
        for (name, a), b in zip(whole_model.named_parameters(), blocked_model.parameters()):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=name)
    for name, value in blocked_model.named_parameters():
        assert not torch.equal(value.detach(), initial[name]), name  # every tensor, every piece was updated


def bert_lamb(layers: int, **lamb_options):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64)
    model = BertForPreTraining(config)
    return model, Lamb(lamb_param_groups(model), lr=1e-2, cpu_block_elements=None, **lamb_options)


def set_grads(model, step):
    gen = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * 0.1


def test_compiled_trust_ratio_update_matches_the_eager_one():
    """The accelerator layout (whole tensors) with the trust-ratio update compiled, as on CUDA, gives the
    eager update's parameters (inductor's CPU backend here; lr changes every step without recompiling)."""
    torch._dynamo.utils.counters.clear()
    eager_model, eager = bert_lamb(2, compile_update=False)
    compiled_model, compiled = bert_lamb(2, compile_update=True)
    for step in range(3):
        for group in (eager.param_groups + compiled.param_groups):
            group["lr"] = 1e-2 / (step + 1)
        set_grads(eager_model, step)
        set_grads(compiled_model, step)
        eager.step()
        compiled.step()
        for (name, a), b in zip(eager_model.named_parameters(), compiled_model.parameters()):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=name)
    assert compiled._compiled is not None and compiled._compiled is not trust_ratio_update  # really compiled
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # a new lr is an input, not a recompile


class FastPathCheck(TorchDispatchMode):
    """Records every aten op of a step, and the _foreach_ ops whose tensor lists pair tensors of different
    shapes: on CUDA such a call leaves the multi-tensor fast path for one kernel per tensor
    (ATen's check_fast_path_restrictions: same sizes and strides, index by index)."""

    def __init__(self):
        super().__init__()
        self.ops, self.fallbacks = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        lists = [a for a in args if isinstance(a, (list, tuple)) and a and all(isinstance(t, torch.Tensor) for t in a)]
        if str(func).startswith("aten._foreach_") and len(lists) > 1:
            if any(len({tuple(t.shape) for t in tensors}) > 1 for tensors in zip(*lists)):
                self.fallbacks.append(str(func))
        return func(*args, **(kwargs or {}))


def step_under_check(layers: int, compile_update: bool):
    """The second step of a Lamb over a BERT of ``layers`` layers (the first creates the state and, when
    compiling, the compiled update), checked op by op; the compiled update runs outside the check."""
    from torch.utils._python_dispatch import _disable_current_modes

    model, optimizer = bert_lamb(layers, compile_update=compile_update)
    set_grads(model, 0)
    optimizer.step()
    calls = []
    if compile_update:
        compiled = optimizer._compiled

        def outside_the_check(*args):
            calls.append(len(args[0]))
            with _disable_current_modes():
                return compiled(*args)
        optimizer._compiled = outside_the_check
    set_grads(model, 1)
    with FastPathCheck() as check:
        optimizer.step()
    return check, calls


def test_accelerator_update_stays_on_the_multi_tensor_fast_path():
    """Eagerly, the trust ratio pairs each tensor with its 0-dim ratio (one kernel per tensor on CUDA);
    with that part compiled, no op of the step leaves the fast path, and the step dispatches the same
    number of ops whatever the number of parameter tensors."""
    eager, _ = step_under_check(2, compile_update=False)
    assert eager.fallbacks == ["aten._foreach_mul_.List"]  # the trust ratio, once per step
    two_layers, calls = step_under_check(2, compile_update=True)
    assert two_layers.fallbacks == [] and len(calls) == 1  # one compiled call: the decayed group
    four_layers, more = step_under_check(4, compile_update=True)
    assert four_layers.fallbacks == [] and more[0] > calls[0]
    assert len(four_layers.ops) == len(two_layers.ops)  # no op per tensor
