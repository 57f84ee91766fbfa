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

from central.choices import DEVICE_CHOICES
from central.errors import BadInputError, run_main
from central.mode_environment import export_mode_environment

FIELDS = {"squad": ("question", "context"), "mrpc": ("sentence1", "sentence2")}
ARCHITECTURES = {"squad": "BertForQuestionAnswering", "mrpc": "BertForSequenceClassification"}
MRPC_NAMES = ("not_equivalent", "equivalent")  # GLUE MRPC: label 1 = the sentences are paraphrases


class PredictInputError(BadInputError):
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
    parser.add_argument("--max_query_length", type=int, default=64, help="SQuAD: question tokens kept")
    parser.add_argument("--n_best_size", type=int, default=20, help="SQuAD: candidates kept (the score is a softmax over them)")
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
    """(model, tokenizer) from a fine-tuned folder, refusing a folder fine-tuned for the other task
    (loading it would silently put a fresh, untrained head on top)."""
    import transformers

    from finetuning.model_loading import ModelLoadError, load_model

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
    if wanted not in found:
        what = f"holds a {found[0]}" if found else "names no fine-tuned architecture"
        raise PredictInputError(f"{flag}: {what}, but --task_name {args.task_name} needs a {wanted}")
    try:
        loaded = load_model(str(folder), getattr(transformers, wanted))
    except ModelLoadError as err:
        raise PredictInputError(str(err)) from None
    return loaded.model.eval(), loaded.tokenizer


def sequence_length(args, model) -> int:
    default = 384 if args.task_name == "squad" else 128
    return min(args.max_seq_length or default, model.config.max_position_embeddings)


# ---------------------------------------------------------------------------------------------- SQuAD
def predict_squad(model, tokenizer, examples, args, runtime) -> List[dict]:
    """The fine-tuning evaluation path itself: the same windows (squad_features), batched logits
    (squad_task.predict_logits) and n-best decoding (squad_postprocess); score = the answer's
    probability among the n best candidates, as in nbest_predictions.json."""
    from finetuning.squad_data import SquadExample
    from finetuning.squad_features import SquadFeatureError, build_features
    from finetuning.squad_postprocess import best_answers
    from finetuning.squad_task import predict_logits

    squad_examples = [SquadExample(qid=e["id"], question=e["question"], context=e["context"]) for e in examples]
    max_len = sequence_length(args, model)
    try:
        features = build_features(squad_examples, tokenizer, max_len, min(args.doc_stride, max_len // 2),
                                  args.max_query_length)
    except SquadFeatureError as err:
        raise PredictInputError(str(err)) from None
    start_logits, end_logits = predict_logits(model, features, args.batch_size, runtime, None, tokenizer.pad_token_id)
    _, nbest = best_answers(squad_examples, features, start_logits, end_logits, args.n_best_size,
                            args.max_answer_length)
    return [{"id": e.qid, "answer": nbest[e.qid][0]["text"], "score": round(nbest[e.qid][0]["probability"], 6)}
            for e in squad_examples]


# ---------------------------------------------------------------------------------------------- MRPC
def label_name(model, task: str, index: int) -> str:
    name = str(model.config.id2label.get(index, index)) if model.config.id2label else str(index)
    generic = {str(index), f"LABEL_{index}"}
    return MRPC_NAMES[index] if task == "mrpc" and name in generic and index < len(MRPC_NAMES) else name


def predict_pairs(model, tokenizer, examples, args, runtime) -> List[dict]:
    import torch

    device = runtime.device
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
        return f"answer: {result['answer']}\nscore: {result['score']:.4f}"
    return f"label: {result['label']} ({result['label_id']})\nprobability: {result['probability']:.4f}"


def run(args) -> int:
    from central.distributed import DistEnv
    from central.device import resolve_device_kind, torch_device
    from central.runtime import Runtime

    examples = read_examples(args)
    for name in ("batch_size", "doc_stride", "max_answer_length", "n_best_size", "max_query_length"):
        if getattr(args, name) < 1:
            raise PredictInputError(f"--{name} {getattr(args, name)}: must be at least 1")
    model, tokenizer = load(args)
    kind = resolve_device_kind(args.device)
    runtime = Runtime(kind, "eager", "fp32", torch_device(kind, 0), DistEnv())
    model.to(runtime.device)
    predict = predict_squad if args.task_name == "squad" else predict_pairs
    results = predict(model, tokenizer, examples, args, runtime)
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
    export_mode_environment(args.device, "eager")  # predictions run eager; set before torch loads Habana
    return run_main(lambda _: run(args), argv, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
