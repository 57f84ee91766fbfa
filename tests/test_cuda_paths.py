"""The CUDA paths on a real GPU (issue 22): skipped without one; ``bash benchmarks/device_check.sh`` runs
them first. Tiny models, a few steps each, so that the whole file stays well under a minute on one GPU
(compilation included).

Each test checks on the GPU what the CPU tests can only simulate: a HostCopy read does not wait for
work queued after it; a pre-training step makes no synchronizing CUDA call (torch's sync debug mode);
--mode lazy compiles and trains in bf16; the compiled LAMB trust-ratio update matches the eager one;
the rank's own generator state round-trips; TF32 is on; fine-tuning runs eager and compiled.
"""
import time
import warnings

import pytest
import torch

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")


def test_host_copy_waits_for_its_copy_not_for_later_work():
    from central.host_copy import HostCopy

    copy = HostCopy(torch.arange(3, device=CUDA, dtype=torch.float32) * 2)
    torch.cuda._sleep(int(2e8))  # ~0.1 s of GPU time queued after the copy
    assert copy.values() == [0.0, 2.0, 4.0]
    assert not torch.cuda.current_stream().query()  # the sleep still runs: values() did not drain the queue
    torch.cuda.synchronize()


def test_runtime_on_cuda_tf32_and_the_ranks_generator_round_trip():
    from central.runtime import init_runtime
    from pretraining.checkpointing import capture_rng_state, restore_rng_state

    runtime = init_runtime(device="cuda", precision="fp32")
    assert runtime.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    torch.rand(1, device=CUDA)  # initialise CUDA's generator
    state = capture_rng_state()
    assert isinstance(state["cuda"], torch.Tensor)  # the current device's state only
    first = torch.rand(4, device=CUDA)
    restore_rng_state(state)
    assert torch.equal(torch.rand(4, device=CUDA), first)


def test_compiled_trust_ratio_update_on_cuda_matches_eager():
    from pretraining.bert_config import BertConfig
    from pretraining.lamb import Lamb, lamb_param_groups
    from pretraining.modeling import BertForPreTraining

    config = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128)
    models, optimizers = [], []
    for compile_update in (None, False):  # None: the CUDA default, compiled
        torch.manual_seed(0)
        model = BertForPreTraining(config).to(CUDA)
        models.append(model)
        optimizers.append(Lamb(lamb_param_groups(model), lr=1e-2, compile_update=compile_update))
    for step in range(3):
        gen = torch.Generator(device=CUDA).manual_seed(step)
        grads = [torch.randn(p.shape, generator=gen, device=CUDA) * 0.1 for p in models[0].parameters()]
        for model, optimizer in zip(models, optimizers):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    from pretraining.lamb import trust_ratio_update

    assert optimizers[0]._compiled not in (None, trust_ratio_update)  # compiled, not the eager fallback


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from pretraining_shards import make_dataset

    return make_dataset(tmp_path_factory.mktemp("shards"), num_files=2, samples=32, seed=5)


def test_lazy_mode_compiles_and_trains_in_bf16_on_cuda(shards, tmp_path):
    from central.dllog import read_dllogger
    from pretraining.run_pretraining import main
    from pretraining_runs import pretraining_args, step_losses

    argv = pretraining_args(shards, tmp_path, "--mode", "lazy", "--data_type", "bf16", steps=3, accumulation=1)
    argv[argv.index("--device") + 1] = "cuda"
    with pytest.warns(UserWarning, match="graph"):
        assert main(argv) == 0
    parameters = next(r for r in read_dllogger(tmp_path / "dllogger.json") if r["type"] == "PARAMETER")["data"]
    assert (parameters["device"], parameters["mode"], parameters["precision"]) == ("cuda", "graph", "bf16")
    losses = step_losses(tmp_path)
    assert sorted(losses) == [1, 2, 3] and all(loss == loss and loss < 20 for loss in losses.values())
    state = torch.load(tmp_path / "checkpoints" / "ckpt_3.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in state["model"].values())


def test_pretraining_steps_make_no_synchronizing_cuda_call(shards, tmp_path, monkeypatch):
    """torch's sync debug mode is on for steps 3 and 4 of an eager bf16 run (steps 1-2 warm up, step 6
    saves): the step's reads of the device go through HostCopy, a step late, and nothing else syncs."""
    import pretraining.training
    from pretraining.run_pretraining import main
    from pretraining_runs import pretraining_args

    accumulate = pretraining.training.accumulate_gradients
    step = [0]

    def watched(cfg, s):
        step[0] += 1
        torch.cuda.set_sync_debug_mode("warn" if step[0] in (3, 4) else "default")
        return accumulate(cfg, s)

    monkeypatch.setattr(pretraining.training, "accumulate_gradients", watched)
    argv = pretraining_args(shards, tmp_path, "--data_type", "bf16", "--num_steps_per_checkpoint", "6",
                            "--log_freq", "1", steps=6, accumulation=1)
    argv[argv.index("--device") + 1] = "cuda"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            assert main(argv) == 0
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchronizing" in str(w.message)]
    assert step[0] == 6 and syncs == [], syncs


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_fine_tuning_loop_on_cuda(mode, tmp_path):
    from central.distributed import DistEnv
    from central.dllog import DLLogger
    from central.runtime import Runtime
    from finetuning.train_loop import train
    from test_finetune_loop import make_args, qa_model, toy_features

    runtime = Runtime("cuda", mode, "bf16", CUDA, DistEnv())
    config = make_args(tmp_path, max_steps=3, logging_steps=0, device="cuda", mode=mode, data_type="bf16")
    start = time.perf_counter()
    result = train(qa_model(), toy_features(32), config, runtime, DLLogger(None, enabled=False))
    assert result.global_step == 3 and result.final_loss == result.final_loss
    assert time.perf_counter() - start < 120
