"""Two-rank CPU pre-training (gloo) through the launcher, under mpirun and under torchrun.

Each rank appends '<step> <SHA-256 of its parameters> <shard it read>' per optimizer step
(BERT_LOG_PARAM_CHECKSUM=1), so the tests see that the ranks read different files and hold
bit-identical parameters after every step; the DDP run and the post-accumulation all-reduce run must
end with the same parameters within float tolerance. A third test checks the gradients of the three
synchronisation paths directly against a single-process computation over all ranks' data.
"""
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pretraining_runs import single_thread  # noqa: F401  (autouse fixture)
from pretraining_runs import newest_checkpoint, subprocess_env
from pretraining_shards import make_dataset

REPO_ROOT = Path(__file__).resolve().parent.parent
STEPS = 9

pytestmark = pytest.mark.mpi


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    return make_dataset(root / "p1", num_files=4, samples=48, seed=7), make_dataset(root / "p2", num_files=2, seed=8)


def launch_argv(data, out, *extra):
    """demo_bert.py pretraining, phase 1 only, 2 CPU ranks, micro-batch 4 x 2 accumulation steps."""
    return [sys.executable, "demo_bert.py", "pretraining", "--model_name_or_path", "tiny", "--data_type", "fp32",
            "--device", "cpu", "-o", str(out), "--data_dir", str(data[0]), str(data[1]), "--phase", "1",
            "--world_size", "2", "--dist", "-s", "32", "32", "--max_predictions_per_seq", "5", "5",
            "--batch_size", "4", "4", "--train_batch_size", "16", "16", "--accumulate_gradients",
            "--max_steps", str(STEPS + 1), "4", "--seed", "5", *extra]


def launch_env(env):
    return {**env, "BERT_LOG_PARAM_CHECKSUM": "1", "MASTER_PORT": free_port()}


def launch(data, out, env, *extra):
    done = subprocess.run(launch_argv(data, out, *extra), cwd=REPO_ROOT, env=launch_env(env), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return out / "results"


def checksum_lines(results: Path, rank: int):
    lines = (results / "checkpoints" / f"param_checksums.rank{rank}.txt").read_text().split("\n")
    return [line.split() for line in lines if line]


def assert_ranks_in_lockstep_on_different_files(results: Path):
    rank0, rank1 = checksum_lines(results, 0), checksum_lines(results, 1)
    assert [int(r[0]) for r in rank0] == list(range(1, STEPS + 2))
    assert [r[:2] for r in rank0] == [r[:2] for r in rank1]  # identical parameters after every step
    assert len({r[1] for r in rank0}) == STEPS  # ... which changed at every step but the last (its lr is 0)
    assert all(a[2] != b[2] for a, b in zip(rank0, rank1))  # different shards at every step
    assert {r[2] for r in rank0}.isdisjoint({r[2] for r in rank1})  # one epoch: 4 files, 2 ranks, 2 each


@pytest.fixture(scope="module")
def ddp_run(data, tmp_path_factory):
    return launch(data, tmp_path_factory.mktemp("mpirun_ddp"), subprocess_env())  # mpirun is the default


def test_mpirun_two_ranks_with_ddp(ddp_run):
    assert_ranks_in_lockstep_on_different_files(ddp_run)
    log = (ddp_run / "dllogger.json").read_text()
    assert log.count('"step": "PARAMETER"') == 1  # rank 0 logs, rank 1 stays quiet
    assert '"world_size": 2' in log
    assert newest_checkpoint(ddp_run)["step"] == STEPS + 1
    assert (ddp_run / "hf_export" / "phase1" / "model.safetensors").is_file()


def test_torchrun_post_accumulation_stopped_by_sigterm_resumes_and_matches_ddp(data, ddp_run, tmp_path, child_env):
    """SIGTERM to demo_bert: both ranks finish the same step, save, stop; the same command resumes;
    the end matches the DDP run."""
    out, env = tmp_path / "torchrun_post", subprocess_env(child_env)
    flags = ("--no_mpirun", "--allreduce_post_accumulation", "--resume_from_checkpoint")
    job = subprocess.Popen(launch_argv(data, out, *flags), cwd=REPO_ROOT, env=launch_env(env),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ranks = [out / "results" / "checkpoints" / f"param_checksums.rank{r}.txt" for r in (0, 1)]
    deadline = time.time() + 240
    while not (ranks[0].is_file() and len(ranks[0].read_text().splitlines()) >= 2):
        assert job.poll() is None and time.time() < deadline, "the job ended before it could be signalled"
        time.sleep(0.02)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0 and "stopped by SIGTERM" in err, err[-3000:]  # (torchrun itself exits 1)
    stopped = [int(checksum_lines(out / "results", r)[-1][0]) for r in (0, 1)]
    assert stopped[0] == stopped[1] < STEPS + 1  # the ranks agreed on the step to stop at
    assert newest_checkpoint(out / "results")["step"] == stopped[0]  # ... and saved it

    results = launch(data, out, env, *flags)  # the same command again
    assert_ranks_in_lockstep_on_different_files(results)
    ddp = torch.load(ddp_run / "checkpoints" / f"ckpt_{STEPS + 1}.pt", weights_only=True)["model"]
    post = torch.load(results / "checkpoints" / f"ckpt_{STEPS + 1}.pt", weights_only=True)["model"]
    for key in ddp:
        torch.testing.assert_close(post[key], ddp[key], atol=1e-6, rtol=1e-5)


def _gradient_paths_worker(rank: int, store_path: str, results_path: str) -> None:
    """One of 2 ranks: the gradient of each sync path after 2 accumulated micro-batches."""
    import torch.distributed as dist

    from pretraining.bert_config import BertConfig
    from central.gradient_sync import GradientSync
    from pretraining.modeling import BertForPreTraining

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        max_position_embeddings=16)

    def micro_batches(of_rank):  # 2 micro-batches of 3 sequences, different on each rank
        gen = torch.Generator().manual_seed(100 + of_rank)
        return [torch.randint(1, 64, (3, 16), generator=gen) for _ in range(2)]

    def loss_of(model, ids):
        mlm, nsp = model(ids, torch.zeros_like(ids), torch.ones_like(ids), torch.arange(1, 5).expand(3, 4))
        return mlm.float().square().mean() + nsp.float().square().mean()

    grads = {}
    for name, post, bf16 in (("ddp", False, False), ("post", True, False), ("post_bf16", True, True)):
        torch.manual_seed(0)
        model = BertForPreTraining(config)
        sync = GradientSync(model, 2, post_accumulation=post, bf16_allreduce=bf16)
        for micro, ids in enumerate(micro_batches(rank)):
            with sync.micro_step(boundary=micro == 1):
                (loss_of(sync.module, ids) / 2).backward()
        sync.after_accumulation()
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters()}
    if rank == 0:  # the single-process truth: the mean over all 4 micro-batches of both ranks
        torch.manual_seed(0)
        model = BertForPreTraining(config)
        for of_rank in (0, 1):
            for ids in micro_batches(of_rank):
                (loss_of(model, ids) / 4).backward()
        grads["single"] = {n: p.grad.clone() for n, p in model.named_parameters()}
    torch.save(grads, f"{results_path}.rank{rank}")
    dist.destroy_process_group()


def test_sync_paths_give_the_mean_gradient_of_all_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_gradient_paths_worker, args=(str(tmp_path / "store"), str(tmp_path / "grads")), nprocs=2)
    rank0 = torch.load(tmp_path / "grads.rank0", weights_only=True)
    rank1 = torch.load(tmp_path / "grads.rank1", weights_only=True)
    truth = rank0["single"]
    for name in truth:
        for path, tol in (("ddp", 1e-6), ("post", 1e-6), ("post_bf16", 1e-2)):
            torch.testing.assert_close(rank0[path][name], truth[name], atol=tol * truth[name].abs().max(), rtol=tol)
            torch.testing.assert_close(rank1[path][name], rank0[path][name], atol=0, rtol=0)
    assert any(not torch.equal(rank0["post_bf16"][n], rank0["post"][n]) for n in truth)  # bf16 really used
