"""Resumable, checksum-verified downloads, and the table of what each dataset fetches.

``fetch`` streams a URL to ``<dest>.part`` (continuing a previous partial download with an HTTP Range
request), verifies the checksum and only then renames it to ``dest``. A file already at ``dest`` with
the right checksum is kept, so users without network can fetch files elsewhere and drop them in
place. Any network failure becomes one line saying what to fetch and where to put it.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from central.dllog import progress
from data.errors import DataPrepError

USER_AGENT = "bert-data-prep/1.0 (+https://dumps.wikimedia.org/ etiquette: one connection)"
READ_BYTES = 1 << 20
TIMEOUT_S = 60

WIKI_DUMP_URL = "https://dumps.wikimedia.org/enwiki/latest/enwiki-latest-pages-articles.xml.bz2"
SQUAD_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset/"
MSR_URL = "https://dl.fbaipublicfiles.com/senteval/senteval_data/"
GLUE_URL = "https://dl.fbaipublicfiles.com/glue/data/"
VOCAB_URL = "https://huggingface.co/google-bert/bert-base-uncased/resolve/main/vocab.txt"


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # "sha256" | "sha1" | "md5"
    hexdigest: str


@dataclass(frozen=True)
class Remote:
    url: str
    name: str                 # file name inside the dataset's folder (see data.prepare)
    checksum: Optional[Checksum]


# Published checksums of the fixed files (SQuAD's and MSR's as listed by the HF/TFDS dataset builders;
# the vocab is Google's uncased BERT vocab, identical for BERT-Base and BERT-Large).
FIXED_REMOTES: Dict[str, List[Remote]] = {
    "squad": [
        Remote(SQUAD_URL + "train-v1.1.json", "train-v1.1.json",
               Checksum("sha256", "3527663986b8295af4f7fcdff1ba1ff3f72d07d61a20f487cb238a6ef92fd955")),
        Remote(SQUAD_URL + "dev-v1.1.json", "dev-v1.1.json",
               Checksum("sha256", "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9")),
    ],
    "mrpc": [
        Remote(MSR_URL + "msr_paraphrase_train.txt", "msr_paraphrase_train.txt",
               Checksum("sha256", "60a9b09084528f0673eedee2b69cb941920f0b8cd0eeccefc464a98768457f89")),
        Remote(MSR_URL + "msr_paraphrase_test.txt", "msr_paraphrase_test.txt",
               Checksum("sha256", "a04e271090879aaba6423d65b94950c089298587d9c084bf9cd7439bd785f784")),
        Remote(GLUE_URL + "mrpc_dev_ids.tsv", "dev_ids.tsv",
               Checksum("sha256", "971d7767d81b997fd9060ade0ec23c4fc31cbb226a55d1bd4a1bac474eb81dc7")),
    ],
    "google_pretrained_weights": [
        Remote(VOCAB_URL, "uncased_L-24_H-1024_A-16/vocab.txt",
               Checksum("sha256", "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3")),
    ],
}


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(READ_BYTES), b""):
            digest.update(piece)
    return digest.hexdigest()


def _offline_message(url: str, dest: Path, reason, stale: str = "") -> str:
    return f"{stale}cannot download {url} ({reason}); without network, fetch that file elsewhere and put it at {dest}, then run this step again"


def _open(url: str, offset: int):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)


def fetch(url: str, dest: Path, checksum: Optional[Checksum], show_progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` with resume; verify ``checksum``; return ``dest``."""
    dest = Path(dest)
    stale = ""
    if dest.is_file():
        if checksum is None or file_digest(dest, checksum.algorithm) == checksum.hexdigest:
            print(f"{dest} is already there{' (checksum ok)' if checksum else ''}")
            return dest
        stale = f"{dest} is there but its {checksum.algorithm} does not match the published one; "
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(url, offset)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to fetch: the .part is complete
            response = None
        else:
            raise DataPrepError(_offline_message(url, dest, f"HTTP {err.code} {err.reason}", stale)) from None
    except (urllib.error.URLError, OSError) as err:
        raise DataPrepError(_offline_message(url, dest, getattr(err, "reason", err), stale)) from None
    if response is not None:
        with response:
            resumed = offset > 0 and getattr(response, "status", 200) == 206
            if offset and not resumed:
                offset = 0  # the server ignored the Range request: start over
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else None
            bar = progress(total=total, desc=f"download {dest.name}", unit="B", enabled=show_progress, initial=offset)
            received = 0
            try:
                with open(part, "ab" if resumed else "wb") as out:
                    for piece in iter(lambda: response.read(READ_BYTES), b""):
                        out.write(piece)
                        received += len(piece)
                        bar.update(len(piece))
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
                if isinstance(err, OSError) and err.filename:
                    raise
                raise DataPrepError(f"download of {url} broke off ({err}); run again to resume from "
                                    f"{part.stat().st_size} bytes") from None
            finally:
                bar.close()
            if length and length.isdigit() and received < int(length):  # the server closed early
                raise DataPrepError(f"download of {url} broke off after {offset + received} of {total} bytes; "
                                    "run again to resume")
    if checksum is not None:
        got = file_digest(part, checksum.algorithm)
        if got != checksum.hexdigest:
            part.unlink()
            raise DataPrepError(f"{url}: {checksum.algorithm} {got} does not match the published "
                                f"{checksum.hexdigest}; the partial file was removed, run again to download afresh")
    os.replace(part, dest)
    print(f"downloaded {dest}{' (checksum ok)' if checksum else ''}")
    return dest


def fetch_text(url: str, what: str) -> str:
    try:
        with _open(url, 0) as response:
            return response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as err:
        raise DataPrepError(f"cannot download the {what} {url} (HTTP {err.code} {err.reason})") from None
    except (urllib.error.URLError, OSError) as err:
        raise DataPrepError(f"cannot download the {what} {url} ({getattr(err, 'reason', err)}); "
                            "without network, see the README section 'Data preparation' for offline use") from None


DUMP_NAME = re.compile(r"^(?P<wiki>[a-z_]+)-(?P<date>latest|\d{8})-(?P<rest>pages-articles.*)$")


def wiki_checksum_url(dump_url: str) -> str:
    """Wikimedia publishes ``<wiki>-<date>-sha1sums.txt`` beside every dump."""
    base, _, name = dump_url.rpartition("/")
    match = DUMP_NAME.match(name)
    if not match:
        raise DataPrepError(f"--wiki_dump_url {dump_url}: expected a Wikimedia dump name like "
                            "enwiki-latest-pages-articles.xml.bz2 (its sha1sums file is found from the name)")
    return f"{base}/{match['wiki']}-{match['date']}-sha1sums.txt"


def wiki_checksum(dump_url: str) -> Checksum:
    """The dump's sha1 from the published sums file (``latest`` sums list the dated file name)."""
    sums_url = wiki_checksum_url(dump_url)
    name = dump_url.rpartition("/")[2]
    match = DUMP_NAME.match(name)
    wanted = re.compile(rf"^{match['wiki']}-(?:latest|\d{{8}})-{re.escape(match['rest'])}$")
    for line in fetch_text(sums_url, "checksum list").splitlines():
        fields = line.split()
        if len(fields) == 2 and wanted.match(fields[1]) and re.fullmatch(r"[0-9a-f]{40}", fields[0]):
            return Checksum("sha1", fields[0])
    raise DataPrepError(f"{sums_url} lists no checksum for {name}")
