"""Read files into Documents: txt, md, html, jsonl. Bad files get a clear InputError.

A reader returns the document text that atom spans index into: for txt and md the file's
own text, for html the extracted visible text, for jsonl one document per line's text
field. Readers never guess at encodings: non-UTF-8 input is an error, not mojibake.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Iterator

from doc2atom import errors
from doc2atom.lexicon import BACK_MATTER
from doc2atom.schemas import Document

SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".jsonl")
MAX_BYTES = 20_000_000
JSONL_TEXT_FIELDS = ("text", "content", "body", "context")


def doc_id(key: str) -> str:
    return "d" + hashlib.sha256(key.encode()).hexdigest()[:12]


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def expand_paths(paths: list[str]) -> list[Path]:
    """Files named directly, plus supported files found (recursively, sorted) in folders."""
    out: list[Path] = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.exists():
            raise errors.path_missing(p)
        if path.is_dir():
            out.extend(sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES))
        else:
            out.append(path)
    return [p.resolve() for p in out]


def _decode(path: Path, max_bytes: int) -> str:
    size = path.stat().st_size
    if size > max_bytes:
        raise errors.too_large(str(path), size, max_bytes)
    data = path.read_bytes()
    if not data.strip():
        raise errors.empty_file(str(path))
    if b"\x00" in data[:8192]:
        raise errors.binary_file(str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise errors.not_utf8(str(path), e.start) from None
    return text.lstrip("\ufeff")


_LIST_MARK = re.compile(r"^([-*+\u2022]|\d+[.)])\s")
_TITLE_MAX_WORDS = 12


def _title_from(text: str) -> str:
    """The document's first line when it reads as a title: a Markdown heading, or a short line (at most
    12 words, no list marker, not ending like a sentence or clause) with more text after it. Else "" (no
    title): a sentence is not a title, and the atomizer takes the title for the document's topic (a first
    sentence taken as one made "the astronomer" in that sentence resolve to the whole sentence)."""
    lines = text.splitlines()
    for n, line in enumerate(lines):
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            heading = s.lstrip("#").strip()
            if heading:
                return heading[:200]
            continue
        more = any(rest.strip() for rest in lines[n + 1:])
        if (more and len(s.split()) <= _TITLE_MAX_WORDS and not _LIST_MARK.match(s)
                and not s.endswith((".", "!", "?", ";", ":", ","))):
            return s[:200]
        return ""
    return ""


_HTML_BLOCKS = ["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "table", "pre", "blockquote", "dl", "dd", "dt"]


def _words(el) -> str:
    return " ".join(el.get_text(" ", strip=True).split())


def _item_text(li) -> str:
    """An item's own text: its nested lists and tables are blocks of their own."""
    parts = []
    for s in li.find_all(string=True):
        if not any(p.name in ("ul", "ol", "table") for p in s.parents if p is not li and li in p.parents):
            parts.append(str(s))
    return " ".join(" ".join(parts).split())


def _item_marker(li) -> str:
    """'- ' (or '3. ' in an ordered list), indented by nesting depth, as the atomizer's list handling reads it."""
    depth = len(li.find_parents("li"))
    parent = li.find_parent(["ul", "ol"])
    marker = "- "
    if parent is not None and parent.name == "ol":
        marker = f"{1 + len(li.find_previous_siblings('li'))}. "
    return "  " * depth + marker


def _table_blocks(table, title: str) -> list[str]:
    """A table as one pipe table (header row first), so each cell keeps its row and column for the
    atomizer; a one-column (layout) table as paragraphs."""
    rows, kinds = [], []
    for tr in table.find_all("tr"):
        if tr.find_parent("table") is not table:
            continue  # a nested table's rows: part of its outer cell's text
        cells = tr.find_all(["th", "td"], recursive=False)
        texts = [_words(c).replace("|", "/") for c in cells]
        if any(texts):
            rows.append(texts)
            kinds.append([c.name for c in cells])
    if not rows:
        return []
    if max(len(r) for r in rows) == 1:
        return [r[0] for r in rows if r[0]]
    if all(k[0] == "th" and "th" not in k[1:] and len(k) == 2 for k in kinds):
        # a key-value table (an infobox: "Length | 412 m" per row): one row about its subject
        cap = table.find("caption")
        head = table.find_previous(["h1", "h2", "h3", "h4", "h5", "h6"])
        subject = _words(cap) if cap else _words(head) if head else title
        rows = [[""] + [r[0] for r in rows], [subject.replace("|", "/") or "-"] + [r[1] for r in rows]]
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * width]
    return ["\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])]


def _dl_lines(dl) -> str:
    """"Elevation: 1,204 m" lines of a <dl> (a term's several descriptions joined by "; ")."""
    entries: list[tuple[str, list[str]]] = []  # (term, its descriptions)
    for el in dl.find_all(["dt", "dd"]):
        if el.find_parent("dl") is not dl:
            continue  # a nested list: inside its own description
        if el.name == "dt" or not entries:
            entries.append(("", []))
        if el.name == "dt":
            entries[-1] = (_words(el), [])
        else:
            entries[-1][1].append(_words(el))
    lines = [f"{t}: {'; '.join(v)}" if t and v else (t or "; ".join(v)) for t, v in entries]
    return "\n".join(x for x in lines if x)


_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_NOISE_CLASSES = {"navbox", "vertical-navbox", "navbox-inner", "catlinks", "mw-editsection", "reference",
                  "references", "reflist", "refbegin", "noprint", "metadata", "mw-jump-link", "toc", "printfooter",
                  "mw-cite-backlink", "sistersitebox", "portal", "mw-indicators", "navigation-not-searchable",
                  "hatnote"}
_NOISE_IDS = {"mw-navigation", "mw-head", "mw-panel", "footer", "catlinks", "siteSub", "contentSub", "jump-to-nav",
              "toc", "p-lang", "mw-hidden-catlinks"}


_SMALL_WORDS = {"and", "of", "the", "in", "on", "a", "an", "to", "for", "with", "at", "by", "from", "or", "&"}


def titled(words: list[str]) -> bool:
    """Whether an emphasised phrase reads as a title of several words ("Salt and Iron", "The Grey Harbour"): every
    word capitalised but small ones, 2 to 8 words."""
    return 2 <= len(words) <= 8 and words[0][:1].isupper() and all(
        w[:1].isupper() or w[:1].isdigit() or w.lower() in _SMALL_WORDS for w in words)


def html_to_text(html: str) -> tuple[str, str]:
    """Visible text of an HTML page (scripts, styles, navigation dropped) and its title.

    Structure the atomizer reads is kept: headings become "# ...", list items "- ..." (or
    "1. ..."), tables pipe tables (a header row, then one line per row), definition lists
    "term: description" lines."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "nav", "header", "footer", "noscript", "template", "aside"]):
        tag.decompose()
    # an encyclopedia page's furniture: navigation boxes, citation marks, edit links, category bars, reference lists
    noise = [el for el in soup.find_all(True) if (set(el.get("class") or []) & _NOISE_CLASSES
                                                 or el.get("id") in _NOISE_IDS or el.get("role") == "navigation")]
    for el in noise:
        if not el.decomposed:  # (not inside one already removed)
            el.decompose()
    for el in soup.find_all(["i", "em", "cite"]):  # a work's title in italics: emphasis the atomizer reads
        words = el.get_text(" ", strip=True).split()
        if titled(words) and not el.find_parent("title"):
            el.replace_with("*" + " ".join(words) + "*")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    if soup.title:
        soup.title.decompose()
    h1 = soup.find("h1")
    head = _words(h1) if h1 is not None else ""
    if head and title.lower().startswith(head.lower()) and len(title) > len(head):
        title = head  # "Ossel River - Wikipedia": the page's own heading, without the site's name
    blocks = []
    back = 0  # while > 0: inside a back-matter section ("See also", "References") opened by a heading of that level
    for el in soup.find_all(_HTML_BLOCKS):
        if el.name in _HEADINGS:
            level = int(el.name[1])
            if back and level <= back:
                back = 0
            if not back and level >= 2 and _words(el).strip().lower() in BACK_MATTER:
                back = level
        if back:
            continue
        if el.find_parent("table"):
            continue  # rendered with its table
        if el.name == "table":
            blocks.extend(_table_blocks(el, title))
            continue
        if el.name == "dl":  # a definition list: one "term: description" line per term (an infobox's shape)
            t = _dl_lines(el)
            if t:
                blocks.append(t)
            continue
        if el.name in ("dt", "dd") and el.find_parent("dl"):
            continue  # rendered with its list
        if el.name == "li":
            t = _item_text(el)
            if t:
                blocks.append(_item_marker(el) + t)
            continue
        if el.find_parent("li") or el.find(["p", "li", "table"]):
            continue  # inside an item (the item has its text), or a container (its children come on their own)
        t = _words(el)
        if t:
            blocks.append(("# " + t) if el.name in ("h1", "h2", "h3", "h4", "h5", "h6") else t)
    if not blocks:
        body = soup.get_text("\n", strip=True)
        blocks = [" ".join(line.split()) for line in body.splitlines() if line.strip()]
    return "\n\n".join(blocks), title


def read_file(path: Path, max_bytes: int = MAX_BYTES) -> Iterator[Document]:
    """Yield the Documents in one file (one, or one per JSONL line)."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise errors.unsupported_file(str(path), SUFFIXES)
    raw = _decode(path, max_bytes)
    if suffix in (".html", ".htm"):
        text, title = html_to_text(raw)
        if not text.strip():
            raise errors.empty_file(str(path))
        yield Document(id=doc_id(str(path)), path=str(path), title=title or _title_from(text), text=text,
                       sha256=content_hash(text))
    elif suffix == ".jsonl":
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise errors.InputError(f"{path}:{n}: not valid JSON ({e.msg}); each line must be one JSON object.")
            if not isinstance(obj, dict):
                raise errors.InputError(f"{path}:{n}: each line must be a JSON object, got {type(obj).__name__}.")
            field = next((f for f in JSONL_TEXT_FIELDS if isinstance(obj.get(f), str)), None)
            if field is None:
                raise errors.InputError(f"{path}:{n}: no text field; expected one of {', '.join(JSONL_TEXT_FIELDS)}.")
            text = obj[field]
            if not text.strip():
                continue
            key = f"{path}#{obj.get('id', n)}"
            title = str(obj.get("title") or _title_from(text))
            yield Document(id=doc_id(key), path=key, title=title, text=text, sha256=content_hash(text))
    else:
        yield Document(id=doc_id(str(path)), path=str(path), title=_title_from(raw), text=raw,
                       sha256=content_hash(raw))


def document_from_text(key: str, text: str, title: str = "") -> Document:
    """A Document built in memory (datasets, the HTTP API)."""
    if not text.strip():
        raise errors.InputError(f"{key}: empty text; nothing to learn from.")
    return Document(id=doc_id(key), path=key, title=title or _title_from(text), text=text, sha256=content_hash(text))


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


__all__ = ["SUFFIXES", "content_hash", "doc_id", "document_from_text", "expand_paths", "line_of", "read_file"]
