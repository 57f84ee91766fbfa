"""pretraining/model_names.py: one verdict for every kind of --model_name_or_path, the same everywhere.

The launcher (launcher/inputs.py), run_pretraining (run_setup.resolve_config) and fine-tuning's load_model
all classify a name with resolve_model_name; these tests go through every kind of name and every error
line, and check that the launcher and the scripts accept and refuse the same names with the same line.
"""
import json

import pytest

from launcher.errors import LaunchError
from launcher.inputs import finetuning_model, pretraining_model
from pretraining.bert_config import PRESETS
from pretraining.model_names import (FINETUNING_HUB_IDS, ModelKind, ModelNameError, hub_offline, looks_like_hub_id,
                                     resolve_model_name)
from pretraining.run_setup import resolve_config
from pretraining_shards import VOCAB_SIZE, write_vocab

TINY = {**PRESETS["tiny"].with_vocab_size(VOCAB_SIZE).to_dict()}


@pytest.fixture
def names(tmp_path):
    """One of each kind on disk: {label: path}."""
    hf = tmp_path / "hf_model"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(TINY))
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    for step in (3, 10):
        (ckpts / f"ckpt_{step}.pt").write_bytes(b"")
    (ckpts / "ckpt_latest.pt").write_bytes(b"")  # not a ckpt_<step>.pt name: ignored
    shape_only = tmp_path / "shape_only"
    shape_only.mkdir()
    (shape_only / "bert_config.json").write_text(json.dumps(TINY))
    config = tmp_path / "my_config.json"
    config.write_text(json.dumps(TINY))
    lone = tmp_path / "lone" / "ckpt_5.pt"
    lone.parent.mkdir()
    lone.write_bytes(b"")
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "vocab.txt").write_text("[PAD]\n[CLS]\n[SEP]\n")
    return {"hf": hf, "ckpts": ckpts, "shape_only": shape_only, "config": config, "lone": lone, "empty": empty,
            "vocab": tmp_path / "vocab.txt"}


@pytest.mark.parametrize("label, kind, path, hub_id", [
    ("tiny", ModelKind.PRESET, None, None),
    ("base", ModelKind.PRESET, None, "bert-base-uncased"),
    ("large", ModelKind.PRESET, None, "bert-large-uncased-whole-word-masking"),
    ("hf", ModelKind.HF_FOLDER, "hf_model", None),
    ("ckpts", ModelKind.CHECKPOINT_FOLDER, "checkpoints", None),
    ("shape_only", ModelKind.CONFIG_JSON, "shape_only/bert_config.json", None),
    ("config", ModelKind.CONFIG_JSON, "my_config.json", None),
    ("lone", ModelKind.CHECKPOINT_FILE, "lone/ckpt_5.pt", None),
    ("someone/tiny-bert", ModelKind.HUB_ID, None, "someone/tiny-bert"),
    ("bert-base-cased", ModelKind.HUB_ID, None, "bert-base-cased"),
])
def test_every_kind_of_name(names, tmp_path, label, kind, path, hub_id):
    name = str(names[label]) if label in names else label
    resolved = resolve_model_name(name)
    assert resolved.kind is kind and resolved.name == name and resolved.hub_id == hub_id
    assert resolved.path == (None if path is None else (tmp_path / path).resolve())


def test_shape_and_checkpoint_of_each_kind(names):
    assert resolve_model_name("tiny").shape_file() is None and resolve_model_name("tiny").checkpoint() is None
    assert resolve_model_name(str(names["hf"])).shape_file() == names["hf"] / "config.json"
    folder = resolve_model_name(str(names["ckpts"]))
    assert folder.checkpoint() == names["ckpts"] / "ckpt_10.pt" and folder.shape_file() is None
    (names["ckpts"] / "bert_config.json").write_text(json.dumps(TINY))
    assert folder.shape_file() == names["ckpts"] / "bert_config.json"
    lone = resolve_model_name(str(names["lone"]))
    assert lone.checkpoint() == names["lone"] and lone.shape_file() is None


ERRORS = [
    # (name, hub allowed, the one line)
    ("empty", True, "--model_name_or_path {}: the folder has no config.json (a transformers model), "
                    "bert_config.json or ckpt_N.pt files (pre-training checkpoints)"),
    ("vocab", True, "--model_name_or_path {}: expected a bert_config.json or a ckpt_N.pt file"),
    ("./missing/model", True, "--model_name_or_path ./missing/model: no such file or folder"),
    ("/no/such/ckpt_1.pt", True, "--model_name_or_path /no/such/ckpt_1.pt: no such file or folder"),
    ("a/b/c", True, "--model_name_or_path a/b/c: no such file or folder"),
    ("huge", False, "--model_name_or_path huge: neither a preset (tiny, mini, base, large) nor an existing "
                    "bert_config.json, model folder or ckpt_N.pt"),
    ("someone/tiny-bert", False, "--model_name_or_path someone/tiny-bert: neither a preset (tiny, mini, base, "
                                 "large) nor an existing bert_config.json, model folder or ckpt_N.pt"),
]


@pytest.mark.parametrize("label, hub, line", ERRORS, ids=[e[0] for e in ERRORS])
def test_every_error_line(names, label, hub, line):
    name = str(names[label]) if label in names else label
    with pytest.raises(ModelNameError) as err:
        resolve_model_name(name, hub=hub)
    assert str(err.value) == line.format(name)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("label, hub, line", ERRORS, ids=[e[0] for e in ERRORS])
def test_the_launcher_and_the_scripts_give_the_same_line(names, tmp_path, label, hub, line):
    """Fine-tuning: the launcher's check and load_model; pre-training: the launcher and run_setup."""
    name = str(names[label]) if label in names else label
    expected = line.format(name)
    if hub:
        from transformers import BertForSequenceClassification

        from finetuning.model_loading import ModelLoadError, load_model

        with pytest.raises(ModelNameError) as launcher:
            finetuning_model(name, None)
        with pytest.raises(ModelLoadError) as script:
            load_model(name, BertForSequenceClassification, vocab_file=str(names["vocab"]))
        assert str(launcher.value) == str(script.value) == expected
    else:
        with pytest.raises(ModelNameError) as launcher:
            pretraining_model(name, None)
        with pytest.raises(ModelNameError) as script:  # run_pretraining names the flag it reads
            resolve_config(name, None, str(tmp_path))
        assert str(launcher.value) == expected
        assert str(script.value) == expected.replace("--model_name_or_path", "--config_file")


def test_a_folder_of_checkpoints_is_accepted_by_the_launcher_and_loaded_by_fine_tuning(tmp_path):
    """It used to be refused by the launcher ('no config.json') while load_model took its newest ckpt."""
    import torch
    from transformers import BertForSequenceClassification

    from finetuning.model_loading import load_model
    from pretraining.bert_config import BertConfig
    from pretraining.modeling import BertForPreTraining

    config = BertConfig.from_dict(TINY)
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    for step in (2, 4):
        model = BertForPreTraining(config)
        torch.save({"model": model.state_dict(), "config": config.to_dict(), "global_step": step},
                   folder / f"ckpt_{step}.pt")
    write_vocab(folder / "vocab.txt")
    assert finetuning_model(str(folder), None) == str(folder.resolve())
    loaded = load_model(str(folder), BertForSequenceClassification, num_labels=2)
    assert loaded.source == f"pre-training checkpoint {folder / 'ckpt_4.pt'} (step 4)"
    newest = model.state_dict()["bert.embeddings.word_embeddings.weight"]
    assert torch.equal(loaded.model.state_dict()["bert.embeddings.word_embeddings.weight"],
                       newest[:VOCAB_SIZE])


def test_pretraining_uses_the_shape_and_starts_from_the_checkpoint(names):
    assert pretraining_model("mini", None) == ("mini", None)
    assert pretraining_model(str(names["hf"]), None) == (str(names["hf"] / "config.json"), None)
    assert pretraining_model(str(names["shape_only"]), None) == (str(names["shape_only"] / "bert_config.json"), None)
    assert pretraining_model(str(names["ckpts"]), "tiny") == ("tiny", str(names["ckpts"] / "ckpt_10.pt"))
    with pytest.raises(LaunchError, match=f"--model_name_or_path {names['lone']}: a checkpoint has no shape; "
                                          "give --config_file"):
        pretraining_model(str(names["lone"]), None)
    with pytest.raises(LaunchError, match="--config_file .*: a checkpoint has no shape; give a bert_config.json"):
        pretraining_model("tiny", str(names["lone"]))


def test_fine_tuning_gets_hub_ids_for_base_and_large(names):
    assert {name: finetuning_model(name, None) for name in FINETUNING_HUB_IDS} == FINETUNING_HUB_IDS
    assert finetuning_model("mini", None) == "mini"
    assert finetuning_model(str(names["config"]), None) == str(names["config"].resolve())


def test_one_hub_offline_check(monkeypatch):
    assert hub_offline({"HF_HUB_OFFLINE": "1"}) and hub_offline({"TRANSFORMERS_OFFLINE": "true"})
    assert not hub_offline({"HF_HUB_OFFLINE": "0"}) and not hub_offline({})
    import finetuning.model_loading as model_loading

    assert model_loading.hub_offline is hub_offline  # the loader asks the same function


def test_hub_id_shape():
    assert looks_like_hub_id("bert-base-uncased") and looks_like_hub_id("google/bert_uncased_L-2_H-128_A-2")
    for not_an_id in ("", "a/b/c", "./x", "/abs", "~/x", "x.pt", "x.json", "has space"):
        assert not looks_like_hub_id(not_an_id), not_an_id


def test_offline_hub_id_not_cached_is_one_line_in_the_launcher_and_the_loader(tmp_path, monkeypatch):
    from transformers import BertForSequenceClassification

    from finetuning.model_loading import ModelLoadError, load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    name = "nobody-here/bert-nothing"
    with pytest.raises(ModelNameError) as launcher:
        finetuning_model(name, str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError) as script:
        load_model(name, BertForSequenceClassification, cache_dir=str(tmp_path / "cache"))
    assert str(launcher.value) == str(script.value)
    assert str(script.value).startswith(f"--model_name_or_path {name}: hub downloads are off (HF_HUB_OFFLINE) and "
                                        "the model is not in the local Hugging Face cache; pass a local model")
