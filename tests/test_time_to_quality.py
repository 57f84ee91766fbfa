"""benchmarks.time_to_quality: the parts on their own (text, overlap, yardstick, reach times) and the
whole pipeline in its --quick mode (real text, both pre-training routes, MRPC and SQuAD fine-tuning)."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmarks.time_to_quality import QUICK
from benchmarks.time_to_quality_downstream import write_squad_split
from benchmarks.time_to_quality_eval import Point, evaluate, first_reach, interpolated_reach
from benchmarks.time_to_quality_text import (Article, build_corpus, clean_wikitext, fast_tokenizer, heldout_set, overlap_reason,
                                             wikitext_articles, ngrams, title_key)
from conftest import REPO_ROOT

VOCAB = "vocab/bert-base-uncased-vocab.txt"


def test_wikitext_articles_split_on_titles_and_drop_headings(tmp_path):
    text = (" \n = First Title = \n \n Some text , with 1 @,@ 000 words and a well @-@ known idea . \n \n"
            " = = Section = = \n \n More text here . \n \n = Second ( film ) = \n \n Other <unk> words . \n")
    path = tmp_path / "wiki.raw"
    path.write_text(text, encoding="utf-8")
    first, second = wikitext_articles(path, "w", drop_unk=True)
    assert (first.title, second.title) == ("First Title", "Second ( film )")
    assert first.text == "Some text , with 1,000 words and a well-known idea . More text here ."
    assert second.text == "Other words ."
    assert clean_wikitext("3 @.@ 5") == "3.5"


def test_overlap_by_title_or_shared_ngrams():
    heldout = [Article("h", "Kiss You ( One Direction song )", "one two three four five six seven eight nine ten")]
    titles, grams = {title_key(a.title) for a in heldout}, set().union(*(ngrams(a.text) for a in heldout))
    same_title = Article("w", "Kiss You (One Direction song)", "completely different text about other things here")
    copied = Article("w", "Other", "one two three four five six seven eight nine ten and then a long tail " * 1)
    unrelated = Article("w", "Other", "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu")
    assert overlap_reason(same_title, titles, grams) == "title is a held-out title"
    assert "8-grams" in overlap_reason(copied, titles, grams)
    assert overlap_reason(unrelated, titles, grams) == ""


def test_corpus_drops_a_copied_heldout_article(shared_data, tmp_path):
    """A training source that contains a held-out article: build_corpus must leave it out."""
    data = tmp_path / "data"
    (data / "wikitext-2-raw").mkdir(parents=True)
    test_raw = (shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    (data / "wikitext-2-raw" / "wiki.test.raw").write_text(test_raw, encoding="utf-8")
    first_article = test_raw.split("\n = ", 2)[1]  # " = Robert Boulter = " and its body
    valid = (shared_data / "wikitext-2-raw" / "wiki.valid.raw").read_text(encoding="utf-8")
    (data / "wikitext-2-raw" / "wiki.valid.raw").write_text(valid + "\n = " + first_article, encoding="utf-8")
    corpus = build_corpus(data, ["wikitext2_valid"], tmp_path / "corpus")
    assert [(a.title, why) for a, why in corpus.dropped] == [("Robert Boulter", "title is a held-out title")]
    lines = (tmp_path / "corpus" / "wikitext2_valid.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == corpus.articles == 60
    assert not any("Boulter" in line for line in lines)


def test_tokenizer_is_bert_uncased(shared_data):
    tokenizer = fast_tokenizer(shared_data / VOCAB)
    assert len(tokenizer) == 30522 and (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id) == (101, 102, 103)
    assert tokenizer("The Tokenizer", add_special_tokens=False)["input_ids"] == [1996, 19204, 17629]


def test_heldout_rows_have_one_fixed_masking(shared_data):
    articles = wikitext_articles(shared_data / "wikitext-2-raw" / "wiki.test.raw", "heldout")[:3]
    first = heldout_set(articles, shared_data / VOCAB, max_sequences=20)
    again = heldout_set(articles, shared_data / VOCAB, max_sequences=20)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    ids, positions = first["input_ids"], first["masked_lm_positions"]
    assert ids.shape == (20, 128) and (ids[:, 0] == 101).all() and (ids[:, -1] == 102).all()
    assert ((positions > 0).sum(axis=1) == 19).all()  # round(128 * 0.15)
    assert positions[:, :19].min() >= 1 and positions.max() <= 126  # never [CLS] or [SEP]
    masked = np.take_along_axis(ids, positions.astype(np.int64), axis=1)
    assert 0.7 < (masked == 103).mean() < 0.9  # ~80% [MASK]


def test_evaluate_scores_masked_positions_like_a_full_forward(tmp_path, shared_data):
    """evaluate() gathers the masked positions before the head; a full BertForMaskedLM forward agrees."""
    import transformers

    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64)
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).eval()
    model.save_pretrained(tmp_path / "model")
    articles = wikitext_articles(shared_data / "wikitext-2-raw" / "wiki.test.raw", "heldout")[:2]
    heldout = heldout_set(articles, shared_data / VOCAB, max_sequences=6)
    ids = torch.from_numpy(heldout["input_ids"]).long()
    with torch.no_grad():
        logits = model(input_ids=ids, token_type_ids=torch.zeros_like(ids)).logits   # [N, L, V]
    positions = torch.from_numpy(heldout["masked_lm_positions"]).long()            # [N, P], 0 = unused
    valid = positions > 0
    rows = torch.arange(len(ids))[:, None].expand_as(positions)
    picked = logits[rows, positions][valid]                                          # [M, V]
    # Labels the random model gets right in every other slot, so that accuracy is far from 0 and 1.
    labels = torch.from_numpy(heldout["masked_lm_ids"]).long()
    labels[valid] = torch.where(torch.arange(int(valid.sum())) % 2 == 0, picked.argmax(-1), labels[valid])
    heldout["masked_lm_ids"] = labels.int().numpy()
    target = labels[valid]
    accuracy, loss = evaluate(tmp_path / "model", heldout, batch_size=4)
    assert 0.4 < accuracy < 0.7
    assert accuracy == pytest.approx((picked.argmax(-1) == target).float().mean().item())
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(picked, target).item(), rel=1e-5)


def test_reach_times():
    curve = [Point(60, 10, 0.10, 7.0, ""), Point(120, 20, 0.20, 6.0, ""), Point(180, 30, 0.25, 5.5, "")]
    assert first_reach(curve, 0.15).seconds == 120
    assert interpolated_reach(curve, 0.15) == pytest.approx(90)
    assert interpolated_reach(curve, 0.05) == pytest.approx(30)  # from (0 s, 0) to the first checkpoint
    assert first_reach(curve, 0.30) is None and interpolated_reach(curve, 0.30) is None


def test_squad_split_holds_out_whole_articles(shared_data, tmp_path):
    split = write_squad_split(shared_data / "squad" / "dev-v1.1.json", tmp_path, eval_articles=12, train_articles=5)
    train = json.loads(split.train_file.read_text())["data"]
    held = json.loads(split.eval_file.read_text())["data"]
    assert (split.train_articles, split.eval_articles) == (5, 12) and len(train) == 5 and len(held) == 12
    assert not {a["title"] for a in train} & {a["title"] for a in held}
    contexts = {p["context"] for a in train for p in a["paragraphs"]}
    assert not contexts & {p["context"] for a in held for p in a["paragraphs"]}
    assert split.eval_questions == sum(len(p["qas"]) for a in held for p in a["paragraphs"]) > 1000


RESULT = re.compile(r"^ttq: result (\S+) final held-out MLM accuracy ([0-9.]+) loss ([0-9.]+) at (\d+) s", re.M)


@pytest.mark.slow
def test_quick_run_end_to_end(shared_data, tmp_path, child_env):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "benchmarks.time_to_quality", "--quick", "-o", str(out)],
                          cwd=REPO_ROOT, env=child_env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout
    finals = {side: (float(acc), float(loss)) for side, acc, loss, _ in RESULT.findall(lines)}
    assert set(finals) == {"ours", "hf"}, lines
    for accuracy, loss in finals.values():
        assert 0.0 <= accuracy <= 1.0 and 0.0 < loss < 20.0
    assert re.search(r"^ttq: result ours (reached|did not reach) the HF route's final accuracy", lines, re.M)
    for task, metric in (("mrpc", "accuracy"), ("squad", "exact_match")):
        for model in ("ours", "hf_route", "random_init"):
            match = re.search(rf"^ttq: result {task} {model}: {metric} ([0-9.]+) sd ([0-9.]+)", lines, re.M)
            assert match and 0.0 <= float(match.group(1)) <= 100.0, (task, model, lines)
    results = json.loads((out / "results.json").read_text())
    for side in ("ours", "hf"):
        curve = results["curves"][side]
        assert len(curve) >= 2, (side, curve)
        assert all(0.0 <= p["accuracy"] <= 1.0 for p in curve)
        assert [p["seconds"] for p in curve] == sorted(p["seconds"] for p in curve)
        assert curve[-1]["seconds"] < 60 * QUICK["minutes"] + 120  # the budget, plus the step in flight and the save
    png = out / "time_to_quality.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert (out / "squad_split" / "train.json").is_file() and (out / "squad_split" / "eval.json").is_file()
    assert (out / "heldout_masked.npz").is_file()

    # The fine-tuning stage again, alone, on the same run's final models (other seeds, MRPC only).
    again = subprocess.run([sys.executable, "-m", "benchmarks.time_to_quality", "--quick", "-o", str(out),
                            "--downstream_only", "--tasks", "mrpc", "--seeds", "7"],
                           cwd=REPO_ROOT, env=child_env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "ttq: result mrpc random_init: accuracy" in again.stdout and "ttq: eval" not in again.stdout
    rerun = json.loads((out / "results.json").read_text())
    assert rerun["curves"] == results["curves"] and set(rerun["downstream"]) == {"mrpc"}
    assert (out / "finetuning" / "mrpc_ours" / "seed7").is_dir()


def test_bad_input_is_one_line_and_status_2(tmp_path, capsys):
    from benchmarks.time_to_quality import entry

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me", encoding="utf-8")
    assert entry(["-o", str(foreign), "--skip_downstream"]) == 2
    assert (foreign / "notes.txt").read_text(encoding="utf-8") == "keep me" and len(list(foreign.iterdir())) == 1
    assert entry(["-o", str(tmp_path / "new"), "--minutes", "0"]) == 2
    assert not (tmp_path / "new").exists()
    assert entry(["-o", str(foreign), "--downstream_only"]) == 2
    assert len(list(foreign.iterdir())) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and "not made by this benchmark" in errors[0] and "--minutes 0.0" in errors[1]
    assert "--downstream_only" in errors[2] and "holds no run of this benchmark" in errors[2]
