"""The bad-input matrix: tests/bad_input_cases.yaml is the list of cases, docs/bad-input.md shows them.

Each case is run as its own process (see warm_runner.py): exit status 2, the case's message in the one
stderr line, no traceback, and no new or changed file in the output folder ``{tmp}`` except temporary
names. The YAML file is the one source of truth: adding a case there adds a test here; the inputs in
braces are built by the BUILDERS below, and the file's ``inputs`` must describe each of them.
docs/bad-input.md's table is generated from the same file (tests/bad_input_cases.py), and a test here
fails when it differs.
"""
import hashlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple

import pytest

from bad_input_cases import DOC_FILE, Case, generated_part, load, render
from pretraining_shards import VOCAB_SIZE, make_dataset, shard_arrays, write_shard, write_vocab

REPO_ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINTS = {"demo_bert.py", "python"}
# Command modules that need another module of the checkout (merged from another branch) to exist.
NEEDS = {"finetuning.run_glue": "finetuning.glue_task", "tools.report": "tools.report",
         "tools.predict": "tools.predict"}
PASS_THROUGH_MODULES = {"report": "tools.report", "predict": "tools.predict"}

TABLE = load()
ROWS: List[Case] = TABLE.cases
MACROS: Dict[str, str] = TABLE.macros
DESCRIBED = set(TABLE.inputs)


# ------------------------------------------------------------------------------------------ the inputs
class Payload:
    """Unpickling this runs os.system: a checkpoint carrying it must be refused, never loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _tiny_config(**changes) -> dict:
    from pretraining.bert_config import PRESETS

    return {**PRESETS["tiny"].with_vocab_size(VOCAB_SIZE).to_dict(), **changes}


def _checkpoint(path: Path, **entries) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(entries, path)
    return path


def _truncated_ckpt(root: Path) -> Path:
    import torch

    path = _checkpoint(root / "truncated" / "ckpt_4.pt", model={"w": torch.zeros(64, 64)}, config=_tiny_config(),
                       step=4)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _pickle_ckpt(root: Path) -> Path:
    import torch

    return _checkpoint(root / "pickle" / "ckpt_4.pt", model={"w": torch.zeros(2)}, config=_tiny_config(), step=4,
                       hook=Payload(root / "PWNED"))


def _folder(root: Path, name: str, files: Dict[str, str]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for file_name, text in files.items():
        (folder / file_name).write_text(text, encoding="utf-8")
    return folder


def _squad(version="1.1", qa=None, context="Paris is the capital of France.", questions=True) -> str:
    qa = qa or {"id": "q1", "question": "What is the capital?", "answers": [{"text": "Paris", "answer_start": 0}]}
    paragraphs = [{"context": context, "qas": [qa]}] if questions else []
    return json.dumps({"version": version, "data": [{"title": "t", "paragraphs": paragraphs}]})


SQUAD_DEV = _squad()
MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
MRPC_ROWS = "1\t1\t2\tThe cat sat .\tA cat was sitting .\n0\t3\t4\tIt rains .\tThe sun is out .\n"
MRPC_TEST = "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t5\t6\tA dog .\tThe dog .\n"


def _mrpc(root: Path, name: str, train: str, dev: bool = True) -> Path:
    files = {"train.tsv": MRPC_HEADER + train, "test.tsv": MRPC_TEST}
    if dev:
        files["dev.tsv"] = MRPC_HEADER + MRPC_ROWS
    return _folder(root, name, files)


def _shards_big_ids(root: Path) -> Path:
    folder = make_dataset(root / "big_ids", num_files=1, vocab_size=VOCAB_SIZE + 50)
    write_vocab(folder / "vocab.txt", VOCAB_SIZE)
    return folder


def _shards_no_key(root: Path) -> Path:
    arrays = shard_arrays(8, 32, 5, VOCAB_SIZE, 0)
    del arrays["masked_lm_ids"]
    folder = root / "no_key"
    folder.mkdir()
    write_shard(folder / "wiki_training_0.hdf5", arrays)
    write_vocab(folder / "vocab.txt")
    return folder


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _not_hdf5(root: Path) -> Path:
    folder = _folder(root, "not_hdf5", {"wiki_training_0.hdf5": "plain text, no HDF5 signature\n"})
    write_vocab(folder / "vocab.txt")
    return folder


def _a_file(root: Path) -> Path:
    return _write(root / "a_file", "a plain file, not a folder\n")


def _empty_dir(root: Path) -> Path:
    (root / "empty").mkdir()
    return root / "empty"


# placeholder -> builder(root folder of the shared inputs) -> path; built once per test module.
BUILDERS = {
    "missing": lambda root: root / "does_not_exist",
    "empty_dir": _empty_dir,
    "a_file": _a_file,
    "shards": lambda root: make_dataset(root / "shards", num_files=2, samples=16),
    "shards_no_key": _shards_no_key,
    "shards_seq24": lambda root: make_dataset(root / "seq24", num_files=1, samples=24, seq_len=24),
    "shards_not_hdf5": _not_hdf5,
    "shards_big_ids": _shards_big_ids,
    "vocab": lambda root: write_vocab(root / "vocab.txt"),
    "vocab_empty": lambda root: _write(root / "vocab_empty.txt", ""),
    "vocab_no_cls": lambda root: _write(root / "vocab_no_cls.txt", "[PAD]\n[UNK]\n[MASK]\nthe\ncat\n"),
    "config_not_json": lambda root: _folder(root, "not_json", {"bert_config.json": "{ hidden_size: 32"})
    / "bert_config.json",
    "config_heads": lambda root: _write(root / "config_heads.json", json.dumps(
        _tiny_config(hidden_size=30, num_attention_heads=4))),
    "config_small_vocab": lambda root: _write(root / "config_small_vocab.json", json.dumps(
        _tiny_config(vocab_size=50))),
    "ckpt_truncated": _truncated_ckpt,
    "ckpt_pickle": _pickle_ckpt,
    "ckpt_other_config": lambda root: _checkpoint(root / "other_config" / "ckpt_4.pt", model={},
                                                  config=_tiny_config(hidden_size=128), step=4),
    "ckpt_no_model": lambda root: _checkpoint(root / "no_model" / "ckpt_4.pt", config=_tiny_config(), step=4),
    "model_dir_no_config": lambda root: _folder(root, "no_config", {"model.safetensors": "not really weights"}),
    "hostfile_empty": lambda root: _write(root / "hosts.txt", "# no hosts yet\n\n"),
    "hostfile_two": lambda root: _write(root / "two_hosts.txt", "node-a slots=8\nnode-b slots=8\n"),
    "squad_ok": lambda root: _folder(root, "squad_ok", {"train-v1.1.json": SQUAD_DEV, "dev-v1.1.json": SQUAD_DEV}),
    "squad_not_json": lambda root: _folder(root, "squad_not_json", {"train-v1.1.json": "{ this is not json"}),
    "squad_v2": lambda root: _folder(root, "squad_v2", {"train-v1.1.json": _squad(version="2.0")}),
    "squad_bad_start": lambda root: _folder(root, "squad_bad_start", {"train-v1.1.json": _squad(qa={
        "id": "q1", "question": "?", "answers": [{"text": "Paris", "answer_start": 99}]})}),
    "squad_no_question": lambda root: _folder(root, "squad_no_question", {"train-v1.1.json": _squad(qa={
        "id": "q1", "answers": [{"text": "Paris", "answer_start": 0}]})}),
    "squad_empty": lambda root: _folder(root, "squad_empty", {"train-v1.1.json": _squad(questions=False)}),
    "mrpc_ok": lambda root: _mrpc(root, "mrpc_ok", MRPC_ROWS),
    "mrpc_columns": lambda root: _mrpc(root, "mrpc_columns", MRPC_ROWS + "1\t7\tonly three columns\n"),
    "mrpc_label": lambda root: _mrpc(root, "mrpc_label", MRPC_ROWS + "2\t7\t8\tA .\tB .\n"),
    "mrpc_header_only": lambda root: _mrpc(root, "mrpc_header_only", ""),
    "mrpc_no_dev": lambda root: _mrpc(root, "mrpc_no_dev", MRPC_ROWS, dev=False),
    "corpus": lambda root: _write(root / "corpus.txt", "the cat sat on the mat .\nthe dog ran .\n\n"
                                                       "tok5 tok6 tok7 .\ntok8 tok9 .\n"),
    "corpus_empty": lambda root: _write(root / "corpus_empty.txt", "\n\n\n"),
    "corpus_jsonl_bad": lambda root: _write(root / "corpus.jsonl", '{"text": "one document ."}\n{"text": \n'),
    "predict_lines_bad": lambda root: _write(root / "pairs.jsonl", '{"sentence1": "a", "sentence2": "b"}\nnot json\n'),
}
# Built inside each row's own output folder {tmp}: the row must leave them exactly as they were.
PER_ROW_BUILDERS = {
    "trained_out": lambda tmp: _folder(tmp, "trained", {"config.json": "{}", "model.safetensors": "weights"}),
}



# ------------------------------------------------------------------------------------------ commands
def expand(command: str, values: Dict[str, str]) -> List[str]:
    """The row's argv: macros expanded, placeholders replaced by the built paths (never via a shell)."""
    words: List[str] = []
    for word in shlex.split(command):
        name = word[1:-1] if word.startswith("{") and word.endswith("}") else None
        if name in MACROS:
            words.extend(expand(MACROS[name], values))
        else:
            words.append(substitute(word, values))
    return words


def substitute(text: str, values: Dict[str, str]) -> str:
    """Replace each {name} that has a value (anything else, like a literal "{0, 1}", stays)."""
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


def runner_argv(words: List[str]) -> List[str]:
    """demo_bert.py ... -> [<repo>/demo_bert.py, ...];  python -m mod ... -> [-m, mod, ...]."""
    if words[0] == "demo_bert.py":
        return [str(REPO_ROOT / "demo_bert.py"), *words[1:]]
    assert words[0] == "python" and words[1] == "-m", words
    return words[1:]


def module_of(words: List[str]) -> str:
    if words[0] == "python":
        return words[2]
    sub = words[1] if len(words) > 1 else ""
    return PASS_THROUGH_MODULES.get(sub, "demo_bert")


def placeholders_of(row: Case) -> set:
    names, pending = set(), [row.command, row.message]
    while pending:
        for name in re.findall(r"\{(\w+)\}", pending.pop()):
            if name in MACROS and name not in names:
                pending.append(MACROS[name])
            names.add(name)
    return names


# ------------------------------------------------------------------------------------------ running
def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(BERT_DISABLE_PROGRESS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("MULTI_HLS_IPS", None)  # would stand in for a hostfile
    return env


class Result(NamedTuple):
    status: int
    stdout: str
    stderr: str


class WarmRunner:
    """Client of tests/warm_runner.py."""

    def __init__(self, env: dict):
        self.env = env
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("warm_runner.py"))],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                        cwd=REPO_ROOT)
        assert json.loads(self.process.stdout.readline()) == {"ready": True}

    def run(self, argv: List[str], out_dir: Path, timeout: float = 180) -> Result:
        stdout, stderr = out_dir.parent / f"{out_dir.name}.stdout", out_dir.parent / f"{out_dir.name}.stderr"
        request = {"argv": argv, "cwd": str(REPO_ROOT), "env": self.env, "stdout": str(stdout),
                   "stderr": str(stderr), "timeout": timeout}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        status = json.loads(self.process.stdout.readline())["status"]
        return Result(status, stdout.read_text(errors="replace"), stderr.read_text(errors="replace"))

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=30)


def run_fresh(argv: List[str], env: dict, timeout: float = 300) -> Result:
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                          timeout=timeout)
    return Result(done.returncode, done.stdout, done.stderr)


def snapshot(folder: Path) -> Dict[str, str]:
    """{relative path: sha256} of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def is_temporary(relative: str) -> bool:
    name = Path(relative).name
    return name.startswith(".") and ".tmp" in name


def left_looking_complete(out: Path, before: Dict[str, str]) -> List[str]:
    """New or changed files under ``out`` other than temporary names. A run that failed after it began
    logging may keep its log (the record of what happened), as long as the log does not claim the end
    of a run (final_loss, e2e_train_time)."""
    after = snapshot(out)
    found = []
    for relative in sorted(p for p in after if after[p] != before.get(p)):
        if is_temporary(relative):
            continue
        if Path(relative).name == "dllogger.json" or relative.endswith(".log"):
            text = (out / relative).read_text(errors="replace")
            if "final_loss" not in text and "e2e_train_time" not in text:
                continue
        found.append(relative)
    return found


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Dict[str, str]:
    root = tmp_path_factory.mktemp("bad_inputs")
    return {name: str(build(root)) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def warm():
    runner = WarmRunner(subprocess_env())
    yield runner
    runner.close()


def prepare_row(row: Case, inputs: Dict[str, str], tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    values = dict(inputs, tmp=str(out))
    for name, build in PER_ROW_BUILDERS.items():
        if name in placeholders_of(row):
            values[name] = str(build(out))
    words = expand(row.command, values)
    if "hpu" in words and importlib.util.find_spec("habana_frameworks") is not None:
        pytest.skip("this machine has the Habana stack, so --device hpu is not bad input here")
    module = module_of(words)
    needed = NEEDS.get(module)
    if needed and importlib.util.find_spec(needed) is None:
        pytest.skip(f"{needed} is not in this checkout yet")
    return out, runner_argv(words), substitute(row.message, values)


def check_result(row: Case, result: Result, message: str, before: Dict[str, str], out: Path, inputs) -> None:
    shown = f"[{row.id}] status {result.status}\nstderr:\n{result.stderr[-3000:]}\nstdout:\n{result.stdout[-1000:]}"
    assert result.status == 2, shown
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if lines and re.match(r"demo_bert\.py: phase\d failed with exit status 2", lines[-1]):
        lines = lines[:-1]  # a real (not dry) launcher run adds which phase failed
    assert len(lines) == 1, shown
    assert message in lines[0], f"expected {message!r} in the line\n{shown}"
    left = left_looking_complete(out, before)
    assert not left, f"[{row.id}] left output files: {left}"
    assert not Path(inputs["missing"]).exists(), f"[{row.id}] created {inputs['missing']}"
    assert not (Path(inputs["vocab"]).parent / "PWNED").exists(), f"[{row.id}] ran code from a checkpoint"


# ------------------------------------------------------------------------------------------ tests
def test_the_table_is_complete_and_consistent():
    assert len(ROWS) >= 80, f"only {len(ROWS)} cases in tests/bad_input_cases.yaml"
    ids = [row.id for row in ROWS]
    assert len(ids) == len(set(ids)), "row ids must be unique"
    used = set().union(*(placeholders_of(row) for row in ROWS))
    known = set(BUILDERS) | set(PER_ROW_BUILDERS) | set(MACROS) | {"tmp"}
    assert used <= known, f"placeholders without a builder: {sorted(used - known)}"
    assert DESCRIBED == set(BUILDERS) | set(PER_ROW_BUILDERS) | {"tmp"}, \
        f"described inputs and builders differ: {sorted(DESCRIBED ^ (set(BUILDERS) | set(PER_ROW_BUILDERS) | {'tmp'}))}"
    assert not set(BUILDERS) - used, f"inputs no row uses: {sorted(set(BUILDERS) - used)}"
    for row in ROWS:
        assert shlex.split(row.command)[0] in ENTRY_POINTS, row
        assert row.message and row.what, row
    areas = {row.id.split("-")[0] for row in ROWS}
    assert {"launch", "pre", "squad", "ft", "glue", "prep"} <= areas


def test_the_readme_quotes_real_cases():
    """README.md's short table of common errors (section "Errors") quotes cases of the YAML file as they are."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "\n## Errors\n" in readme, "README.md has no Errors section"
    section = readme.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    quoted = re.findall(r"^\| `([\w-]+)` \| [^|]+ \| `([^`]+)` \|$", section, flags=re.M)
    assert len(quoted) >= 5, "the README's Errors section lists no cases"
    by_id = {row.id: row for row in ROWS}
    for case_id, message in quoted:
        assert case_id in by_id, f"README.md quotes {case_id}, which tests/bad_input_cases.yaml lacks"
        assert message == by_id[case_id].message, f"README.md quotes {case_id}'s message as {message!r}"


def test_the_document_shows_the_same_cases():
    """docs/bad-input.md's legend and table are what tests/bad_input_cases.yaml gives, case for case."""
    shown = generated_part(DOC_FILE.read_text(encoding="utf-8"))
    assert shown is not None, f"{DOC_FILE} lacks the marker lines of its generated part"
    shown_ids = re.findall(r"^\| `([\w-]+)` \|", shown, flags=re.M)
    assert shown_ids == [row.id for row in ROWS], "the document lists other cases; python tests/bad_input_cases.py --write"
    assert shown == render(TABLE), "the document is out of date; python tests/bad_input_cases.py --write"


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_row(row, inputs, warm, tmp_path):
    out, argv, message = prepare_row(row, inputs, tmp_path)
    before = snapshot(out)
    result = warm.run(argv, out)
    check_result(row, result, message, before, out, inputs)


FRESH_SAMPLE = ("launch-batch-divide", "pre-hdf5-key", "prep-vocab-no-cls")


@pytest.mark.parametrize("row_id", FRESH_SAMPLE)
def test_a_fresh_interpreter_gives_the_same_result(row_id, inputs, warm, tmp_path):
    """The warm runner only saves import time: a fresh ``python ...`` gives the same status and stderr."""
    row = next(r for r in ROWS if r.id == row_id)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    out, argv, message = prepare_row(row, inputs, tmp_path / "a")
    before = snapshot(out)
    fresh = run_fresh(argv, subprocess_env())
    check_result(row, fresh, message, before, out, inputs)
    out_b, argv_b, _ = prepare_row(row, inputs, tmp_path / "b")
    warm_result = warm.run(argv_b, out_b)
    assert warm_result.status == fresh.status
    assert warm_result.stderr.replace(str(out_b), "<out>") == fresh.stderr.replace(str(out), "<out>")
