"""State dicts both ways between our model and transformers, and the HF-format export."""
import json
import os

import pytest
import torch

from pretraining.bert_config import BertConfig
from pretraining.hf_conversion import (ConversionError, export_hf, from_hf_state_dict, to_hf_config,
                                       to_hf_state_dict)
from pretraining.modeling import BertForPreTraining

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

WORDS = ["the", "a", "hello", "world", "bert", "##s", "model", ".", ",", "is", "good"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS  # 16 entries -> padded stays 16
TINY = BertConfig(vocab_size=len(VOCAB) + 3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=32)  # 19 -> padded 24


def write_vocab(path, size):
    tokens = VOCAB + [f"extra{i}" for i in range(size - len(VOCAB))]
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY.vocab_size, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    return ids, torch.randint(0, 2, (3, 12), generator=gen), mask, torch.tensor([[1, 4, 7], [2, 0, 0], [3, 5, 0]])


def hf_outputs_at(hf, ids, types, mask, positions):
    with torch.no_grad():
        out = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
    gathered = torch.gather(out.prediction_logits, 1, positions[..., None].expand(-1, -1, TINY.vocab_size))
    return gathered, out.seq_relationship_logits


def randomize(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.2)


def test_to_hf_state_dict_trims_vocab_and_adds_tied_decoder():
    model = BertForPreTraining(TINY)
    hf_state = to_hf_state_dict(model.state_dict(), TINY)
    assert hf_state["bert.embeddings.word_embeddings.weight"].shape == (19, 32)
    assert hf_state["cls.predictions.bias"].shape == (19,)
    assert torch.equal(hf_state["cls.predictions.decoder.weight"], hf_state["bert.embeddings.word_embeddings.weight"])
    reference = transformers.BertForPreTraining(to_hf_config(TINY)).state_dict()
    assert set(hf_state) == set(reference)
    assert all(hf_state[k].shape == reference[k].shape for k in reference)


def test_from_hf_loads_transformers_weights_with_identical_outputs():
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(to_hf_config(TINY)).eval()
    randomize(hf)
    ours = BertForPreTraining(TINY).eval()
    old_style = dict(hf.state_dict())  # older transformers also saved these buffers
    old_style["bert.embeddings.position_ids"] = torch.arange(32)[None]
    old_style["bert.embeddings.token_type_ids"] = torch.zeros(1, 32, dtype=torch.long)
    ours.load_state_dict(from_hf_state_dict(old_style, TINY), strict=True)
    assert ours.bert.embeddings.word_embeddings.weight.shape[0] == 24
    assert torch.count_nonzero(ours.bert.embeddings.word_embeddings.weight[19:]) == 0
    ids, types, mask, positions = batch()
    with torch.no_grad():
        mlm, nsp = ours(ids, types, mask, positions)
    hf_mlm, hf_nsp = hf_outputs_at(hf, ids, types, mask, positions)
    torch.testing.assert_close(mlm, hf_mlm, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(nsp, hf_nsp, atol=1e-4, rtol=1e-4)


def test_wrapper_prefixes_are_stripped_and_round_trip_is_exact():
    model = BertForPreTraining(TINY)
    wrapped = {"module._orig_mod." + k: v for k, v in model.state_dict().items()}  # DDP around compile
    back = from_hf_state_dict(to_hf_state_dict(wrapped, TINY), TINY)
    for key, value in model.state_dict().items():
        if key in ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias"):
            assert torch.equal(back[key][:19], value[:19]), key
        else:
            assert torch.equal(back[key], value), key
    assert set(back) == set(model.state_dict())


def test_mismatched_vocab_is_a_clear_error():
    model = BertForPreTraining(TINY)
    with pytest.raises(ConversionError, match="vocab rows; config vocab_size is 100"):
        to_hf_state_dict(model.state_dict(), BertConfig(**{**TINY.to_dict(), "vocab_size": 100}))
    hf_state = to_hf_state_dict(model.state_dict(), TINY)
    with pytest.raises(ConversionError, match="word_embeddings"):
        from_hf_state_dict(hf_state, BertConfig(**{**TINY.to_dict(), "vocab_size": 18}))
    with pytest.raises(ConversionError, match="no 'cls.predictions.bias'"):
        to_hf_state_dict({"bert.embeddings.word_embeddings.weight": torch.zeros(19, 32)}, TINY)


def test_export_loads_in_transformers_with_identical_outputs(tmp_path):
    torch.manual_seed(0)
    ours = BertForPreTraining(TINY).eval()
    randomize(ours, seed=1)
    vocab = write_vocab(tmp_path / "vocab.txt", TINY.vocab_size)
    out_dir = tmp_path / "export"
    out_dir.mkdir()
    (out_dir / "keep_me.txt").write_text("unrelated file")
    export_hf(ours, TINY, vocab, out_dir, do_lower_case=True)

    assert sorted(p.name for p in out_dir.iterdir()) == [
        "config.json", "keep_me.txt", "model.safetensors", "tokenizer_config.json", "vocab.txt"]
    config = json.loads((out_dir / "config.json").read_text())
    assert config["model_type"] == "bert" and config["vocab_size"] == 19 and config["architectures"] == [
        "BertForPreTraining"]
    hf = transformers.BertForPreTraining.from_pretrained(out_dir).eval()
    ids, types, mask, positions = batch(seed=2)
    with torch.no_grad():
        mlm, nsp = ours(ids, types, mask, positions)
    hf_mlm, hf_nsp = hf_outputs_at(hf, ids, types, mask, positions)
    torch.testing.assert_close(hf_mlm, mlm, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hf_nsp, nsp, atol=1e-5, rtol=1e-5)
    assert hf.cls.predictions.decoder.weight.data_ptr() == hf.bert.embeddings.word_embeddings.weight.data_ptr()

    # The encoder loads into other heads by name (what fine-tuning does).
    qa = transformers.BertForQuestionAnswering.from_pretrained(out_dir)
    torch.testing.assert_close(qa.bert.encoder.layer[1].output.dense.weight,
                               ours.bert.encoder.layer[1].output.dense.weight)


@pytest.mark.parametrize("lower", [True, False])
def test_export_tokenizer_records_lower_casing(tmp_path, lower):
    vocab = write_vocab(tmp_path / "vocab.txt", TINY.vocab_size)
    export_hf(BertForPreTraining(TINY).state_dict(), TINY, vocab, tmp_path / "out", do_lower_case=lower)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    ids = tokenizer("Hello World")["input_ids"]
    expected_words = [VOCAB.index("hello"), VOCAB.index("world")] if lower else [1, 1]  # [UNK] when cased
    assert ids == [VOCAB.index("[CLS]")] + expected_words + [VOCAB.index("[SEP]")]


def test_export_refuses_vocab_of_the_wrong_size(tmp_path):
    vocab = write_vocab(tmp_path / "vocab.txt", TINY.vocab_size + 1)
    with pytest.raises(ValueError, match="20 entries; config vocab_size is 19"):
        export_hf(BertForPreTraining(TINY), TINY, vocab, tmp_path / "out")
    assert not (tmp_path / "out" / "config.json").exists()
