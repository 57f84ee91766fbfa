"""--optimizer: AdamW beside LAMB (clipping, decay groups, checkpoints that remember the choice)."""
import pytest
import torch
from torch import nn

from central.checkpoint import list_checkpoints
from pretraining.lamb import Lamb
from pretraining.optimizers import ADAMW_EPS, MAX_GRAD_NORM, clip_before_step, make_optimizer
from pretraining.run_pretraining import main
from pretraining_runs import single_thread  # noqa: F401  (autouse fixture)
from pretraining_runs import newest_checkpoint, pretraining_args, same_tensors, step_losses
from pretraining_shards import make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("shards"), num_files=2, samples=20, seed=5)


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense, self.LayerNorm, self.out = nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)  # BERT's names


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return TinyModel()


def with_gradients(model: nn.Module, scale: float) -> nn.Module:
    for p in model.parameters():
        p.grad = torch.full_like(p, scale)
    return model


def global_norm(model: nn.Module) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()


@pytest.mark.parametrize("name, expected", [("adamw", torch.optim.AdamW), ("lamb", Lamb)])
def test_both_optimizers_decay_weights_but_not_biases_or_layernorm(name, expected):
    model = tiny_model()
    optimizer = make_optimizer(name, model, 1e-3, "cpu")
    assert isinstance(optimizer, expected)
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    assert {id(p) for p in decay["params"]} == {id(model.dense.weight), id(model.out.weight)}
    assert len(no_decay["params"]) == 4  # two biases, LayerNorm weight and bias
    if name == "adamw":
        assert decay["eps"] == ADAMW_EPS == 1e-6


def test_adamw_is_clipped_to_the_global_norm_and_lamb_clips_inside_its_step():
    model = with_gradients(tiny_model(), 0.5)
    assert global_norm(model) > 3 * MAX_GRAD_NORM
    clip_before_step("adamw", model, "cpu")
    assert global_norm(model) == pytest.approx(MAX_GRAD_NORM, rel=1e-5)
    small = with_gradients(tiny_model(), 1e-3)  # already under the bound: untouched
    clip_before_step("adamw", small, "cpu")
    assert all(torch.equal(p.grad, torch.full_like(p, 1e-3)) for p in small.parameters())
    lamb = with_gradients(tiny_model(), 0.5)
    before = global_norm(lamb)
    clip_before_step("lamb", lamb, "cpu")  # LAMB's own step clips; clipping twice would change nothing but time
    assert global_norm(lamb) == before


def test_adamw_run_resumes_exactly_and_its_checkpoints_say_adamw(data, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(pretraining_args(data, whole, "--optimizer", "adamw", steps=4)) == 0
    assert main(pretraining_args(data, parts, "--optimizer", "adamw", "--steps_this_run", "2", steps=4)) == 0
    assert main(pretraining_args(data, parts, "--optimizer", "adamw", "--resume_from_checkpoint", steps=4)) == 0
    assert step_losses(parts) == step_losses(whole) and sorted(step_losses(whole)) == [1, 2, 3, 4]
    saved = newest_checkpoint(whole)
    assert saved["optimizer_name"] == "adamw"
    assert {"exp_avg", "exp_avg_sq"} <= set(next(iter(saved["optimizer"]["state"].values())))
    assert same_tensors(saved["model"], newest_checkpoint(parts)["model"])


def test_adamw_and_lamb_take_different_steps(data, tmp_path):
    """The flag reaches the training loop: the same data and seed, other updates from step 2 on."""
    assert main(pretraining_args(data, tmp_path / "lamb", steps=3)) == 0
    assert main(pretraining_args(data, tmp_path / "adamw", "--optimizer", "adamw", steps=3)) == 0
    lamb, adamw = step_losses(tmp_path / "lamb"), step_losses(tmp_path / "adamw")
    assert lamb[1] == adamw[1]  # the same initial weights and first batch
    assert abs(lamb[3] - adamw[3]) > 1e-3


def test_resuming_with_another_optimizer_is_refused_and_a_new_phase_takes_only_the_weights(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(pretraining_args(data, out, "--steps_this_run", "2", steps=4)) == 0  # LAMB
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    capsys.readouterr()
    assert main(pretraining_args(data, out, "--optimizer", "adamw", "--resume_from_checkpoint", steps=4)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was trained with --optimizer lamb: resume it with the same optimizer, not adamw" in err[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    init = list_checkpoints(out / "checkpoints")[-1][1]
    assert main(pretraining_args(data, tmp_path / "adamw", "--optimizer", "adamw", "--init_checkpoint", str(init),
                                 steps=1)) == 0
    assert "holds lamb moments; --optimizer adamw starts from its weights with fresh moments" in capsys.readouterr().out
    state = newest_checkpoint(tmp_path / "adamw")["optimizer"]["state"]
    assert all(float(s["step"]) == 1.0 for s in state.values())  # fresh moments: one step, not 2 + 1
