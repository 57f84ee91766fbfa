"""Pre-training throughput: our BertForPreTraining vs transformers.BertForPreTraining, same run, same batch.

    python -m benchmarks.pretraining_throughput                    # CPU presets (+ CUDA ones on a GPU)
    python -m benchmarks.pretraining_throughput --preset cpu-mini --steps 8 --optimizer adamw
    python -m benchmarks.pretraining_throughput --preset cpu-base --without linear  # one CPU kernel's share

Both models get the same weights, the same batch (phase-1-like: 10% short sequences, ~15% of the
tokens masked, NSP labels), the same optimizer (our multi-tensor LAMB by default, or torch's AdamW),
the same precision, and run a full training step (forward, loss, backward, optimizer step) in
train mode with dropout. Steps alternate between the two models (ours first on even rounds,
transformers first on odd ones) so that load from other processes hits both alike; the median step
time of each is reported. transformers uses attn_implementation="sdpa" and its own loss (labels
over all positions, -100 elsewhere), as a user would run it. Ours runs as pretraining/training.py
runs it: labels in, losses out, and on CPU in eager mode with pretraining/cpu_kernels.py swapped in
(random-bits dropout, oneDNN linears where ATen runs AVX-512 kernels, the fused vocab-major MLM decoder +
cross-entropy; the line names the ones in use). CPU presets
raise glibc's malloc thresholds first, as CPU training does (central/host_allocator.py: activations are
not page-faulted in anew every step); the setting is process-wide, so transformers gets it too.

--without NAMES (comma-separated names of pretraining.cpu_kernels.KERNEL_NAMES, or "all") adds a third
model to the same rotation: ours with those CPU kernels left out, same weights, batch and optimizer. Its
extra line gives the left-out kernels' share of our step, (t_without - t_ours) / t_without, measured
interleaved in one process, so that load from other processes hits all three alike. On a CPU without
AVX-512, add --onednn_linear on to measure the linear kernel's share there.

Presets (issue 3 item 10, issue 22):
    cpu-mini        4 layers, hidden 256, 4 heads, seq 128, 20 predictions, batch 32, fp32   goal >= 4x
    cpu-base        BERT-Base, seq 128, 20 predictions, batch 8, fp32                        goal >= 1.5x
    cuda-large-128  BERT-Large, seq 128, 20 predictions, bf16, largest batch both fit        goal >= 2x, >= 2,000 seq/s
    cuda-large-512  BERT-Large, seq 512, 80 predictions, bf16, largest batch both fit
CUDA presets print a skip line when no GPU is present. ``--compile ours`` adds a third model to the
rotation: ours under torch.compile (what a CUDA run of ``large`` does: its --mode lazy compiles there),
same weights; ``--compile`` alone compiles both models instead.

MFU counts the matmul FLOPs each model really executes (training = 3 x forward) against two bf16 peaks,
both printed and labelled: the H200 SXM datasheet's dense bf16 rate (--peak_tflops, 989.4 TFLOP/s) and a
bf16 matmul rate measured on the GPU (--measured_tflops: 790 TFLOP/s measured on the H200s this project
used; benchmarks/device_check.py measures it on the GPU at hand and passes it on).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from central.device import autocast
from central.host_allocator import retain_freed_memory
from pretraining.bert_config import PRESETS, BertConfig
from pretraining.hf_conversion import to_hf_config, to_hf_state_dict
from pretraining.lamb import Lamb, lamb_param_groups
from pretraining.cpu_kernels import KERNEL_NAMES, kernels_in_use, use_cpu_kernels
from pretraining.modeling import BertForPreTraining, padded_vocab_size


@dataclass(frozen=True)
class Preset:
    model: str
    device: str
    seq_len: int
    predictions: int
    batch: Optional[int]  # None: the largest power of two both models fit (CUDA)
    precision: str
    steps: int
    goal: str


PRESET_TABLE = {
    "cpu-mini": Preset("mini", "cpu", 128, 20, 32, "fp32", steps=8, goal="ours >= 4x"),
    "cpu-base": Preset("base", "cpu", 128, 20, 8, "fp32", steps=5, goal="ours >= 1.5x"),
    "cuda-large-128": Preset("large", "cuda", 128, 20, None, "bf16", steps=10,
                             goal="ours >= 2x and >= 2,000 seq/s on one H200, MFU >= 60%"),
    "cuda-large-512": Preset("large", "cuda", 512, 80, None, "bf16", steps=10,
                             goal="none unpacked; packed >= 900 samples/s: benchmarks/packing_throughput.py"),
    # benchmarks/device_check.py --dry_run: the CUDA presets' code path on the CPU, tiny and quick.
    "dry-tiny-128": Preset("tiny", "cpu", 128, 20, 4, "fp32", steps=2, goal="none: a dry run"),
    "dry-tiny-512": Preset("tiny", "cpu", 512, 80, 2, "fp32", steps=2, goal="none: a dry run"),
}
DATASHEET_PEAK = ("H200 SXM datasheet, dense bf16", 989.4)            # TFLOP/s
MEASURED_PEAK = ("bf16 matmul rate measured on these H200s", 790.0)   # TFLOP/s


def phase1_like_batch(config: BertConfig, batch: int, seq_len: int, predictions: int, seed: int = 0):
    """A batch shaped like create_pretraining_data output (zero padding, sorted masked positions)."""
    gen = torch.Generator().manual_seed(seed)
    first_word = min(999, config.vocab_size // 2)  # BERT vocabs: [PAD], [unused*], [CLS], ... end at 998
    input_ids = torch.zeros(batch, seq_len, dtype=torch.long)
    token_type_ids = torch.zeros(batch, seq_len, dtype=torch.long)
    attention_mask = torch.zeros(batch, seq_len, dtype=torch.long)
    positions = torch.zeros(batch, predictions, dtype=torch.long)
    masked_ids = torch.zeros(batch, predictions, dtype=torch.long)
    for row in range(batch):
        short = torch.rand((), generator=gen) < 0.1  # short_seq_prob of the reference data tool
        length = int(torch.randint(8, seq_len + 1, (), generator=gen)) if short else seq_len
        input_ids[row, :length] = torch.randint(first_word, config.vocab_size, (length,), generator=gen)
        split = int(torch.randint(2, length - 1, (), generator=gen))
        token_type_ids[row, split:length] = 1
        attention_mask[row, :length] = 1
        count = min(predictions, max(1, round(length * 0.15)))
        chosen = (torch.randperm(length - 2, generator=gen)[:count] + 1).sort().values
        positions[row, :count] = chosen
        masked_ids[row, :count] = input_ids[row, chosen]
    nsp_labels = torch.randint(0, 2, (batch,), generator=gen)
    hf_labels = torch.full((batch, seq_len), -100, dtype=torch.long)
    for row in range(batch):
        used = positions[row] != 0
        hf_labels[row, positions[row][used]] = masked_ids[row][used]
    return dict(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                positions=positions, masked_ids=masked_ids, nsp_labels=nsp_labels, hf_labels=hf_labels)


def build_models(config: BertConfig, device: torch.device):
    import transformers

    torch.manual_seed(0)
    ours = BertForPreTraining(config).to(device).train()
    hf_config = to_hf_config(config)
    hf_config._attn_implementation = "sdpa"
    hf = transformers.BertForPreTraining(hf_config)
    hf.load_state_dict(to_hf_state_dict(ours.state_dict(), config))  # the same starting weights
    return ours, hf.to(device).train()


def make_optimizer(name: str, model: torch.nn.Module, device: torch.device):
    groups = lamb_param_groups(model, weight_decay=0.01)
    if name == "lamb":
        return Lamb(groups, lr=1e-4)
    return torch.optim.AdamW(groups, lr=1e-4, fused=device.type in ("cuda", "cpu"))


def ours_attention_mask(host_batch: dict, device_batch: dict) -> Optional[torch.Tensor]:
    """The mask our model gets: None for a batch without padding, decided on the host as the data loader
    does (the model never inspects the mask); transformers always gets the mask, as a user passes it."""
    return None if bool(host_batch["attention_mask"].all()) else device_batch["attention_mask"]


def ours_step_function(model, batch: dict, device: torch.device, precision: str, optimizer: str,
                       compile_model: bool) -> Callable[[], None]:
    """One full training step of our model (forward with labels, backward, optimizer step)."""
    opt = make_optimizer(optimizer, model, device)
    run = torch.compile(model) if compile_model else model
    b = {key: value.to(device) for key, value in batch.items()}
    mask = ours_attention_mask(batch, b)

    def step():
        with autocast(device.type, precision):
            loss = run(b["input_ids"], b["token_type_ids"], mask, b["positions"], b["masked_ids"], b["nsp_labels"])[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def step_functions(ours, hf, batch: dict, device: torch.device, precision: str, optimizer: str,
                   compile_models: bool) -> Tuple[Callable[[], None], Callable[[], None]]:
    """(ours, transformers) training steps; ``compile_models``: both under torch.compile."""
    hf_opt = make_optimizer(optimizer, hf, device)
    run_hf = torch.compile(hf) if compile_models else hf
    b = {key: value.to(device) for key, value in batch.items()}

    def hf_step():
        with autocast(device.type, precision):
            loss = run_hf(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"],
                          attention_mask=b["attention_mask"], labels=b["hf_labels"],
                          next_sentence_label=b["nsp_labels"]).loss
        loss.backward()
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)

    return ours_step_function(ours, batch, device, precision, optimizer, compile_models), hf_step


@torch.no_grad()
def eval_losses(ours, hf, batch: dict, device: torch.device, precision: str) -> Tuple[float, float]:
    """Both models' loss in eval mode on the batch: they must agree (same weights, same maths)."""
    b = {key: value.to(device) for key, value in batch.items()}
    ours.eval(), hf.eval()
    with autocast(device.type, precision):
        ours_loss = ours(b["input_ids"], b["token_type_ids"], ours_attention_mask(batch, b), b["positions"],
                         b["masked_ids"], b["nsp_labels"])[0]
        hf_loss = hf(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"],
                     attention_mask=b["attention_mask"], labels=b["hf_labels"],
                     next_sentence_label=b["nsp_labels"]).loss
    ours.train(), hf.train()
    return float(ours_loss), float(hf_loss)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], None], device: torch.device, clock: Callable[[], float]) -> float:
    synchronize(device)
    start = clock()
    step()
    synchronize(device)
    return clock() - start


def interleaved_medians(step_fns: Sequence[Callable[[], None]], device, warmup: int, steps: int,
                        clock: Callable[[], float] = time.perf_counter) -> List[float]:
    """Median step time of each function; every round runs each once, the order reversed every other
    round (so that none is always first or always last)."""
    for _ in range(warmup):
        for step in step_fns:
            step()
    times: List[List[float]] = [[] for _ in step_fns]
    for round_number in range(steps):
        order = list(range(len(step_fns)))
        for index in (order if round_number % 2 == 0 else order[::-1]):
            times[index].append(timed(step_fns[index], device, clock))
    return [statistics.median(each) for each in times]


def parse_without(text: Optional[str]) -> Tuple[str, ...]:
    """--without value -> kernel names ("all" = every one); argparse reports a bad name as bad input."""
    if not text:
        return ()
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if names == ("all",):
        return KERNEL_NAMES
    unknown = [name for name in names if name not in KERNEL_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown CPU kernel {', '.join(unknown)}; choose from "
                                         f"{', '.join(KERNEL_NAMES)} or all")
    return names


def matmul_flops_per_sequence(config: BertConfig, seq_len: int, predictions: int, ours: bool) -> float:
    """Forward matmul FLOPs of one sequence as each model computes it (x3 for a training step).

    Encoder layer per token: 24 H^2 (q, k, v, out, 2 FFN matmuls with intermediate 4H counted as
    2*(4H^2) + 2*(2 H I)) + 4 L H (scores and weighted values). Ours runs its last layer only for
    the P masked positions + [CLS] (keys/values still for all L) and the MLM head only at P positions,
    its decoder over the padded vocab; transformers runs everything at all L positions.
    """
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    vocab = padded_vocab_size(config.vocab_size) if ours else config.vocab_size
    kv = 4 * h * h  # key + value projections
    per_query = 4 * h * h + 4 * h * inter + 4 * seq_len * h  # query, out, FFN, attention
    full_layer = seq_len * (kv + per_query)
    pooler_nsp = 2 * h * h + 2 * h * 2
    if not ours:
        return layers * full_layer + seq_len * (2 * h * h + 2 * h * vocab) + pooler_nsp
    last_layer = seq_len * kv + (predictions + 1) * per_query
    return (layers - 1) * full_layer + last_layer + predictions * (2 * h * h + 2 * h * vocab) + pooler_nsp


def largest_common_batch(config, device, seq_len, predictions, precision, optimizer, start: int) -> int:
    """Largest power of two <= start for which a training step of both models fits in memory."""
    ours, hf = build_models(config, device)
    batch = start
    while batch >= 1:
        try:
            data = phase1_like_batch(config, batch, seq_len, predictions)
            ours_step, hf_step = step_functions(ours, hf, data, device, precision, optimizer, False)
            ours_step()
            hf_step()
            synchronize(device)
            return batch
        except torch.OutOfMemoryError:
            ours_step = hf_step = None
            for model in (ours, hf):
                model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            batch //= 2
    raise RuntimeError("not even batch 1 fits on the GPU")


def run_preset(name: str, args) -> List[str]:
    preset = PRESET_TABLE[name]
    if preset.device == "cuda" and not torch.cuda.is_available():
        return [f"{name}: skipped (no CUDA device visible to PyTorch on this machine)"]
    device = torch.device(preset.device)
    if device.type == "cpu" and not args.glibc_malloc_defaults:
        retain_freed_memory()  # as training on CPU does; process-wide, so transformers runs with it too
    config = PRESETS[preset.model]
    precision = args.precision or preset.precision
    steps = args.steps or preset.steps
    batch_size = args.batch or preset.batch
    if batch_size is None:
        start = args.max_batch or (1024 if preset.seq_len <= 128 else 256)
        batch_size = largest_common_batch(config, device, preset.seq_len, preset.predictions, precision,
                                          args.optimizer, start)
        torch.cuda.empty_cache()

    ours, hf = build_models(config, device)
    compile_both = args.compile == "both"
    cpu_kernels = device.type == "cpu" and not compile_both  # as pretraining/training.py runs ours
    linear = True if args.onednn_linear == "on" else None
    if cpu_kernels:
        use_cpu_kernels(ours, linear=linear)
    batch = phase1_like_batch(config, batch_size, preset.seq_len, preset.predictions)
    ours_loss, hf_loss = eval_losses(ours, hf, batch, device, precision)
    step_fns = list(step_functions(ours, hf, batch, device, precision, args.optimizer, compile_both))
    if args.compile == "ours":  # ours compiled, same weights (its own optimizer state), as a third member
        compiled = ours
        if cpu_kernels:  # as training compiles it on the CPU: without the eager CPU kernels
            compiled = BertForPreTraining(config).to(device).train()
            compiled.load_state_dict(ours.state_dict())
        compiled_step = ours_step_function(compiled, batch, device, precision, args.optimizer, True)
        try:
            compiled_step()  # compiles here; a failure costs this line, not the eager figures
            step_fns.append(compiled_step)
        except Exception as err:  # noqa: BLE001 (any compiler error)
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            print(f"{name}: ours compiled FAILED to run ({type(err).__name__}: {first_line[:300]}); "
                  "timing the others", flush=True)
    elif cpu_kernels and args.without:
        ablated = BertForPreTraining(config).to(device).train()
        ablated.load_state_dict(ours.state_dict())
        use_cpu_kernels(ablated, without=args.without, linear=linear)
        step_fns.append(ours_step_function(ablated, batch, device, precision, args.optimizer, False))
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    ours_time, hf_time, *third_time = interleaved_medians(step_fns, device, args.warmup, steps, clock)

    where = (f"{torch.get_num_threads()} threads, {args.clock} time, {torch.backends.cpu.get_cpu_capability()}"
             if device.type == "cpu" else torch.cuda.get_device_name(device))
    if cpu_kernels:
        where += f", CPU kernels {'+'.join(kernels_in_use(linear=linear)) or 'none'}"
    compiled = {"both": ", both compiled", "ours": ", ours eager and compiled"}.get(args.compile, "")
    shape = (f"{name} ({preset.model}, L={preset.seq_len}, P={preset.predictions}, batch {batch_size}, "
             f"{precision}, {args.optimizer}{compiled}, {where}, median of {steps})")
    lines = [
        f"{shape}: ours {batch_size / ours_time:.2f} seq/s ({1 / ours_time:.3f} steps/s) vs "
        f"transformers {batch_size / hf_time:.2f} seq/s ({1 / hf_time:.3f} steps/s): "
        f"ratio {hf_time / ours_time:.2f}x (goal {preset.goal}); eval loss ours {ours_loss:.4f} "
        f"transformers {hf_loss:.4f}"
    ]
    timings = [("ours", True, ours_time), ("transformers", False, hf_time)]
    if args.compile == "ours" and third_time:
        lines.append(f"{name}: ours compiled {batch_size / third_time[0]:.2f} seq/s ({1 / third_time[0]:.3f} "
                     f"steps/s) vs transformers {batch_size / hf_time:.2f} seq/s: ratio "
                     f"{hf_time / third_time[0]:.2f}x (goal {preset.goal})")
        timings.insert(1, ("ours compiled", True, third_time[0]))
    elif third_time:
        without = ",".join(args.without)
        lines.append(f"{name}: ours without {without} {third_time[0]:.4f} s/step vs ours {ours_time:.4f} s/step "
                     f"(transformers {hf_time:.4f}): the left-out kernels' share of our step "
                     f"{100 * (third_time[0] - ours_time) / third_time[0]:.1f}%, ratio without them "
                     f"{hf_time / third_time[0]:.2f}x")
    if args.without and not (cpu_kernels and args.compile != "ours"):
        lines.append(f"{name}: --without ignored (no CPU kernels on {device.type}"
                     f"{' with --compile' if args.compile != 'none' else ''})")
    if device.type == "cuda" or args.mfu:
        lines += [mfu_line(name, label, config, preset, is_ours, seconds, batch_size, args)
                  for label, is_ours, seconds in timings]
    return lines


def mfu_line(name: str, label: str, config: BertConfig, preset: Preset, ours: bool, seconds: float,
             batch_size: int, args) -> str:
    """MFU of one model's step against both bf16 peaks, each labelled (module docstring)."""
    flops = 3 * matmul_flops_per_sequence(config, preset.seq_len, preset.predictions, ours) * batch_size
    rate = flops / seconds / 1e12  # TFLOP/s executed
    measured_label = MEASURED_PEAK[0] if args.measured_tflops is None else "bf16 matmul rate measured on this GPU"
    peaks = ((DATASHEET_PEAK[0], args.peak_tflops), (measured_label, args.measured_tflops or MEASURED_PEAK[1]))
    against = " / ".join(f"{100 * rate / peak:.1f}% of {peak:g} TFLOP/s ({what})" for what, peak in peaks)
    return (f"{name}: {label} MFU {against} ({rate:.3f} TFLOP/s executed matmul FLOPs, "
            f"{flops / batch_size / 1e9:.2f} GFLOP per sequence)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pretraining_throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", choices=sorted(PRESET_TABLE),
                        default=["cpu-mini", "cpu-base", "cuda-large-128", "cuda-large-512"])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model (default: per preset)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model first")
    parser.add_argument("--batch", type=int, default=None, help="override the preset's batch size")
    parser.add_argument("--max_batch", type=int, default=None, help="CUDA: start of the batch-size search")
    parser.add_argument("--optimizer", choices=["lamb", "adamw"], default="lamb",
                        help="the same optimizer for both models (lamb: ours, multi-tensor; adamw: torch fused)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="override the preset's")
    parser.add_argument("--compile", nargs="?", const="both", default="none", choices=["none", "ours", "both"],
                        help="torch.compile both models (--compile), or add ours compiled to the rotation "
                             "(--compile ours)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU presets)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time instead of wall time; with --threads 1 it stays "
                             "meaningful on a machine shared with other jobs (CPU presets only)")
    parser.add_argument("--glibc_malloc_defaults", action="store_true",
                        help="CPU presets: keep glibc's malloc thresholds (by default they are raised for both "
                             "models, as training on CPU does: central/host_allocator.py)")
    parser.add_argument("--without", type=parse_without, default=(),
                        help="CPU presets: also time ours without these CPU kernels (comma-separated: "
                             f"{', '.join(KERNEL_NAMES)}, or all), interleaved with the others")
    parser.add_argument("--onednn_linear", choices=("auto", "on"), default="auto",
                        help="CPU presets: oneDNN's linear in ours where it pays off (auto: AVX-512, as training "
                             "does) or on any CPU (on: to measure its share with --without linear)")
    parser.add_argument("--mfu", action="store_true", help="also print MFU lines for CPU presets")
    parser.add_argument("--peak_tflops", type=float, default=DATASHEET_PEAK[1],
                        help=f"datasheet bf16 peak for MFU, TFLOP/s (default: {DATASHEET_PEAK[0]})")
    parser.add_argument("--measured_tflops", type=float, default=None,
                        help=f"measured bf16 matmul rate for MFU, TFLOP/s (default {MEASURED_PEAK[1]:g}: "
                             f"{MEASURED_PEAK[0]})")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # batch search frees/reallocs
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and torch.get_num_threads() > 1:
        print("note: --clock cpu with several threads also counts their spin-waiting; use --threads 1", flush=True)
    for name in args.preset:
        for line in run_preset(name, args):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
