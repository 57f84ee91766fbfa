"""Wikipedia article text, from a MediaWiki ``.xml.bz2`` dump or from WikiExtractor ``<doc>`` output.

Dumps are streamed: ``bz2`` decompresses as ``xml.etree.ElementTree.iterparse`` reads, and each page
element is cleared once handled, so memory stays flat whatever the dump size. Wikitext becomes plain
text with ``mwparserfromhell`` (pinned: PINNED_MWPARSERFROMHELL), rendered by ``wikitext_to_text``:
templates, references, tables, math, headings, comments, files/images/categories are dropped; links
keep their visible text. Only main-namespace (ns 0), non-redirect pages are kept. An article is one
line: its paragraphs joined by spaces (as the reference's formatting does).

WikiExtractor output (``<doc id=.. url=.. title=..>`` / title line / text / ``</doc>``, in files or
folder trees such as ``AA/wiki_00``, optionally ``.bz2``) is read as it is, title line skipped.
"""
from __future__ import annotations

import bz2
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

from data.errors import DataPrepError

PINNED_MWPARSERFROMHELL = "0.7.2"
DROPPED_TAGS = {"ref", "references", "table", "gallery", "math", "chem", "ce", "score", "timeline", "imagemap",
                "syntaxhighlight", "source", "graph", "templatedata", "mapframe", "maplink", "hiero"}
DROPPED_LINK_NAMESPACES = {"file", "image", "category", "media"}
LINE_TAGS = {"br", "li", "dt", "dd", "p", "div", "tr"}
MAGIC_WORD = re.compile(r"__[A-Z]+__")
SPACES = re.compile(r"[ \t\u00a0]+")


def check_extractor_version() -> str:
    """The installed mwparserfromhell version; a different one than pinned may render text differently."""
    import mwparserfromhell

    return mwparserfromhell.__version__


def _render(wikicode, out: List[str]) -> None:
    from mwparserfromhell import nodes

    for node in wikicode.nodes:
        if isinstance(node, nodes.Text):
            out.append(node.value)
        elif isinstance(node, nodes.Wikilink):
            title = str(node.title).strip()
            namespace = title.lstrip(":").split(":", 1)[0].strip().lower() if ":" in title else ""
            if namespace in DROPPED_LINK_NAMESPACES and not title.startswith(":"):
                continue
            if node.text is not None:
                _render(node.text, out)
            else:
                out.append(title.lstrip(":").split("#", 1)[0])
        elif isinstance(node, nodes.Tag):
            tag = str(node.tag).strip().lower()
            if tag in DROPPED_TAGS:
                continue
            if tag in LINE_TAGS:
                out.append("\n")
            if node.contents is not None and not node.self_closing:
                _render(node.contents, out)
        elif isinstance(node, nodes.ExternalLink):
            if node.title is not None:
                _render(node.title, out)
        elif isinstance(node, nodes.HTMLEntity):
            out.append(node.normalize())
        elif isinstance(node, nodes.Heading):
            out.append("\n")  # headings are not sentences; keep paragraphs apart
        # Template, Comment, Argument and anything else: dropped


def wikitext_to_text(wikitext: str) -> str:
    """One article's wikitext -> plain text, paragraphs joined by single spaces ('' if nothing is left)."""
    import mwparserfromhell

    out: List[str] = []
    _render(mwparserfromhell.parse(wikitext), out)
    text = MAGIC_WORD.sub("", "".join(out))
    lines = (SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return " ".join(line for line in lines if line)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def iter_dump_pages(path: Path) -> Iterator[Tuple[str, str]]:
    """(title, wikitext) of every main-namespace, non-redirect page of a dump (.xml.bz2 or .xml)."""
    path = Path(path)
    opener = bz2.open if path.suffix == ".bz2" else open
    try:
        with opener(path, "rb") as stream:
            root = None
            for event, element in ElementTree.iterparse(stream, events=("start", "end")):
                if root is None:
                    root = element
                    if _local(root.tag) != "mediawiki":
                        raise DataPrepError(f"{path} is not a MediaWiki XML dump (root element <{_local(root.tag)}>)")
                if event != "end" or _local(element.tag) != "page":
                    continue
                namespace = title = text = None
                redirect = False
                for child in element.iter():
                    name = _local(child.tag)
                    if name == "ns":
                        namespace = (child.text or "").strip()
                    elif name == "title":
                        title = child.text or ""
                    elif name == "redirect":
                        redirect = True
                    elif name == "text":
                        text = child.text or ""
                if namespace == "0" and not redirect and text:
                    yield title, text
                root.clear()  # drop the finished page: memory stays bounded
    except DataPrepError:
        raise
    except PermissionError as err:
        raise DataPrepError(f"cannot read dump {path}: {err.strerror}") from None
    except FileNotFoundError:
        raise DataPrepError(f"dump {path} does not exist") from None
    except (OSError, EOFError) as err:  # bz2: "Invalid data stream", "Compressed file ended before ..."
        raise DataPrepError(f"dump {path} is corrupt or truncated: {err}") from None
    except ElementTree.ParseError as err:
        raise DataPrepError(f"dump {path} is not well-formed XML: {err}") from None


def wikiextractor_files(path: Path) -> List[Path]:
    """The files of a WikiExtractor output (a file, or a folder tree like AA/wiki_00), sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataPrepError(f"WikiExtractor output {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataPrepError(f"WikiExtractor output folder {path} is empty")
    return files


def iter_wikiextractor_docs(paths: Sequence[Path]) -> Iterator[str]:
    """Article text of each ``<doc ...>`` ... ``</doc>`` (title line skipped, lines joined by spaces)."""
    for path in paths:
        opener = bz2.open if path.suffix == ".bz2" else open
        try:
            with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
                lines: List[str] = []
                inside = False
                for line in handle:
                    if line.startswith("<doc "):
                        inside, lines = True, []
                    elif line.startswith("</doc>"):
                        inside = False
                        text = " ".join(s for s in (part.strip() for part in lines[1:]) if s)
                        if text:
                            yield text
                    elif inside:
                        lines.append(line)
        except (OSError, EOFError) as err:
            raise DataPrepError(f"cannot read {path}: {err}") from None
