"""Read files into Documents: txt, md, html, jsonl. Bad files get a clear InputError.

A reader returns the document text that atom spans index into: for txt and md the file's
own text, for html the extracted visible text, for jsonl one document per line's text
field. Readers never guess at encodings: non-UTF-8 input is an error, not mojibake.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

from doc2atom import errors
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


def _title_from(text: str, fallback: str) -> str:
    for line in text.splitlines():
        s = line.strip().lstrip("#").strip()
        if s:
            return s[:200]
    return fallback


def html_to_text(html: str) -> tuple[str, str]:
    """Visible text of an HTML page (scripts, styles, navigation dropped) and its title."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "nav", "header", "footer", "noscript", "template", "aside"]):
        tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    if soup.title:
        soup.title.decompose()
    blocks = []
    for el in soup.find_all(["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "td", "th", "pre", "blockquote", "dd", "dt"]):
        if el.find(["p", "li", "td"]):  # a container: its children are taken on their own
            continue
        t = " ".join(el.get_text(" ", strip=True).split())
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
        yield Document(id=doc_id(str(path)), path=str(path), title=title or _title_from(text, path.stem), text=text,
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
            title = str(obj.get("title") or _title_from(text, path.stem))
            yield Document(id=doc_id(key), path=key, title=title, text=text, sha256=content_hash(text))
    else:
        yield Document(id=doc_id(str(path)), path=str(path), title=_title_from(raw, path.stem), text=raw,
                       sha256=content_hash(raw))


def document_from_text(key: str, text: str, title: str = "") -> Document:
    """A Document built in memory (datasets, the HTTP API)."""
    if not text.strip():
        raise errors.InputError(f"{key}: empty text; nothing to learn from.")
    return Document(id=doc_id(key), path=key, title=title or _title_from(text, key), text=text, sha256=content_hash(text))


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


__all__ = ["SUFFIXES", "content_hash", "doc_id", "document_from_text", "expand_paths", "line_of", "read_file"]
