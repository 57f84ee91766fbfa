"""Answer questions or classify sentence pairs with a fine-tuned model folder.

    python demo_bert.py predict --task_name squad --model_name_or_path out/squad \
        --question "Where does Mara live?" --context "Mara Ashdown lives in Oakridge. ..."
    python demo_bert.py predict --task_name mrpc --model_name_or_path out/mrpc \
        --sentence1 "Cora lives in Stonebridge." --sentence2 "Stonebridge is where Cora lives."
    python demo_bert.py predict --task_name squad --model_name_or_path out/squad --input_file qs.jsonl

The model folder is what fine-tuning writes (``save_pretrained`` + tokenizer): config.json,
model.safetensors, vocab.txt / tokenizer.json. One example prints readable lines; ``--input_file``
(JSON lines with ``question``/``context`` or ``sentence1``/``sentence2``, optional ``id``) prints one
JSON object per line, also written to ``--output_file`` when given.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

from central.device import DEVICE_CHOICES

FIELDS = {"squad": ("question", "context"), "mrpc": ("sentence1", "sentence2")}
ARCHITECTURES = {"squad": "BertForQuestionAnswering", "mrpc": "BertForSequenceClassification"}
MRPC_NAMES = ("not_equivalent", "equivalent")  # GLUE MRPC: label 1 = the sentences are paraphrases


class PredictInputError(ValueError):
    """Bad input for predict: the message is one line naming the input and what is wrong."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="demo_bert.py predict",
                                     description="Predict with a fine-tuned SQuAD or MRPC model folder.")
    parser.add_argument("--task_name", required=True, type=str.lower, choices=sorted(FIELDS))
    parser.add_argument("--model_name_or_path", required=True, help="fine-tuned model folder (HF format)")
    parser.add_argument("--question", help="SQuAD: the question")
    parser.add_argument("--context", help="SQuAD: the paragraph that holds the answer")
    parser.add_argument("--sentence1", help="MRPC: first sentence")
    parser.add_argument("--sentence2", help="MRPC: second sentence")
    parser.add_argument("--input_file", help="JSON lines, one example per line (fields as the flags above, plus id)")
    parser.add_argument("--output_file", help="also write the JSON-lines predictions here")
    parser.add_argument("--max_seq_length", type=int, default=None,
                        help="tokens per window (default: 384 for squad, 128 for mrpc, capped by the model)")
    parser.add_argument("--doc_stride", type=int, default=128, help="SQuAD: overlap between context windows")
    parser.add_argument("--max_answer_length", type=int, default=30, help="SQuAD: longest answer in tokens")
    parser.add_argument("--n_best_size", type=int, default=20, help="SQuAD: candidate starts/ends per window")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for bad input")
    return parser


# ---------------------------------------------------------------------------------------------- input
def read_examples(args) -> List[Dict[str, str]]:
    first, second = FIELDS[args.task_name]
    given = {name: getattr(args, name) for name in (first, second)}
    if args.input_file:
        if any(v is not None for v in given.values()):
            raise PredictInputError(f"--input_file {args.input_file}: give either the file or --{first}/--{second}")
        return read_jsonl(Path(args.input_file), (first, second))
    missing = [f"--{name}" for name, value in given.items() if not value or not value.strip()]
    if missing:
        raise PredictInputError(f"task {args.task_name} needs {' and '.join(missing)} (or --input_file)")
    return [{"id": "0", first: given[first], second: given[second]}]


def read_jsonl(path: Path, fields) -> List[Dict[str, str]]:
    if not path.is_file():
        raise PredictInputError(f"--input_file {path}: no such file")
    examples = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise PredictInputError(f"--input_file {path}: line {number} is not JSON") from None
            if not isinstance(record, dict):
                raise PredictInputError(f"--input_file {path}: line {number} is not a JSON object")
            for name in fields:
                if not isinstance(record.get(name), str) or not record[name].strip():
                    raise PredictInputError(f"--input_file {path}: line {number} has no text field {name!r}")
            examples.append({"id": str(record.get("id", len(examples))), **{n: record[n] for n in fields}})
    if not examples:
        raise PredictInputError(f"--input_file {path}: holds no examples")
    return examples


# ---------------------------------------------------------------------------------------------- model
def load(args):
    """(model, tokenizer) from a fine-tuned folder, refusing a folder fine-tuned for the other task."""
    import transformers

    folder = Path(args.model_name_or_path)
    flag = f"--model_name_or_path {folder}"
    if not (folder / "config.json").is_file():
        raise PredictInputError(f"{flag}: not a model folder (no config.json); pass a fine-tuning output folder")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except ValueError:
        raise PredictInputError(f"{flag}: config.json is not JSON") from None
    wanted = ARCHITECTURES[args.task_name]
    found = config.get("architectures") or []
    if found and wanted not in found:
        raise PredictInputError(f"{flag}: holds a {found[0]}, but --task_name {args.task_name} needs a {wanted}")
    try:
        model = getattr(transformers, wanted).from_pretrained(str(folder))
    except Exception as err:  # missing/corrupt weights, shape mismatch
        raise PredictInputError(f"{flag}: the model cannot be loaded ({str(err).strip().splitlines()[0]})") from None
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    except Exception as err:
        raise PredictInputError(f"{flag}: its tokenizer cannot be read ({str(err).strip().splitlines()[0]})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise PredictInputError(f"{flag}: needs a fast tokenizer (tokenizer.json or vocab.txt)")
    return model.eval(), tokenizer


def sequence_length(args, model) -> int:
    default = 384 if args.task_name == "squad" else 128
    return min(args.max_seq_length or default, model.config.max_position_embeddings)


# ---------------------------------------------------------------------------------------------- SQuAD
def best_span(start_logits, end_logits, context_mask, n_best: int, max_length: int):
    """Highest start+end logit over valid spans of one window: (start_token, end_token, logit_sum)
    or None. start_logits / end_logits / context_mask: [seq_len] tensors (mask True on context)."""
    import torch

    masked_start = start_logits.masked_fill(~context_mask, float("-inf"))
    masked_end = end_logits.masked_fill(~context_mask, float("-inf"))
    k = min(n_best, int(context_mask.sum()))
    if k == 0:
        return None
    starts = torch.topk(masked_start, k).indices.tolist()
    ends = torch.topk(masked_end, k).indices.tolist()
    best = None
    for s in starts:
        for e in ends:
            if e < s or e - s + 1 > max_length:
                continue
            score = float(start_logits[s] + end_logits[e])
            if best is None or score > best[2]:
                best = (s, e, score)
    return best


def predict_squad(model, tokenizer, examples, args, device) -> List[dict]:
    import torch

    max_len = sequence_length(args, model)
    stride = min(args.doc_stride, max_len // 2)
    results = []
    for example in examples:
        enc = tokenizer(example["question"], example["context"], truncation="only_second", max_length=max_len,
                        stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                        padding="longest", return_tensors="pt")
        offsets = enc.pop("offset_mapping")           # [windows, seq_len, 2] character offsets
        enc.pop("overflow_to_sample_mapping", None)
        candidates = []                               # (logit_sum, start_char, end_char, window probability)
        with torch.no_grad():
            for lo in range(0, enc["input_ids"].shape[0], args.batch_size):
                batch = {k: v[lo:lo + args.batch_size].to(device) for k, v in enc.items()}
                out = model(**batch)
                for w in range(batch["input_ids"].shape[0]):
                    window = lo + w
                    context_mask = torch.tensor([sid == 1 for sid in enc.sequence_ids(window)])
                    start, end = out.start_logits[w].float().cpu(), out.end_logits[w].float().cpu()
                    span = best_span(start, end, context_mask, args.n_best_size, args.max_answer_length)
                    if span is None:
                        continue
                    s, e, logit_sum = span
                    # Probability of this span in its window: softmax over context starts x over context ends.
                    p_start = torch.softmax(start.masked_fill(~context_mask, float("-inf")), 0)[s]
                    p_end = torch.softmax(end.masked_fill(~context_mask, float("-inf")), 0)[e]
                    candidates.append((logit_sum, int(offsets[window, s, 0]), int(offsets[window, e, 1]),
                                       float(p_start * p_end)))
        if not candidates:
            results.append({"id": example["id"], "answer": "", "score": 0.0, "start": -1, "end": -1})
            continue
        _, start_char, end_char, probability = max(candidates)
        results.append({"id": example["id"], "answer": example["context"][start_char:end_char],
                        "score": round(probability, 6), "start": start_char, "end": end_char})
    return results


# ---------------------------------------------------------------------------------------------- MRPC
def label_name(model, task: str, index: int) -> str:
    name = str(model.config.id2label.get(index, index)) if model.config.id2label else str(index)
    generic = {str(index), f"LABEL_{index}"}
    return MRPC_NAMES[index] if task == "mrpc" and name in generic and index < len(MRPC_NAMES) else name


def predict_pairs(model, tokenizer, examples, args, device) -> List[dict]:
    import torch

    max_len = sequence_length(args, model)
    results = []
    with torch.no_grad():
        for lo in range(0, len(examples), args.batch_size):
            chunk = examples[lo:lo + args.batch_size]
            enc = tokenizer([e["sentence1"] for e in chunk], [e["sentence2"] for e in chunk], truncation=True,
                            max_length=max_len, padding="longest", return_tensors="pt")
            logits = model(**{k: v.to(device) for k, v in enc.items()}).logits.float().cpu()  # [batch, labels]
            probabilities = torch.softmax(logits, dim=-1)
            for example, row in zip(chunk, probabilities):
                index = int(row.argmax())
                results.append({"id": example["id"], "label": label_name(model, args.task_name, index),
                                "label_id": index, "probability": round(float(row[index]), 6)})
    return results


# ---------------------------------------------------------------------------------------------- main
def show(result: dict, task: str) -> str:
    if task == "squad":
        return (f"answer: {result['answer']}\nscore: {result['score']:.4f}\n"
                f"span: characters {result['start']}..{result['end']} of the context")
    return f"label: {result['label']} ({result['label_id']})\nprobability: {result['probability']:.4f}"


def run(args) -> int:
    from central.device import resolve_device_kind, torch_device

    examples = read_examples(args)
    for name in ("batch_size", "doc_stride", "max_answer_length", "n_best_size"):
        if getattr(args, name) < 1:
            raise PredictInputError(f"--{name} {getattr(args, name)}: must be at least 1")
    model, tokenizer = load(args)
    device = torch_device(resolve_device_kind(args.device), 0)
    model.to(device)
    predict = predict_squad if args.task_name == "squad" else predict_pairs
    results = predict(model, tokenizer, examples, args, device)
    lines = [json.dumps(r) for r in results]
    if args.output_file:
        from central.checkpoint import atomic_write_text

        atomic_write_text(args.output_file, "\n".join(lines) + "\n")
    if args.input_file:
        print("\n".join(lines))
    else:
        print(show(results[0], args.task_name))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from central.checkpoint import CheckpointWriteError
    from central.device import DeviceUnavailableError

    try:
        return run(args)
    except (PredictInputError, DeviceUnavailableError, CheckpointWriteError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
