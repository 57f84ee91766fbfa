"""The pre-training engine in-process on a tiny model: exact resume (also across the phase boundary),
checkpoints, logging, accumulation, config handling, precision and modes, HF export."""
import os
import warnings

import pytest
import torch

from central.checkpoint import list_checkpoints
from pretraining.lamb import PolyWarmUpScheduler
from pretraining.run_pretraining import main
from pretraining_runs import single_thread  # noqa: F401  (autouse fixture)
from pretraining_runs import (log_records, newest_checkpoint, pretraining_args, same_tensors, step_losses,
                              write_config)
from pretraining_shards import VOCAB_SIZE, make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Phase-1 shards (L=32, P=5) and phase-2 shards (L=64, P=8), as the reference's two data sets."""
    root = tmp_path_factory.mktemp("shards")
    return {1: make_dataset(root / "phase1", num_files=3, samples=20, seed=1),
            2: make_dataset(root / "phase2", num_files=2, samples=12, seq_len=64, max_pred=8, seed=2),
            "all_slots": make_dataset(root / "all_slots", num_files=2, samples=16, seed=3, all_slots=True)}


def phase_args(data, out, phase, *extra, steps=4):
    if phase == 1:
        return pretraining_args(data[1], out, *extra, steps=steps)
    return pretraining_args(data[2], out, "--phase2", "--phase1_end_step", "4", "--resume_from_checkpoint",
                            "--learning_rate", "1e-3", *extra, steps=steps, seq_len=64, max_pred=8)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """Phase 1 (4 steps) then phase 2 (4 steps), no interruption: the reference for the resume tests."""
    out = tmp_path_factory.mktemp("uninterrupted")
    assert main(phase_args(data, out, 1)) == 0
    phase1_model = newest_checkpoint(out)["model"]
    assert main(phase_args(data, out, 2)) == 0
    return out, phase1_model


def test_exact_resume_across_the_phase_boundary(data, uninterrupted, tmp_path):
    reference, _ = uninterrupted
    out = tmp_path / "stopped"
    assert main(phase_args(data, out, 1, "--steps_this_run", "3", "--num_steps_per_checkpoint", "5")) == 0
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [3]  # saved at the end of the run
    assert main(phase_args(data, out, 1, "--resume_from_checkpoint")) == 0
    assert main(phase_args(data, out, 2, "--steps_this_run", "1")) == 0
    assert main(phase_args(data, out, 2, "--steps_this_run", "2")) == 0
    assert main(phase_args(data, out, 2)) == 0
    expected, got = step_losses(reference), step_losses(out)
    assert sorted(expected) == list(range(1, 9))  # phase 2 logs steps 5..8 (phase1_end_step 4 + its own)
    assert got == expected  # bit-identical floats at every step
    assert same_tensors(newest_checkpoint(out)["model"], newest_checkpoint(reference)["model"])


def test_same_seed_same_losses_other_seed_differs(data, uninterrupted, tmp_path):
    reference, _ = uninterrupted
    assert main(phase_args(data, tmp_path / "again", 1)) == 0
    assert step_losses(tmp_path / "again") == {k: v for k, v in step_losses(reference).items() if k <= 4}
    assert main(phase_args(data, tmp_path / "other", 1, "--seed", "12")) == 0
    assert step_losses(tmp_path / "other")[1] != step_losses(reference)[1]


def test_checkpoints_are_plain_data_named_with_the_phase_offset(uninterrupted):
    reference, _ = uninterrupted
    steps = [s for s, _ in list_checkpoints(reference / "checkpoints")]
    assert steps == [4, 6, 8]  # every 2 steps, last 3 kept; phase 2 adds --phase1_end_step 4
    state = torch.load(reference / "checkpoints" / "ckpt_8.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "phase", "phase_step", "step", "ranks", "config", "files"} <= set(state)
    assert (state["phase"], state["phase_step"], state["step"]) == (2, 4, 8)
    assert state["config"]["vocab_size"] == VOCAB_SIZE  # preset + <input_dir>/vocab.txt
    rank0 = state["ranks"][0]
    assert set(rank0["rng"]) >= {"python", "numpy", "torch"}
    assert set(rank0["data_position"]) == {"epoch", "slot", "batch"}
    assert not [p for p in (reference / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_phase2_restarts_the_schedule_but_keeps_the_moments(data, uninterrupted):
    reference, _ = uninterrupted
    state = torch.load(reference / "checkpoints" / "ckpt_6.pt", weights_only=True)  # phase 2, 2 steps in
    assert all(group["step"] == 2 for group in state["optimizer"]["param_groups"])
    assert state["scheduler"]["base_lrs"] == [1e-3, 1e-3]
    lrs = {r["step"][1]: r["data"]["learning_rate"] for r in log_records(reference)
           if r["type"] == "LOG" and len(r["step"]) == 2}
    # the phase-2 lr follows its own warm-up from step 1 of phase 2 (logged as step 5)
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    assert lrs[5] == pytest.approx(PolyWarmUpScheduler(dummy, 0.25, 4).lr_at(1)[0])
    assert lrs[5] != lrs[4]


def test_dllogger_records(uninterrupted):
    reference, _ = uninterrupted
    records = log_records(reference)
    params = [r["data"] for r in records if r["step"] == "PARAMETER"]
    assert params and {"Config", "SEED", "train_start", "batch_size_per_pu"} <= set(params[0])
    steps = [r["data"] for r in records if r["type"] == "LOG" and len(r["step"]) == 2]
    assert all({"average_loss", "step_loss", "learning_rate", "average_perf_per_step"} <= set(d) for d in steps)
    assert all(d["average_perf_per_step"] > 0 for d in steps)
    finals = [r["data"] for r in records if r["step"] == []]
    assert len(finals) == 2  # one per phase
    assert {"final_loss", "training_sequences_per_second", "e2e_train_time", "raw_train_time"} <= set(finals[-1])
    assert finals[-1]["final_loss"] == pytest.approx(steps[-1]["average_loss"])


def test_hf_export_loads_in_transformers_with_identical_outputs(uninterrupted):
    reference, _ = uninterrupted
    transformers = pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pretraining.bert_config import BertConfig
    from pretraining.modeling import BertForPreTraining

    export = reference / "hf_export" / "phase2"
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in export.iterdir()}
    hf = transformers.BertForPreTraining.from_pretrained(export).eval()
    state = newest_checkpoint(reference)
    ours = BertForPreTraining(BertConfig.from_dict(state["config"])).eval()
    ours.load_state_dict(state["model"])
    ids = torch.randint(5, VOCAB_SIZE, (2, 16))
    types, mask = torch.zeros_like(ids), torch.ones_like(ids)
    positions = torch.tensor([[1, 4, 7], [2, 3, 9]])
    with torch.no_grad():
        mlm, nsp = ours(ids, types, mask, positions)
        out = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
    hf_mlm = torch.gather(out.prediction_logits, 1, positions.unsqueeze(-1).expand(-1, -1, mlm.shape[-1]))
    torch.testing.assert_close(hf_mlm, mlm, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.seq_relationship_logits, nsp, atol=1e-5, rtol=1e-5)


def test_gradient_accumulation_equals_one_big_batch(data, tmp_path):
    """4 micro-batches of 2 give the gradient of one batch of 8 (the loss is divided by the count).

    The gradients the optimizer receives are compared, not the weights after a step: LAMB's update is
    m / (sqrt(v) + eps) per element, so where the true gradient is ~0 (the attention key biases: softmax is
    shift-invariant) the weight moves by float noise that differs with the summation order (micro-batch
    size, CPU). Tolerances are scaled by the largest gradient for the same reason. Step 1 starts from the
    same weights in both runs, so its gradients must agree to float precision; step 2 (the next micro-batches
    in the same order) starts from weights that may differ by that noise, hence its looser tolerance.
    """
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    config = str(write_config(tmp_path / "bert_config.json"))
    grads, losses = [], []
    for accumulation in (1, 4):
        steps = []  # per optimizer step: the gradient of every parameter, in the optimizer's order
        hook = register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: steps.append(
            [p.grad.clone() for group in optimizer.param_groups for p in group["params"]]))
        try:
            out = tmp_path / f"accum{accumulation}"
            assert main(pretraining_args(data["all_slots"], out, steps=2, batch=8, accumulation=accumulation,
                                         config=config)) == 0
        finally:
            hook.remove()
        assert len(steps) == 2
        grads.append(steps)
        losses.append(step_losses(out))
    for step, (tolerance, rtol) in enumerate(((1e-5, 1e-4), (1e-3, 1e-2))):
        big, accumulated = grads[0][step], grads[1][step]
        assert len(big) == len(accumulated) > 0
        scale = max(float(g.abs().max()) for g in big)
        for index, (want, got) in enumerate(zip(big, accumulated)):
            torch.testing.assert_close(got, want, rtol=rtol, atol=tolerance * scale,
                                       msg=f"step {step + 1}, parameter {index}")
    assert losses[1][1] == pytest.approx(losses[0][1], rel=1e-5)  # the mean loss over the same 8 sequences
    assert losses[1][2] == pytest.approx(losses[0][2], rel=1e-4)


def test_config_file_vocab_size_is_taken_as_given(data, tmp_path):
    config = str(write_config(tmp_path / "bert_config.json", vocab_size=120))
    assert main(pretraining_args(data[1], tmp_path / "out", steps=1, config=config)) == 0
    state = newest_checkpoint(tmp_path / "out")
    assert state["config"]["vocab_size"] == 120 and state["config"]["hidden_size"] == 32
    assert state["model"]["bert.embeddings.word_embeddings.weight"].shape[0] == 120  # 120 is a multiple of 8


def test_bf16_autocast_trains_close_to_fp32(data, tmp_path):
    config = str(write_config(tmp_path / "bert_config.json"))
    losses = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert main(pretraining_args(data[1], out, "--data_type", precision, steps=2, config=config)) == 0
        losses[precision] = step_losses(out)
    for step in (1, 2):
        assert losses["bf16"][step] == pytest.approx(losses["fp32"][step], abs=0.05)
    assert losses["bf16"] != losses["fp32"]  # bf16 really ran


def test_lazy_mode_warns_and_runs_eager_off_hpu(data, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(pretraining_args(data[1], tmp_path / "out", "--mode", "lazy", steps=1)) == 0
    assert any("lazy" in str(w.message) for w in caught)


@pytest.mark.slow
def test_graph_mode_gives_the_eager_loss(data, tmp_path):
    config = str(write_config(tmp_path / "bert_config.json"))
    losses = {}
    for mode in ("eager", "graph"):
        out = tmp_path / mode
        assert main(pretraining_args(data[1], out, "--mode", mode, steps=2, accumulation=1, config=config)) == 0
        losses[mode] = step_losses(out)
    for step in (1, 2):
        assert losses["graph"][step] == pytest.approx(losses["eager"][step], rel=1e-4)


def test_init_checkpoint_starts_a_new_schedule_and_a_rerun_continues_it(data, uninterrupted, tmp_path, capsys):
    """The launcher's form: --resume_from_checkpoint --init_checkpoint=P --resume_step=<P's step>."""
    reference, _ = uninterrupted
    init = tmp_path / "phase1_end.pt"
    torch.save(torch.load(reference / "checkpoints" / "ckpt_4.pt", weights_only=True), init)
    launcher_flags = ["--resume_from_checkpoint", f"--init_checkpoint={init}", "--resume_step=4"]
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(pretraining_args(data[1], out, *launcher_flags, "--steps_this_run", "2", steps=6)) == 0
    assert f"weights of {init} (phase 1, step 4), new schedule" in capsys.readouterr().out
    first = newest_checkpoint(out)
    assert (first["step"], first["optimizer"]["param_groups"][0]["step"]) == (2, 2)  # counted from 0 again
    assert main(pretraining_args(data[1], out, *launcher_flags, steps=6)) == 0  # the same command again
    assert f"resumed from {out / 'checkpoints'}/ckpt_2.pt" in capsys.readouterr().out
    assert newest_checkpoint(out)["step"] == 6


def test_a_checkpoint_of_another_shape_is_refused(data, uninterrupted, tmp_path, capsys):
    reference, _ = uninterrupted
    config = str(write_config(tmp_path / "bert_config.json"))  # hidden 32; the checkpoint has 64
    init = reference / "checkpoints" / "ckpt_4.pt"
    capsys.readouterr()
    assert main(pretraining_args(data[1], tmp_path / "run", "--init_checkpoint", str(init), config=config)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"checkpoint {init} was trained with a different model shape" in err[0]
    assert "hidden_size 64 vs 32" in err[0]


def test_a_fresh_run_refuses_a_folder_with_checkpoints(data, uninterrupted, tmp_path, capsys):
    reference, _ = uninterrupted
    before = sorted(p.name for p in (reference / "checkpoints").iterdir())
    capsys.readouterr()
    assert main(phase_args(data, reference, 1)) == 2  # no --resume_from_checkpoint
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds checkpoints (newest ckpt_8.pt)" in err[0]
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == before


def test_config_is_the_parsers_flags_with_derived_values(data, tmp_path):
    from pretraining.config import PretrainingConfig
    from pretraining.run_pretraining import build_parser

    args = build_parser().parse_args(phase_args(data, tmp_path, 2, "--log_freq", "2.5", "--steps_this_run", "3"))
    config = PretrainingConfig.from_args(args)
    assert config.to_dict() == {name: getattr(args, name) for name in config.to_dict()}  # same names and values
    assert (config.phase, config.step_offset, config.phase_steps, config.micro_batch) == (2, 4, 4, 4)
    assert config.log_every == 3  # --log_freq 2.5, rounded up
    assert (config.last_step_of_run(0), config.last_step_of_run(2)) == (3, 4)  # --steps_this_run 3 of 4
    assert config.hf_export_root == tmp_path / "hf_export"  # beside <output_dir>
    assert PretrainingConfig.from_args(build_parser().parse_args(phase_args(data, tmp_path, 1))).step_offset == 0


def test_cpu_eager_runs_swap_in_the_cpu_kernels_and_retain_freed_memory(data, tmp_path, monkeypatch):
    import central.runtime
    import pretraining.training as training

    swapped, retained = [], []
    real = training.use_cpu_kernels
    monkeypatch.setattr(training, "use_cpu_kernels", lambda model: swapped.append(real(model)))
    monkeypatch.setattr(central.runtime, "retain_freed_memory", lambda: retained.append(True))
    assert main(pretraining_args(data[1], tmp_path / "out", steps=1)) == 0
    assert len(swapped) == 1 and swapped[0] > 0  # dropouts and attention modules replaced
    assert retained == [True]  # glibc keeps the activations' memory between steps (central/host_allocator)
