"""Wikipedia: a .xml.bz2 dump built here, WikiExtractor input, bad dumps, and the whole pipeline script."""
import bz2
import hashlib
import itertools
import os
import subprocess
from pathlib import Path
from xml.sax.saxutils import escape

import h5py
import pytest

from data.errors import DataPrepError, run_main
from data.formatting import format_wikipedia
from data.prepare import main as prepare_main
from data.wiki_extract import iter_wikiextractor_docs, wikitext_to_text

REPO_ROOT = Path(__file__).resolve().parent.parent

TURING = """{{Infobox scientist|name=Alan Turing|birth_date={{birth date|1912|6|23}}}}
'''Alan Turing''' (born 1912) was an [[England|English]] mathematician.<ref>Hodges, {{cite book|title=Enigma}}</ref> He worked at [[Bletchley Park]].
[[File:Turing.jpg|thumb|Turing in the 1930s]]

== Early life ==
Turing was born in [[Maida Vale]], London.<!-- hidden --> See [http://example.org the site] &amp; more&nbsp;text.
{| class="wikitable"
|-
| cell a || cell b
|}
* A list item.
<math>x^2</math>The end.__NOTOC__
[[Category:1912 births]]"""
TURING_TEXT = ("Alan Turing (born 1912) was an English mathematician. He worked at Bletchley Park. "
               "Turing was born in Maida Vale, London. See the site & more text. A list item. The end.")


def page(title, text, ns=0, redirect=None):
    redirect_tag = f'<redirect title="{escape(redirect)}" />' if redirect else ""
    return (f"  <page>\n    <title>{escape(title)}</title>\n    <ns>{ns}</ns>\n    <id>1</id>\n    {redirect_tag}\n"
            f"    <revision>\n      <id>2</id>\n      <text bytes=\"{len(text)}\" xml:space=\"preserve\">"
            f"{escape(text)}</text>\n    </revision>\n  </page>\n")


def make_dump(path: Path, pages) -> Path:
    xml = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">\n'
           "  <siteinfo><sitename>Wikipedia</sitename></siteinfo>\n" + "".join(pages) + "</mediawiki>\n")
    path.write_bytes(bz2.compress(xml.encode("utf-8")))
    return path


@pytest.fixture(scope="module")
def sample_articles(shared_data):
    """Plain text of 14 real articles, and each as wikitext (paragraphs, plus markup that must vanish)."""
    plain = (text for text in iter_wikiextractor_docs([shared_data / "wikipedia_sample" / "wiki_03"])
             if not any(mark in text for mark in ("<", "[", "{", "''", "&", "|", "__", "http")))  # no wikitext syntax
    articles = list(itertools.islice(plain, 14))
    pages = []
    for number, text in enumerate(articles):
        first, cut, rest = text.partition(". ")
        body = f"{first}.<ref>A source.</ref> {rest}" if cut else text
        wikitext = f"{{{{Short description|Article {number}}}}}\n{body}\n\n== See also ==\n"
        pages.append(page(f"Article {number}", wikitext))
    return articles, pages


@pytest.fixture(scope="module")
def dump(tmp_path_factory, sample_articles):
    _, pages = sample_articles
    extra = [page("Alan Turing", TURING), page("Turing", "#REDIRECT [[Alan Turing]]", redirect="Alan Turing"),
             page("Wikipedia:About", "Project page text.", ns=4)]
    return make_dump(tmp_path_factory.mktemp("dump") / "enwiki-20240101-pages-articles.xml.bz2", extra + pages)


def test_wikitext_rendering_keeps_prose_and_drops_markup():
    assert wikitext_to_text(TURING) == TURING_TEXT


def test_dump_is_streamed_to_one_article_per_line(dump, sample_articles, tmp_path):
    articles, _ = sample_articles
    out = tmp_path / "wiki.txt"
    assert format_wikipedia(dump, out, n_processes=1, show_progress=False) == 1 + len(articles)
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[0] == TURING_TEXT  # redirect and project-namespace pages are skipped
    for line, article in zip(lines[1:], articles):
        assert line == " ".join(article.split())
    assert lines[-1] == ""
    parallel = tmp_path / "wiki2.txt"
    format_wikipedia(dump, parallel, n_processes=2, show_progress=False)
    assert parallel.read_bytes() == out.read_bytes()


def test_wikiextractor_output_is_accepted(shared_data, tmp_path):
    out = tmp_path / "wiki.txt"
    # 153 <doc> elements; "List of anthropologists" has no text beyond its title
    assert format_wikipedia(shared_data / "wikipedia_sample", out, show_progress=False) == 152
    first = out.read_text(encoding="utf-8").split("\n", 1)[0]
    assert first.startswith("Anarchism is an anti-authoritarian political and social philosophy")


def test_bad_dumps_are_refused_with_one_line(tmp_path, dump, capsys, monkeypatch):
    monkeypatch.setenv("BERT_DISABLE_PROGRESS", "1")
    good = dump.read_bytes()
    truncated = tmp_path / "truncated.xml.bz2"
    truncated.write_bytes(good[: len(good) // 2])
    garbage = tmp_path / "garbage.xml.bz2"
    garbage.write_bytes(b"BZh91AY&SY" + os.urandom(3000))
    not_xml = tmp_path / "notes.xml.bz2"
    not_xml.write_bytes(bz2.compress(b"just some notes, not a dump\n"))
    only_redirects = make_dump(tmp_path / "redirects.xml.bz2", [page("A", "#REDIRECT [[B]]", redirect="B")])
    dangling = tmp_path / "dangling.xml.bz2"
    dangling.symlink_to(tmp_path / "nowhere.xml.bz2")
    cases = {truncated: "corrupt or truncated", garbage: "corrupt or truncated", not_xml: "neither a MediaWiki",
             only_redirects: "no documents", dangling: "does not exist"}
    work = tmp_path / "work"
    for path, message in cases.items():
        status = run_main(prepare_main, ["--action", "text_formatting", "--dataset", "wikicorpus_en",
                                         "--working_dir", str(work), "--input_path", str(path), "--n_processes", "1"])
        err = capsys.readouterr().err
        assert status == 2, path
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
        formatted = work / "formatted_one_article_per_line"
        assert not formatted.exists() or not any(formatted.iterdir())  # nothing partial left behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_dump(dump, tmp_path):
    locked = tmp_path / "locked.xml.bz2"
    locked.write_bytes(dump.read_bytes())
    locked.chmod(0)
    with pytest.raises(DataPrepError, match="cannot read"):
        format_wikipedia(locked, tmp_path / "out.txt")


def test_create_datasets_from_start_builds_both_phases(dump, shared_data, tmp_path, child_env):
    """The whole script, offline: the dump and its sha1 list come from file:// URLs. Phase 2 is also
    packed (PACK=1 by default) into a sibling folder the trainer reads as it is."""
    sha1 = hashlib.sha1(dump.read_bytes()).hexdigest()
    (dump.parent / "enwiki-20240101-sha1sums.txt").write_text(
        f"{'0' * 40}  enwiki-20240101-pages-articles-multistream.xml.bz2\n{sha1}  {dump.name}\n")
    work = tmp_path / "work"
    work.mkdir()
    env = dict(child_env, BERT_PREP_WORKING_DIR=str(work), WIKI_DUMP_URL=dump.as_uri(),
               VOCAB_FILE=str(shared_data / "vocab" / "bert-base-uncased-vocab.txt"),
               N_TRAINING_SHARDS="2", N_TEST_SHARDS="1", FRACTION_TEST_SET="0.1", N_PROCESSES="2")
    result = subprocess.run(["bash", str(REPO_ROOT / "data" / "create_datasets_from_start.sh")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (work / "download" / "wikicorpus_en" / "wikicorpus_en.xml.bz2").read_bytes() == dump.read_bytes()
    for seq_len, max_pred in ((128, 20), (512, 80)):
        folder = (work / f"hdf5_lower_case_1_seq_len_{seq_len}_max_pred_{max_pred}_masked_lm_prob_0.15"
                  f"_random_seed_12345_dupe_factor_5" / "wikicorpus_en")
        names = sorted(p.name for p in folder.iterdir())
        assert names == ["vocab.txt", "wikicorpus_en_test_0.hdf5", "wikicorpus_en_training_0.hdf5",
                         "wikicorpus_en_training_1.hdf5"]
        assert (folder / "vocab.txt").read_bytes() == (shared_data / "vocab" / "bert-base-uncased-vocab.txt").read_bytes()
        with h5py.File(folder / "wikicorpus_en_training_0.hdf5", "r") as handle:
            n = handle["input_ids"].shape[0]
            assert n > 50 and handle["input_ids"].shape == (n, seq_len)
            assert handle["masked_lm_positions"].shape == (n, max_pred)
            assert handle["input_mask"][()].sum(1).max() <= seq_len
        packed = folder.with_name("wikicorpus_en_packed")  # PACK=1 (default): phase 2 only
        assert packed.is_dir() == (seq_len == 512)
        if packed.is_dir():
            assert sorted(p.name for p in packed.iterdir()) == ["vocab.txt", "wikicorpus_en_training_0.hdf5",
                                                                "wikicorpus_en_training_1.hdf5"]
            with h5py.File(packed / "wikicorpus_en_training_0.hdf5", "r") as handle:
                assert handle["next_sentence_positions"].shape[1] == 3
                assert handle["masked_lm_positions"].shape[1] == max_pred + 3
            assert folder.with_name("wikicorpus_en_packed_metadata.json").is_file()
