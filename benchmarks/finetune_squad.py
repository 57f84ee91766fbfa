"""SQuAD fine-tuning and inference throughput: our loop vs the plain transformers Trainer.

    python -m benchmarks.finetune_squad                 # CPU, small shape (hidden 128, 2 layers), fp32
    python -m benchmarks.finetune_squad --device cuda   # BERT-Large shape, seq 384, batch 24, bf16

Both sides train the same randomly initialised ``BertForQuestionAnswering`` (SDPA attention, same
seed), on the same SQuAD dev questions turned into the same features, with the same batch size,
precision and optimizer (fused AdamW: the Trainer's default ``adamw_torch_fused``). The Trainer gets
its inputs as ``run_qa.py`` feeds it by default: every feature padded to ``--max_seq_length``; ours pads
each batch to its longest feature (x8) and, for inference, batches features of similar length.
A second comparison line shows the Trainer with per-batch padding too (DataCollatorWithPadding,
pad_to_multiple_of=8), so the gain from padding and the gain from the loop itself can be told apart.
Prints one line per comparison: sequences/s of each and the ratio ours / theirs (goal on CUDA, issue 22:
fine-tuning >= 2x the Trainer).

Without the SQuAD file or the vocab (a GPU machine with the repository alone), the features are
synthetic: random token ids in SQuAD's layout ([CLS] question [SEP] context [SEP]) whose lengths follow
the length histogram of the real dev features (SQUAD_DEV_LENGTHS), so padding costs what it costs on
SQuAD; a line says so.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from central.host_allocator import retain_freed_memory

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared" / "data"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--squad_file", default=str(SHARED / "squad" / "dev-v1.1.json"))
    parser.add_argument("--vocab_file", default=str(SHARED / "vocab" / "bert-base-uncased-vocab.txt"))
    parser.add_argument("--questions", type=int, default=None, help="dev questions to use (default: by device)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default: by device)")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--max_seq_length", type=int, default=None)
    parser.add_argument("--data_type", choices=("fp32", "bf16"), default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="interleaved runs of each side; the best rate of each is reported")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU time (steadier on a shared, loaded machine)")
    parser.add_argument("--glibc_malloc_defaults", action="store_true",
                        help="CPU: keep glibc's malloc thresholds (by default they are raised for every side, "
                             "as fine-tuning on CPU does: central/host_allocator.py)")
    return parser


DEFAULTS = {  # device -> (shape, questions, steps, batch, seq, precision)
    "cpu": (dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
            400, 20, 16, 256, "fp32"),
    "cuda": (dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
             1000, 60, 24, 384, "bf16"),
}
# Feature lengths of SQuAD v1.1 dev (10,833 training-style features of 10,570 questions; max_seq_length
# 384, doc_stride 128, max_query_length 64, bert-base-uncased vocab; mean 178): (lowest, highest, count).
SQUAD_DEV_LENGTHS = ((16, 63, 194), (64, 95, 522), (96, 127, 1465), (128, 159, 2914), (160, 191, 2121),
                     (192, 223, 1472), (224, 255, 690), (256, 287, 568), (288, 319, 338), (320, 351, 169),
                     (352, 383, 116), (384, 384, 264))
BERT_VOCAB_SIZE = 30522


class SyntheticFeatures:
    """Stand-in for SquadFeatures (``inputs`` and ``len``): what the training and inference paths read."""

    def __init__(self, count: int, max_seq_length: int, vocab_size: int, labels: bool, seed: int = 0):
        import numpy as np

        rng = np.random.default_rng(seed)
        bins = [b for b in SQUAD_DEV_LENGTHS if b[0] <= max_seq_length]
        weights = np.array([b[2] for b in bins], dtype=np.float64)
        self.inputs = []
        for choice in rng.choice(len(bins), size=count, p=weights / weights.sum()):
            low, high, _ = bins[choice]
            length = int(rng.integers(low, min(high, max_seq_length) + 1))
            question = int(rng.integers(6, 16))
            ids = rng.integers(1000, vocab_size, size=length).astype(np.int32)
            ids[0], ids[question + 1], ids[-1] = 101, 102, 102  # [CLS] question [SEP] context [SEP]
            types = np.zeros(length, dtype=np.int8)
            types[question + 2:] = 1
            start = int(rng.integers(question + 2, length - 1))
            end = int(min(length - 2, start + rng.integers(0, 4)))
            feature = {"input_ids": ids, "token_type_ids": types}
            if labels:
                feature.update(start_positions=start, end_positions=end)
            self.inputs.append(feature)

    def __len__(self) -> int:
        return len(self.inputs)


def synthetic_vocab(folder: str) -> str:
    """A BERT-sized vocab.txt with the special tokens, for the collators' padding (no real words needed)."""
    path = Path(folder) / "vocab.txt"
    special = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    path.write_text("\n".join(special + [f"w{i}" for i in range(BERT_VOCAB_SIZE - len(special))]) + "\n")
    return str(path)


def make_model(shape: dict, vocab_size: int, seed: int):
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, **shape)
    return BertForQuestionAnswering._from_config(config, attn_implementation="sdpa")


class FeatureDataset(torch.utils.data.Dataset):
    """Our numpy features as the dicts of lists the Trainer's collators expect (optionally padded)."""

    def __init__(self, inputs, pad_to: int = 0, labels: bool = True):
        self.inputs, self.pad_to, self.labels = inputs, pad_to, labels

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        item = self.inputs[index]
        ids, types = item["input_ids"].tolist(), item["token_type_ids"].tolist()
        pad = max(0, self.pad_to - len(ids))
        row = {"input_ids": ids + [0] * pad, "token_type_ids": types + [0] * pad,
               "attention_mask": [1] * len(ids) + [0] * pad}
        if self.labels:
            row["start_positions"], row["end_positions"] = item["start_positions"], item["end_positions"]
        return row


def trainer_run(model, train_inputs, eval_inputs, args, device, padded: bool, clock):
    """(train sequences/s, inference sequences/s) of a plain transformers Trainer."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, default_data_collator

    from finetuning.model_loading import tokenizer_from_vocab

    pad_to = args.max_seq_length if padded else 0
    collator = default_data_collator if padded else DataCollatorWithPadding(
        tokenizer_from_vocab(args.vocab_file), pad_to_multiple_of=8)
    with tempfile.TemporaryDirectory() as scratch:
        training_args = TrainingArguments(
            output_dir=scratch, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
            max_steps=args.steps, learning_rate=3e-5, bf16=args.data_type == "bf16", use_cpu=device == "cpu",
            report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=1,
            dataloader_num_workers=0, max_grad_norm=1.0, optim="adamw_torch_fused")
        trainer = Trainer(model=model, args=training_args, train_dataset=FeatureDataset(train_inputs, pad_to),
                          data_collator=collator)
        start = clock()
        with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its own metrics dict
            trainer.train()
        _sync(device)
        train_rate = args.steps * args.batch_size / (clock() - start)
        start = clock()
        trainer.predict(FeatureDataset(eval_inputs, pad_to, labels=False))
        _sync(device)
        infer_rate = len(eval_inputs) / (clock() - start)
    return train_rate, infer_rate


def ours_run(model, train_inputs, eval_features, args, device, clock):
    """(train sequences/s, inference sequences/s) of finetuning.train_loop, as the SQuAD task runs it."""
    from central.distributed import DistEnv
    from central.dllog import DLLogger
    from central.runtime import Runtime
    from finetuning.config import FinetuneConfig
    from finetuning.squad_task import predict_logits
    from finetuning.train_loop import train

    runtime = Runtime(device, "eager", args.data_type, torch.device(device), DistEnv())
    config = FinetuneConfig(
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1, num_train_epochs=1.0,
        max_steps=args.steps, learning_rate=3e-5, weight_decay=0.0, adam_epsilon=1e-8, max_grad_norm=1.0,
        use_fused_adam=False, use_fused_clip_norm=False, warmup_steps=0, warmup_proportion=0.0, logging_steps=0,
        save_steps=0, seed=1, disable_progress_bar=True, output_dir="", device=device, mode="eager",
        data_type=args.data_type, dist_timeout=1800.0)
    start = clock()
    train(model, train_inputs, config, runtime, DLLogger(None, enabled=False))
    _sync(device)
    train_rate = args.steps * args.batch_size / (clock() - start)
    start = clock()
    predict_logits(model, eval_features, args.batch_size, runtime, None)
    _sync(device)
    infer_rate = len(eval_features) / (clock() - start)
    return train_rate, infer_rate


def warm_up(model, train_inputs, args) -> None:
    """A few untimed steps so that process-wide first-use costs (allocator, kernels) do not favour a side."""
    from finetuning.batches import PaddingCollator

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    for start in range(0, min(3 * args.batch_size, len(train_inputs)), args.batch_size):
        batch = {k: v.to(args.device) for k, v in PaddingCollator()(train_inputs[start:start + args.batch_size]).items()}
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.data_type == "bf16"):
            model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    _sync(args.device)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("finetune_squad: skipped (--device cuda, but no CUDA device is available)")
        return 0
    shape, questions, steps, batch, seq, precision = DEFAULTS[args.device]
    args.questions, args.steps = args.questions or questions, args.steps or steps
    args.batch_size, args.max_seq_length = args.batch_size or batch, args.max_seq_length or seq
    args.data_type = args.data_type or precision
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu" and not args.glibc_malloc_defaults:
        retain_freed_memory()  # as our fine-tuning on CPU does; process-wide, so the Trainer runs with it too
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from finetuning.model_loading import tokenizer_from_vocab

    real = Path(args.squad_file).is_file() and Path(args.vocab_file).is_file()
    if real:
        from finetuning.squad_data import read_squad
        from finetuning.squad_features import build_features

        tokenizer = tokenizer_from_vocab(args.vocab_file)
        examples = read_squad(args.squad_file)[:args.questions]
        train = build_features(examples, tokenizer, args.max_seq_length, 128, 64, training=True)
        evaluation = build_features(examples, tokenizer, args.max_seq_length, 128, 64)
    else:
        missing = " or ".join(str(p) for p in (args.squad_file, args.vocab_file) if not Path(p).is_file())
        print(f"finetune_squad: no {missing}: synthetic features with SQuAD dev's length histogram "
              f"({args.questions} of them)", flush=True)
        args.vocab_file = synthetic_vocab(tempfile.mkdtemp(prefix="finetune_squad_vocab_"))
        tokenizer = tokenizer_from_vocab(args.vocab_file)
        train = SyntheticFeatures(args.questions, args.max_seq_length, len(tokenizer), labels=True)
        evaluation = SyntheticFeatures(args.questions, args.max_seq_length, len(tokenizer), labels=False)
    # The same number of training sequences on both sides: repeat the features to cover all steps.
    needed = args.steps * args.batch_size
    train_inputs = (train.inputs * (needed // len(train.inputs) + 1))[:needed]
    lengths = [len(item["input_ids"]) for item in evaluation.inputs]
    print(f"finetune_squad: device {args.device}{' (' + torch.cuda.get_device_name() + ')' if args.device == 'cuda' else ''}, "
          f"{args.data_type}, batch {args.batch_size}, max_seq_length "
          f"{args.max_seq_length}, shape {shape}, {args.steps} training steps, {len(evaluation)} inference "
          f"features (mean length {sum(lengths) / len(lengths):.0f}), torch threads {torch.get_num_threads()}, "
          f"{args.clock} clock, best of {args.repeats}")

    vocab = len(tokenizer)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    warm_up(make_model(shape, vocab, 0).to(args.device), train_inputs, args)  # one-time costs hit neither side
    ours, padded, dynamic = (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)
    best = lambda a, b: (max(a[0], b[0]), max(a[1], b[1]))  # noqa: E731 (best training, best inference rate)
    trainer = importlib.util.find_spec("accelerate") is not None  # transformers' Trainer cannot run without it
    if not trainer:
        print("finetune_squad: transformers' Trainer needs accelerate, which this python lacks: ours alone",
              flush=True)
    for _ in range(max(1, args.repeats)):  # interleaved, so a burst of load elsewhere hits every side alike
        ours = best(ours, ours_run(make_model(shape, vocab, 0).to(args.device), train_inputs, evaluation, args,
                                   args.device, clock))
        if trainer:
            padded = best(padded, trainer_run(make_model(shape, vocab, 0), train_inputs, evaluation.inputs, args,
                                              args.device, True, clock))
            dynamic = best(dynamic, trainer_run(make_model(shape, vocab, 0), train_inputs, evaluation.inputs, args,
                                                args.device, False, clock))
    goal = " (goal >= 2x)" if args.device == "cuda" else ""
    for label, index in (("fine-tuning", 0), ("inference", 1)):
        if not trainer:
            print(f"squad {label} sequences/s: ours {ours[index]:.1f} (no Trainer to compare with)", flush=True)
            continue
        print(f"squad {label} sequences/s: ours {ours[index]:.1f} vs transformers Trainer (padded to "
              f"max_seq_length, as run_qa.py) {padded[index]:.1f} -> ratio {ours[index] / padded[index]:.2f}x"
              f"{goal if index == 0 else ''}", flush=True)
        print(f"squad {label} sequences/s: ours {ours[index]:.1f} vs transformers Trainer (per-batch padding x8) "
              f"{dynamic[index]:.1f} -> ratio {ours[index] / dynamic[index]:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
