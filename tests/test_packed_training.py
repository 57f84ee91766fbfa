"""Pre-training on packed shards (issue 20 items 2-3), in-process on a tiny model.

The packed shards are made by the real packer (data.pack_pretraining_data) from small unpacked shards
whose samples are 8..64 tokens long (about 1.8 samples per pack at L = 64).
"""
import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from central.dllog import read_dllogger
from data.packed_format import metadata_path
from pretraining.config import PretrainingConfig
from pretraining.run_pretraining import build_parser, main
from pretraining.run_setup import plan_run
from pretraining_runs import single_thread  # noqa: F401  (autouse fixture)
from pretraining_runs import newest_checkpoint, pretraining_args, same_tensors, step_losses, write_config
from pretraining_shards import make_dataset, make_packed_dataset
from test_device import habana  # noqa: F401  (fixture: the Habana stand-in)

L, P = 64, 10


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed")
    unpacked = make_dataset(root / "unpacked", num_files=2, samples=24, seq_len=L, max_pred=P, seed=4,
                            min_length=8, bert_counts=True)
    one_file = make_dataset(root / "one_file", num_files=1, samples=30, seq_len=L, max_pred=P, seed=5,
                            min_length=8, bert_counts=True)
    return {"unpacked": unpacked, "packed": make_packed_dataset(unpacked, root / "packed", L, P),
            "one_file": one_file, "one_file_packed": make_packed_dataset(one_file, root / "one_file_packed", L, P)}


def args(folder, out, *extra, steps=4, batch=4, accumulation=1, config="tiny"):
    return pretraining_args(folder, out, *extra, steps=steps, batch=batch, accumulation=accumulation, seq_len=L,
                            max_pred=P, config=config)


def rows(folder) -> int:
    with h5py.File(next(folder.glob("*training*")), "r") as handle:
        return handle["input_ids"].shape[0]


def optimizer_gradients(run):
    """Runs ``run()``; returns each optimizer step's gradients (the optimizer's parameter order)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    steps = []
    hook = register_optimizer_step_pre_hook(lambda optimizer, a, k: steps.append(
        [p.grad.clone() for group in optimizer.param_groups for p in group["params"]]))
    try:
        run()
    finally:
        hook.remove()
    return steps


def test_packed_and_unpacked_runs_of_the_same_samples_reach_the_same_losses(data, tmp_path):
    """Issue 20 item 3, the tiny run: one shard of 30 samples, unpacked (30 rows) and packed by the real
    packer (~17 packs); each optimizer step is the whole shard in both layouts, so both steps hold the
    same samples (in another order and arrangement). Without dropout the packed run must then give the
    unpacked run's losses and gradients: the MLM loss is a mean over the same masked tokens, NSP a mean
    over the same samples, each sample seen with its own positions and attention.

    This is the real check, not a band of losses from other seeds: the two layouts can only hold the same
    samples per step when a step is the whole shard, and then the results must agree to float rounding.
    Why 1e-5 cannot flake: both runs are deterministic (same seed, one thread), so only the summation
    order differs between the layouts; measured, the losses differ by ~1e-7 relative over 5 steps (LAMB
    barely amplifies it in so few steps). Why it bites: weights drawn with initializer_range 0.2 (attention
    far from uniform); then positions that do not restart change the losses by ~5e-3, one block per row
    (samples attending to each other) by ~4e-3, NSP averaged over empty slots by 1e-3..2e-2 (measured by
    mutating the batch -> forward call).
    """
    config = str(write_config(tmp_path / "bert_config.json", max_position_embeddings=L, initializer_range=0.2))
    unpacked_rows, packs = rows(data["one_file"]), rows(data["one_file_packed"])
    assert packs < 0.75 * unpacked_rows  # really packed
    runs = {}
    for name, folder, batch in (("unpacked", data["one_file"], unpacked_rows),
                                ("packed", data["one_file_packed"], packs)):
        out = tmp_path / name
        grads = optimizer_gradients(lambda: main(args(folder, out, steps=5, batch=batch, config=config)))
        runs[name] = (step_losses(out), grads)
    (unpacked_losses, unpacked_grads), (packed_losses, packed_grads) = runs["unpacked"], runs["packed"]
    assert sorted(packed_losses) == sorted(unpacked_losses) == [1, 2, 3, 4, 5]
    for step in range(1, 6):
        assert packed_losses[step] == pytest.approx(unpacked_losses[step], rel=1e-5), step
    scale = max(float(g.abs().max()) for g in unpacked_grads[0])
    for index, (got, want) in enumerate(zip(packed_grads[0], unpacked_grads[0], strict=True)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale, msg=f"step 1, parameter {index}")
    assert len(set(packed_losses.values())) == 5  # the weights move


@pytest.mark.parametrize("extra", [(), ("--dynamic_masking",)], ids=["static masks", "dynamic masking"])
def test_packed_runs_resume_exactly(data, tmp_path, extra):
    """Stopped after 2 steps and resumed gives the uninterrupted run's losses bit for bit, and its weights.
    Micro-batches of 4 packs, accumulation 4 / 1.78 -> 2: 5 steps read 10 batches, more than the 6 of an
    epoch (2 shards of ~13 packs), so the run also crosses an epoch boundary."""
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    common = (*extra, "--num_steps_per_checkpoint", "10")
    assert main(args(data["packed"], reference, *common, steps=5, batch=16, accumulation=4)) == 0
    assert main(args(data["packed"], stopped, *common, "--steps_this_run", "2", steps=5, batch=16,
                     accumulation=4)) == 0
    assert main(args(data["packed"], stopped, *common, "--resume_from_checkpoint", steps=5, batch=16,
                     accumulation=4)) == 0
    assert newest_checkpoint(reference)["ranks"][0]["data_position"]["epoch"] == 1
    assert step_losses(stopped) == step_losses(reference) and len(step_losses(reference)) == 5
    assert same_tensors(newest_checkpoint(stopped)["model"], newest_checkpoint(reference)["model"])


def test_unpacked_runs_with_dynamic_masking_resume_exactly_and_differ_from_static_masks(data, tmp_path):
    reference, stopped, static = tmp_path / "reference", tmp_path / "stopped", tmp_path / "static"
    assert main(args(data["unpacked"], reference, "--dynamic_masking", steps=5)) == 0
    assert main(args(data["unpacked"], stopped, "--dynamic_masking", "--steps_this_run", "3", steps=5)) == 0
    assert main(args(data["unpacked"], stopped, "--dynamic_masking", "--resume_from_checkpoint", steps=5)) == 0
    assert step_losses(stopped) == step_losses(reference)
    assert main(args(data["unpacked"], static, steps=5)) == 0
    assert step_losses(static)[1] != step_losses(reference)[1]  # new masks, new targets


def parsed_config(folder, tmp_path, *extra, accumulation=1, batch=4):
    namespace = build_parser().parse_args(args(folder, tmp_path / "out", *extra, batch=batch,
                                               accumulation=accumulation))
    return PretrainingConfig.from_args(namespace)


def test_accumulation_is_divided_by_the_samples_per_pack(data, tmp_path):
    """Habana's rule: max(1, round(gas / avg_seq_per_sample)) micro-batches of packs per step."""
    config = parsed_config(data["unpacked"], tmp_path, accumulation=8, batch=16)
    assert config.accumulation_steps(1.0) == 8  # unpacked: as given
    assert [config.accumulation_steps(p) for p in (1.2, 2.0, 1.9999, 3.0)] == [7, 4, 4, 3]
    assert parsed_config(data["unpacked"], tmp_path).accumulation_steps(2.0) == 1  # never 0
    plan = plan_run(parsed_config(data["packed"], tmp_path, accumulation=8, batch=16))
    average = json.loads(metadata_path(data["packed"]).read_text())["avg_seq_per_sample"]
    assert plan.shape.packed and plan.shape.samples_per_pack == 3
    assert plan.samples_per_row.value == average and plan.accumulation_steps == round(8 / average) == 4
    assert plan.samples_per_step(micro_batch=2, world_size=1) == pytest.approx(2 * 4 * average)


def test_samples_per_pack_are_counted_in_the_shards_without_metadata(data, tmp_path):
    copy = tmp_path / "packed_copy"
    shutil.copytree(data["packed"], copy)
    counted = plan_run(parsed_config(copy, tmp_path)).samples_per_row
    assert "counted in the shards" in counted.source
    assert counted.value == pytest.approx(json.loads(metadata_path(data["packed"]).read_text())["avg_seq_per_sample"])
    metadata_path(copy).write_text("{not json")
    with pytest.raises(ValueError, match="packed_copy_metadata.json: not the packer's metadata"):
        plan_run(parsed_config(copy, tmp_path))


def test_the_log_counts_samples_and_packs(data, tmp_path):
    out = tmp_path / "packed"
    assert main(args(data["packed"], out, steps=2, batch=8, accumulation=2)) == 0
    logged = read_dllogger(out / "dllogger.json")
    params = next(r["data"] for r in logged if r["step"] == "PARAMETER")
    average = json.loads(metadata_path(data["packed"]).read_text())["avg_seq_per_sample"]
    assert params["packed_data"] is True and params["samples_per_row"] == average
    assert params["gradient_accumulation_steps"] == round(2 / average) == 1  # 2 / 1.78 rounds to 1
    assert params["samples_per_optimizer_step"] == pytest.approx(4 * average)  # micro-batch 4 packs
    steps = [r["data"] for r in logged if r["type"] == "LOG" and len(r["step"]) == 2]
    for record in steps:
        ratio = record["samples_per_second"] / record["packs_per_second"]
        assert 1.2 < ratio <= 3  # real samples per pack in the packs this step read
        assert record["average_perf_per_step"] == record["samples_per_second"]
    final = next(r["data"] for r in logged if r["step"] == [])
    assert 1.2 < final["training_sequences_per_second"] / final["training_packs_per_second"] <= 3
    unpacked = tmp_path / "unpacked"
    assert main(args(data["unpacked"], unpacked, steps=1)) == 0
    record = next(r["data"] for r in read_dllogger(unpacked / "dllogger.json")
                  if r["type"] == "LOG" and len(r["step"]) == 2)
    assert "packs_per_second" not in record and record["samples_per_second"] == record["average_perf_per_step"]


@pytest.mark.parametrize("folder, flag, status", [
    ("packed", "True", 0), ("packed", None, 0), ("unpacked", "False", 0),
    ("packed", "False", 2), ("unpacked", "True", 2), ("unpacked", "", 2), ("mixed", None, 2),
])
def test_enable_packed_data_mode_may_only_confirm_the_shards(data, tmp_path, capsys, folder, flag, status):
    """Habana's string flag (default True there): here the shards decide, the flag may only agree.
    A bare ``--enable_packed_data_mode`` means True."""
    if folder == "mixed":
        shutil.copytree(data["unpacked"], tmp_path / "mixed")
        shutil.copy(data["packed"] / "wiki_training_0.hdf5", tmp_path / "mixed" / "wiki_packed_training_9.hdf5")
        source = tmp_path / "mixed"
    else:
        source = data[folder]
    extra = {None: (), "": ("--enable_packed_data_mode",)}.get(flag, ("--enable_packed_data_mode", flag))
    capsys.readouterr()
    assert main(args(source, tmp_path / "out", *extra, steps=1)) == status
    err = capsys.readouterr().err.strip().splitlines()
    if status:
        assert len(err) == 1 and err[0].startswith("error: ")
        expected = "mixes packed shards" if folder == "mixed" else "--enable_packed_data_mode"
        assert expected in err[0]
        assert not list((tmp_path / "out").glob("checkpoints/ckpt_*.pt"))


def test_a_bad_enable_packed_data_mode_value_is_refused_by_the_parser(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(args(data["packed"], tmp_path, "--enable_packed_data_mode", "maybe"))
    assert exit_info.value.code == 2 and "expected True or False" in capsys.readouterr().err


def test_dynamic_masking_needs_the_vocab(data, tmp_path, capsys):
    copy = tmp_path / "no_vocab"
    shutil.copytree(data["unpacked"], copy)
    (copy / "vocab.txt").unlink()
    capsys.readouterr()
    assert main(args(copy, tmp_path / "out", "--dynamic_masking", steps=1)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dynamic_masking needs the vocab the shards were made with" in err[0]


def test_unpadded_batches_reach_the_model_without_a_mask(tmp_path, monkeypatch):
    """The host decides: a micro-batch without padding gets attention_mask=None (SDPA's unmasked and
    flash paths), one with padding its mask."""
    import pretraining.training as training

    seen = []

    class Recording(training.BertForPreTraining):
        def forward(self, input_ids, token_type_ids, attention_mask, *rest, **keywords):
            seen.append(attention_mask is None)
            return super().forward(input_ids, token_type_ids, attention_mask, *rest, **keywords)

    monkeypatch.setattr(training, "BertForPreTraining", Recording)
    full = make_dataset(tmp_path / "full", num_files=1, samples=8, seq_len=32, max_pred=5, min_length=32)
    assert main(pretraining_args(full, tmp_path / "out_full", steps=2, batch=4, accumulation=1)) == 0
    assert seen == [True, True]
    seen.clear()
    padded = make_dataset(tmp_path / "padded", num_files=1, samples=8, seq_len=32, max_pred=5, min_length=8)
    assert main(pretraining_args(padded, tmp_path / "out_padded", steps=2, batch=4, accumulation=1)) == 0
    assert seen == [False, False]


@pytest.mark.slow
def test_graph_mode_compiles_the_packed_step_and_gives_the_eager_losses(data, tmp_path):
    """torch.compile traces the packed training call without a graph break (one graph for the model's
    forward; backward follows it) and gives the eager run's losses."""
    from torch._dynamo.utils import counters

    config = str(write_config(tmp_path / "bert_config.json", max_position_embeddings=L))
    losses = {}
    for mode in ("eager", "graph"):
        out = tmp_path / mode
        counters.clear()
        assert main(args(data["packed"], out, "--mode", mode, steps=2, config=config)) == 0
        losses[mode] = step_losses(out)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1
    assert sorted(losses["graph"]) == [1, 2]
    for step in (1, 2):
        assert losses["graph"][step] == pytest.approx(losses["eager"][step], rel=1e-4)


def test_hpu_lazy_packed_run_through_the_habana_stand_in(data, tmp_path, habana, monkeypatch):
    """HPU wiring with the stand-in stack (its tensors stay on the CPU): packed batches take the masked
    path (attention_for_device), lazy mode flushes the graph after every micro-batch, and the losses are
    the CPU run's (the CPU eager run differs only by its CPU kernels' rounding)."""
    import contextlib

    import pretraining.training as training
    from central.distributed import DistEnv
    from central.runtime import Runtime

    config = str(write_config(tmp_path / "bert_config.json", max_position_embeddings=L))
    cpu = tmp_path / "cpu"
    assert main(args(data["packed"], cpu, steps=2, batch=16, accumulation=4, config=config)) == 0
    hpu_on_cpu = Runtime("hpu", "lazy", "fp32", torch.device("cpu"), DistEnv())
    monkeypatch.setattr(training, "runtime_session", lambda *a, **k: contextlib.nullcontext(hpu_on_cpu))
    hpu = tmp_path / "hpu"
    assert main(args(data["packed"], hpu, "--device", "hpu", "--mode", "lazy", steps=2, batch=16, accumulation=4,
                     config=config)) == 0
    params = next(r["data"] for r in read_dllogger(hpu / "dllogger.json") if r["step"] == "PARAMETER")
    assert (params["device"], params["mode"], params["gradient_accumulation_steps"]) == ("hpu", "lazy", 2)
    assert habana.marks >= 2 * 2  # at least one flush per micro-batch (2 steps of 2)
    for step, loss in step_losses(cpu).items():
        assert step_losses(hpu)[step] == pytest.approx(loss, rel=1e-4)


@pytest.mark.cuda
def test_cuda_packed_bf16_run_trains_close_to_the_cpu_run(data, tmp_path, capsys):
    """On a GPU: the packed step through the varlen dispatch (bf16), pinned host batches; its losses
    stay within bf16 noise of the CPU fp32 run."""
    config = str(write_config(tmp_path / "bert_config.json", max_position_embeddings=L))
    losses = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "bf16")):
        out = tmp_path / device
        capsys.readouterr()
        assert main(args(data["packed"], out, "--device", device, "--data_type", precision, steps=3,
                         config=config)) == 0
        printed = capsys.readouterr().out
        losses[device] = step_losses(out)
    assert "attention:" in printed
    for step in (1, 2, 3):
        assert losses["cuda"][step] == pytest.approx(losses["cpu"][step], abs=0.05)


def test_packed_layout_errors_name_the_file_and_the_value(data, tmp_path):
    """load_shard checks the packed datasets' values: sample numbers 0..K, positions inside the row."""
    from pretraining.dataset import ShardError, ShardShape, load_shard

    shape = ShardShape(L, P, 96, 2, samples_per_pack=3)
    source = data["packed"] / "wiki_training_0.hdf5"
    with h5py.File(source, "r") as handle:
        good = {key: handle[key][()] for key in handle}
    cases = {"input_mask": (4, "sample numbers 0..3"), "positions": (L, "inside the row"),
             "next_sentence_positions": (L, "inside the row"), "next_sentence_weights": (2, "0/1 weight")}
    for key, (value, message) in cases.items():
        arrays = {k: v.copy() for k, v in good.items()}
        arrays[key][0, 0] = value
        path = tmp_path / f"bad_{key}_training.hdf5"
        with h5py.File(path, "w") as handle:
            for name, values in arrays.items():
                handle.create_dataset(name, data=values)
        with pytest.raises(ShardError, match=f"'{key}' holds {value}, outside .*{message}") as err:
            load_shard(path, shape)
        assert str(path) in str(err.value)
    arrays = dict(good, masked_lm_positions=good["masked_lm_positions"][:, :P])  # P slots, not P+K
    path = tmp_path / "narrow_training.hdf5"
    with h5py.File(path, "w") as handle:
        for name, values in arrays.items():
            handle.create_dataset(name, data=values)
    with pytest.raises(ShardError, match=f"'masked_lm_positions' has shape \\[\\d+, {P}\\], expected \\[N, {P + 3}\\]"):
        load_shard(path, shape)
    assert np.array_equal(load_shard(source, shape)["input_mask"], good["input_mask"])


@pytest.mark.mpi
def test_two_ranks_train_packed_shards_in_lockstep(tmp_path):
    """demo_bert.py, 2 CPU ranks under mpirun with DDP: each rank reads its own packed shards, the
    packed batch goes through DDP's forward with its keyword inputs, and the ranks hold identical
    parameters after every step."""
    from pretraining_runs import subprocess_env
    from test_pretraining_distributed import STEPS, checksum_lines, launch

    unpacked = make_dataset(tmp_path / "u", num_files=4, samples=48, seed=7, min_length=8, bert_counts=True)
    packed = make_packed_dataset(unpacked, tmp_path / "p1", 32, 5)
    phase2 = make_dataset(tmp_path / "p2", num_files=2, seed=8)
    results = launch((packed, phase2), tmp_path / "out", subprocess_env(), "--enable_packed_data_mode", "True", "None")
    rank0, rank1 = checksum_lines(results, 0), checksum_lines(results, 1)
    assert [int(r[0]) for r in rank0] == list(range(1, STEPS + 2))
    assert [r[:2] for r in rank0] == [r[:2] for r in rank1] and len({r[1] for r in rank0}) == STEPS
    assert all(a[2] != b[2] for a, b in zip(rank0, rank1))
    params = next(r["data"] for r in read_dllogger(results / "dllogger.json") if r["step"] == "PARAMETER")
    assert params["packed_data"] is True and params["world_size"] == 2
