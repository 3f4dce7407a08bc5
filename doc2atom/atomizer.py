"""Split a Document into atoms: one statement each, with the exact source span.

First version: sentence-level atoms from spaCy's parser, over the document's text blocks
(paragraphs, list items; markdown headings and code are context, not atoms). Every atom
keeps `start`/`end` offsets such that `document.text[start:end]` is its source sentence.
This module must never change the document text it is given.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator

from doc2atom.schemas import AtomDraft, Document

_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_HEADING = re.compile(r"^\s*#{1,6}\s")
MIN_CHARS = 12


def blocks(text: str) -> Iterator[tuple[int, int, str | None]]:
    """(start, end, heading) of each prose block: paragraphs and list items; headings set context."""
    heading: str | None = None
    pos = 0
    in_code = False
    para_start = None
    para_end = None
    for line in text.splitlines(keepends=True):
        start, end = pos, pos + len(line.rstrip("\r\n"))
        pos += len(line)
        stripped = line.strip()
        if stripped.startswith("```"):
            in_code = not in_code
            if para_start is not None:
                yield para_start, para_end, heading
                para_start = None
            continue
        if in_code:
            continue
        if not stripped:
            if para_start is not None:
                yield para_start, para_end, heading
                para_start = None
            continue
        if _HEADING.match(line):
            if para_start is not None:
                yield para_start, para_end, heading
                para_start = None
            heading = stripped.lstrip("#").strip()
            continue
        m = _BULLET.match(line)
        if m:
            if para_start is not None:
                yield para_start, para_end, heading
            para_start, para_end = start + m.end(), end
            continue
        if para_start is None:
            para_start = start + (len(line) - len(line.lstrip()))
        para_end = end
    if para_start is not None:
        yield para_start, para_end, heading


def _clean(s: str) -> str:
    return " ".join(s.replace("**", "").replace("__", "").split())


def atomize(doc: Document, nlp) -> list[AtomDraft]:
    """Sentence atoms of one document."""
    return next(iter(atomize_many([doc], nlp)))


def atomize_many(docs: Iterable[Document], nlp, batch_size: int = 64) -> Iterator[list[AtomDraft]]:
    """Atomize several documents, sharing spaCy batches; yields one list of atoms per document."""
    for doc in docs:
        spans = list(blocks(doc.text))
        texts = [doc.text[s:e] for s, e, _ in spans]
        atoms: list[AtomDraft] = []
        for (bstart, _bend, heading), parsed in zip(spans, nlp.pipe(texts, batch_size=batch_size)):
            for sent in parsed.sents:
                raw = sent.text
                lead = len(raw) - len(raw.lstrip())
                s = bstart + sent.start_char + lead
                e = bstart + sent.end_char - (len(raw) - len(raw.rstrip()))
                text = _clean(doc.text[s:e])
                if len(text) < MIN_CHARS or not any(c.isalpha() for c in text):
                    continue
                if not any(t.pos_ in ("VERB", "AUX") for t in sent):
                    continue  # a title or fragment states no fact
                context = heading or doc.title
                key = text if (not context or context.lower() in text.lower()) else f"{context}: {text}"
                atoms.append(AtomDraft(type="statement", text=text, key=key, start=s, end=e))
        yield atoms
