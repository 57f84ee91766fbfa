"""tools/habana_model_runner.py: YAML recipe -> demo_bert.py command line.

Every shipped recipe is checked three ways: its argv is accepted by demo_bert.py's own parser and means
the same as the seed command written in the recipe's header; demo_bert.py --dry_run on it exits 0;
and malformed recipes end with exit 2 and a one-line message naming the key.
"""
import copy
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import demo_bert
from tools import habana_model_runner as runner
from data import quickstart

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "tools" / "hb_configs").glob("*.yaml"))
SEED_DATA = {"mrpc": "/data/bert/glue_data/MRPC", "squad": "/data/bert/Squad"}


def load(path):
    return yaml.safe_load(path.read_text())


def same_as(path):
    """The command written under '# Same as' in the recipe's header, as argv after 'demo_bert.py'."""
    lines = path.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("# Same as"))
    words = shlex.split(lines[index + 1].lstrip("#").strip())
    return words[words.index("demo_bert.py") + 1:]


def parse(argv):
    if argv[0] == "quickstart":
        return vars(quickstart.build_parser().parse_args(argv[1:]))
    return vars(demo_bert.build_parser().parse_args(argv))


def test_every_seed_configuration_has_a_recipe():
    names = {p.name for p in RECIPES}
    for wanted in ("bert_large_pretrain_bf16_lazy.yaml", "bert_large_pretrain_fp32_lazy.yaml",
                   "bert_base_finetune_fp32_mrpc_eager.yaml", "bert_base_finetune_fp32_squad_eager.yaml",
                   "bert_large_finetune_fp32_mrpc_graph.yaml", "bert_large_finetune_bf16_squad_lazy.yaml",
                   "bert_large_finetune_fp32_squad_lazy.yaml", "dist_bert_large_finetune_bf16_squad_lazy.yaml",
                   "dist_bert_large_pretrain_bf16_lazy.yaml", "cpu_quickstart.yaml"):
        assert wanted in names


def test_pretraining_recipe_argv_exactly():
    argv = runner.build_argv(load(REPO / "tools/hb_configs/bert_large_pretrain_bf16_lazy.yaml"), "bert",
                             dry_run=True, python="PY")
    p1 = "/data/bert/hdf5_lower_case_1_seq_len_128_max_pred_20_masked_lm_prob_0.15_random_seed_12345_dupe_factor_5/wikicorpus_en"
    p2 = p1.replace("seq_len_128_max_pred_20", "seq_len_512_max_pred_80")
    assert argv == ["PY", str(REPO / "demo_bert.py"), "pretraining", "--model_name_or_path", "large",
                    "--mode", "lazy", "--data_type", "bf16", "--data_dir", p1, p2, "--batch_size", "64", "8",
                    "--accumulate_gradients", "--allreduce_post_accumulation",
                    "--allreduce_post_accumulation_fp16", "--dry_run"]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_means_the_command_in_its_header(path):
    argv = runner.build_argv(load(path), "bert", python="PY")[2:]
    from_recipe, from_header = parse(argv), parse(same_as(path))
    # The header writes placeholders for data folders; everything else must agree exactly.
    placeholders = {"data_dir"} if any("<dataset_path>" in w or w in ("P1", "P2") for w in same_as(path)) else set()
    for key in set(from_recipe) | set(from_header):
        if key not in placeholders:
            assert from_recipe.get(key) == from_header.get(key), key
    if from_recipe.get("task_name") in SEED_DATA and placeholders:
        assert from_recipe["data_dir"] == SEED_DATA[from_recipe["task_name"]]


@pytest.fixture
def site(tmp_path):
    """Stand-ins for a site's data folders, so demo_bert.py's checks pass in --dry_run."""
    folders = {}
    for name in ("phase1", "phase2", "MRPC", "Squad"):
        folder = tmp_path / name
        folder.mkdir()
        if name.startswith("phase"):
            (folder / "wiki_training_0.hdf5").write_bytes(b"")
        folders[name] = str(folder)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    folders["vocab"] = str(tmp_path / "vocab.txt")
    return folders


def site_overrides(recipe, site):
    task = recipe["parameters"].get("task_name")
    if recipe["parameters"]["command"] == "pretraining":
        overrides = {"data_dir": [site["phase1"], site["phase2"]]}
        if "vocab_file" in recipe["parameters"]:
            overrides["vocab_file"] = site["vocab"]
        return overrides
    if recipe["parameters"]["command"] == "finetuning":
        overrides = {"data_dir": site["MRPC" if task == "mrpc" else "Squad"]}
        if not recipe["parameters"]["model_name_or_path"] in ("base", "large"):
            overrides["model_name_or_path"] = "tiny"
        return overrides
    return {}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_dry_run_of_every_recipe_exits_0(path, site, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = load(path)
    argv = runner.build_argv(recipe, "bert", dry_run=True, overrides=site_overrides(recipe, site))
    assert argv[-1] == "--dry_run"
    command = recipe["parameters"]["command"]
    if command == "quickstart":
        assert quickstart.main(argv[3:]) == 0
        out = capsys.readouterr().out
        assert "demo_bert.py pretraining --model_name_or_path tiny" in out
        return
    assert demo_bert.main(argv[2:]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    data_type = recipe["parameters"]["data_type"]
    if command == "pretraining" and recipe["parameters"].get("phase") == 1:
        assert out.count("pretraining.run_pretraining") == 1 and f"--input_dir={site['phase1']}" in out
    elif command == "pretraining":
        assert out.count("pretraining.run_pretraining") == 2  # phase 1 and phase 2
        assert f"--input_dir={site['phase1']}" in out and f"--input_dir={site['phase2']}" in out
    else:
        module = "run_squad" if recipe["parameters"]["task_name"] == "squad" else "run_glue"
        assert f"finetuning.{module}" in out
        assert "--do_eval" in out
    assert f"--data_type={data_type}" in out


def test_runner_script_runs_demo_bert_dry_run(site, tmp_path):
    """As a script (tools/ is sys.path[0]), from another folder, without PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "habana_model_runner.py"), "--framework", "pytorch",
         "--model", "bert", "--hb_config", str(REPO / "tools/hb_configs/bert_base_finetune_fp32_squad_eager.yaml"),
         "--dry_run", "--set", f"data_dir={site['Squad']}", "--set", "num_train_epochs=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    first, rest = done.stdout.split("\n", 1)
    assert first.startswith("habana_model_runner: ") and "finetuning --model_name_or_path base" in first
    assert "finetuning.run_squad" in rest and "--model_name_or_path=bert-base-uncased" in rest
    assert "--num_train_epochs=1.0" in rest and "--per_device_train_batch_size=12" in rest
    assert f"--data_dir={site['Squad']}" in rest


def test_env_variables_are_set_and_unset():
    env = runner.recipe_environment({"env_variables": {"LOG_LEVEL_ALL": 6, "FLAG": True, "GONE": None}},
                                    base={"GONE": "x", "KEEP": "y"})
    assert env == {"LOG_LEVEL_ALL": "6", "FLAG": "true", "KEEP": "y"}


GOOD = {"model": "bert", "parameters": {"command": "finetuning", "task_name": "squad", "data_type": "bf16",
                                        "model_name_or_path": "base",
                                        "dataset_parameters": {"squad": {"data_type_parameters": {"bf16": {"batch_size": 24}}}}}}


def malformed(change):
    recipe = copy.deepcopy(GOOD)
    change(recipe)
    return yaml.safe_dump(recipe, sort_keys=False)


@pytest.mark.parametrize("text, key", [
    ("model: [bert\n", "not valid YAML (line 2)"),
    ("- a\n- b\n", "must be a mapping"),
    (malformed(lambda r: r.update(paramters={})), "paramters: unknown top-level key"),
    (malformed(lambda r: r.update(model="resnet")), "model: the recipe is for 'resnet'"),
    (malformed(lambda r: r.pop("parameters")), "parameters: must be a mapping"),
    (malformed(lambda r: r["parameters"].update(command="train")), "parameters.command"),
    (malformed(lambda r: r["parameters"].update(store_true="do_eval")), "parameters.store_true"),
    (malformed(lambda r: r["parameters"].update(batch_size={"a": 1})), "parameters.batch_size"),
    (malformed(lambda r: r["parameters"].update(task_name="mrpc")), "parameters.dataset_parameters.mrpc: missing"),
    (malformed(lambda r: r["parameters"].update(data_type="fp32")),
     "parameters.dataset_parameters.squad.data_type_parameters.fp32: missing"),
    (malformed(lambda r: r["parameters"]["dataset_parameters"]["squad"]["data_type_parameters"]["bf16"].update(
        batch_size=[1, [2]])), "parameters.dataset_parameters.squad.data_type_parameters.bf16.batch_size"),
    (malformed(lambda r: r.update(env_variables=["A=1"])), "env_variables: must be a mapping"),
    (malformed(lambda r: r.update(env_variables={"1BAD": 1})), "env_variables.1BAD"),
])
def test_malformed_recipe_exits_2_naming_the_key(tmp_path, capsys, text, key):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    assert runner.main(["--framework", "pytorch", "--model", "bert", "--hb_config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert key in err and err.count("\n") == 0


@pytest.mark.parametrize("args, message", [
    (["--framework", "tensorflow", "--model", "bert"], "--framework tensorflow"),
    (["--framework", "pytorch", "--model", "resnet"], "--model resnet"),
    (["--framework", "pytorch", "--model", "bert", "--set", "oops"], "--set oops: expected name=value"),
])
def test_bad_runner_options_exit_2(tmp_path, capsys, args, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert runner.main([*args, "--hb_config", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_missing_recipe_file(tmp_path, capsys):
    assert runner.main(["--framework", "pytorch", "--model", "bert", "--hb_config", str(tmp_path / "no.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_overrides_and_comma_values():
    recipe = copy.deepcopy(GOOD)
    recipe["parameters"]["dataset_parameters"]["squad"]["data_dir"] = "/a,/b"
    argv = runner.build_argv(recipe, "bert", python="PY",
                             overrides=runner.parse_overrides(["max_steps=5", "do_eval=true", "cache_dir=null"]))
    assert argv[2:] == ["finetuning", "--task_name", "squad", "--data_type", "bf16", "--model_name_or_path", "base",
                        "--data_dir", "/a", "/b", "--batch_size", "24", "--max_steps", "5", "--do_eval"]


@pytest.mark.parametrize("recipe_name, step", [("cpu_tiny_pretrain_fp32.yaml", "pretraining"),
                                               ("cpu_tiny_finetune_fp32_mrpc_builtin.yaml", "mrpc"),
                                               ("cpu_tiny_finetune_fp32_squad_builtin.yaml", "squad")])
def test_cpu_recipes_match_the_quickstart(recipe_name, step, monkeypatch):
    """The CPU recipes redo a quick-start step: same options as data/quickstart.py plans (run from the repo root)."""
    monkeypatch.chdir(REPO)
    recipe_args = parse(runner.build_argv(load(REPO / "tools/hb_configs" / recipe_name), "bert", python="PY")[2:])
    steps = quickstart.plan_steps(REPO / "quickstart_run", quickstart.BUDGETS["full"], "cpu", 12439)
    planned = next(argv[2:] for _, argv in steps
                   if argv[2:3] == [step] or ("--task_name" in argv and argv[argv.index("--task_name") + 1] == step))
    planned_args = parse(planned)

    def norm(value):
        if isinstance(value, list):
            return [norm(v) for v in value]
        return str((REPO / value).resolve()) if isinstance(value, str) and "quickstart_run" in value else value

    for key in set(recipe_args) | set(planned_args):
        if key in ("seed", "logging_steps"):
            continue  # the quick start pins these for a reproducible demo
        assert norm(recipe_args.get(key)) == norm(planned_args.get(key)), key
