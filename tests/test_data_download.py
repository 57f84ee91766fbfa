"""Downloads against a local HTTP server (resume, checksums, offline) and the GLUE MRPC builder."""
import hashlib
import http.server
import os
import socket
import threading
from pathlib import Path

import pytest

from data import download
from data.download import Checksum, fetch, wiki_checksum, wiki_checksum_url
from data.errors import DataPrepError, run_main
from data.glue_mrpc import build_mrpc, matches_glue
from data.prepare import main as prepare_main

PAYLOAD = os.urandom(3 << 20) + b"end of file"
DUMP_SUMS = (f"{'1' * 40}  enwiki-20240101-pages-articles-multistream.xml.bz2\n"
             f"{hashlib.sha1(PAYLOAD).hexdigest()}  enwiki-20240101-pages-articles.xml.bz2\n"
             f"{'2' * 40}  enwiki-20240101-pages-articles.xml.bz2-rss.xml\n").encode()


class Server(http.server.ThreadingHTTPServer):
    """Serves PAYLOAD with Range support; ``cut_first`` sends only half of the first response."""
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.ranges, self.cut_first, self.honour_range, self.requests = [], False, True, 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.requests += 1
        body = DUMP_SUMS if self.path.endswith("sha1sums.txt") else PAYLOAD
        if self.path.endswith("missing.bin"):
            self.send_error(404, "Not Found")
            return
        start = 0
        header = self.headers.get("Range")
        if header and server.honour_range:
            server.ranges.append(header)
            start = int(header.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if server.cut_first and server.requests == 1:
            self.wfile.write(body[start:start + len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the connection breaks mid-transfer
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server():
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


SHA256 = Checksum("sha256", hashlib.sha256(PAYLOAD).hexdigest())


def test_a_partial_download_is_resumed_and_verified(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:1000000])
    fetch(server.url + "/file.bin", dest, SHA256, show_progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges == ["bytes=1000000-"]
    assert not (tmp_path / "file.bin.part").exists()
    requests = server.requests
    fetch(server.url + "/file.bin", dest, SHA256, show_progress=False)  # verified file: no new request
    assert server.requests == requests


def test_a_broken_transfer_resumes_on_the_next_run(server, tmp_path):
    server.cut_first = True
    dest = tmp_path / "file.bin"
    with pytest.raises(DataPrepError, match="run again to resume"):
        fetch(server.url + "/file.bin", dest, SHA256, show_progress=False)
    part = tmp_path / "file.bin.part"
    assert not dest.exists() and 0 < part.stat().st_size < len(PAYLOAD)
    fetch(server.url + "/file.bin", dest, SHA256, show_progress=False)
    assert dest.read_bytes() == PAYLOAD and server.ranges == [f"bytes={len(PAYLOAD) // 2}-"]


def test_a_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.honour_range = False
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"stale bytes from elsewhere")
    fetch(server.url + "/file.bin", dest, SHA256, show_progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_a_checksum_mismatch_removes_the_download(server, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(DataPrepError, match="does not match the published"):
        fetch(server.url + "/file.bin", dest, Checksum("sha256", "0" * 64), show_progress=False)
    assert not dest.exists() and not (tmp_path / "file.bin.part").exists()


def test_offline_says_what_to_fetch_and_where(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dest = tmp_path / "download" / "squad" / "v1.1" / "train-v1.1.json"
    with pytest.raises(DataPrepError) as info:
        fetch(f"http://127.0.0.1:{port}/train-v1.1.json", dest, SHA256, show_progress=False)
    message = str(info.value)
    assert f"http://127.0.0.1:{port}/train-v1.1.json" in message and str(dest) in message and "\n" not in message


def test_http_errors_are_one_line(server, tmp_path):
    with pytest.raises(DataPrepError, match="HTTP 404"):
        fetch(server.url + "/missing.bin", tmp_path / "x", None, show_progress=False)


def test_wiki_checksum_comes_from_the_published_sums(server):
    url = server.url + "/enwiki/latest/enwiki-latest-pages-articles.xml.bz2"
    assert wiki_checksum_url(url) == server.url + "/enwiki/latest/enwiki-latest-sha1sums.txt"
    assert wiki_checksum(url) == Checksum("sha1", hashlib.sha1(PAYLOAD).hexdigest())
    with pytest.raises(DataPrepError, match="expected a Wikimedia dump name"):
        wiki_checksum_url(server.url + "/my-dump.xml.bz2")


def test_download_action_fetches_and_verifies_the_dump(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BERT_DISABLE_PROGRESS", "1")
    url = server.url + "/enwiki/20240101/enwiki-20240101-pages-articles.xml.bz2"
    status = run_main(prepare_main, ["--action", "download", "--dataset", "wikicorpus_en", "--working_dir",
                                     str(tmp_path), "--wiki_dump_url", url])
    assert status == 0, capsys.readouterr().err
    assert (tmp_path / "download" / "wikicorpus_en" / "wikicorpus_en.xml.bz2").read_bytes() == PAYLOAD


def test_download_actions_offline_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BERT_DISABLE_PROGRESS", "1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = f"http://127.0.0.1:{port}/"
    monkeypatch.setattr(download, "FIXED_REMOTES", {
        name: [download.Remote(dead + r.name, r.name, r.checksum) for r in remotes]
        for name, remotes in download.FIXED_REMOTES.items()})
    for dataset, where in (("squad", tmp_path / "download" / "squad" / "v1.1" / "train-v1.1.json"),
                           ("mrpc", tmp_path / "download" / "glue_data" / "MRPC" / "msr_paraphrase_train.txt"),
                           ("google_pretrained_weights", tmp_path / "download" / "google_pretrained_weights")):
        status = run_main(prepare_main, ["--action", "download", "--dataset", dataset, "--working_dir", str(tmp_path)])
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1 and str(where) in err, err
    status = run_main(prepare_main, ["--action", "download", "--dataset", "bookscorpus", "--working_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and "one .txt file per book in" in err and err.count("\n") == 1


def msr_sources(glue: Path, folder: Path) -> Path:
    """MSR-format sources rebuilt from GLUE's files (CRLF line ends, BOM header, dev rows mixed in)."""
    train = glue.joinpath("train.tsv").read_text(encoding="utf-8").split("\n")
    dev = glue.joinpath("dev.tsv").read_text(encoding="utf-8").split("\n")
    test = glue.joinpath("test.tsv").read_text(encoding="utf-8").split("\n")
    train_rows, dev_rows = [r for r in train[1:] if r], [r for r in dev[1:] if r]
    mixed = []
    for i, row in enumerate(train_rows):  # a dev row after every ninth train row, as in the MSR file
        mixed.append(row)
        if i % 9 == 8 and dev_rows:
            mixed.append(dev_rows.pop(0))
    mixed += dev_rows
    folder.mkdir(parents=True, exist_ok=True)
    folder.joinpath("msr_paraphrase_train.txt").write_bytes(("\r\n".join([train[0]] + mixed) + "\r\n").encode())
    folder.joinpath("dev_ids.tsv").write_text(
        "".join("\t".join(r.split("\t")[1:3]) + "\n" for r in dev[1:] if r), encoding="utf-8")
    test_rows = ["1\t" + "\t".join(r.split("\t")[1:]) for r in test[1:] if r]
    folder.joinpath("msr_paraphrase_test.txt").write_bytes(
        ("\r\n".join(["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"] + test_rows) + "\r\n").encode())
    return folder


def test_mrpc_is_built_exactly_as_glue_does(shared_data, tmp_path):
    glue = shared_data / "glue_data" / "MRPC"
    sources = msr_sources(glue, tmp_path / "msr")
    rows = build_mrpc(sources, tmp_path / "MRPC")
    assert rows == {"train.tsv": 3668, "dev.tsv": 408, "test.tsv": 1725}
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        assert (tmp_path / "MRPC" / name).read_bytes() == (glue / name).read_bytes(), name
    assert all(matches_glue(tmp_path / "MRPC").values())


def test_mrpc_bad_sources(shared_data, tmp_path):
    with pytest.raises(DataPrepError, match="msr_paraphrase_test.txt"):
        sources = msr_sources(shared_data / "glue_data" / "MRPC", tmp_path / "msr")
        (sources / "msr_paraphrase_test.txt").unlink()
        build_mrpc(sources, tmp_path / "out")
    sources = msr_sources(shared_data / "glue_data" / "MRPC", tmp_path / "msr2")
    with open(sources / "msr_paraphrase_train.txt", "a", encoding="utf-8") as handle:
        handle.write("1\tonly\tthree\n")
    with pytest.raises(DataPrepError, match=r"line \d+: 3 tab-separated fields"):
        build_mrpc(sources, tmp_path / "out")
