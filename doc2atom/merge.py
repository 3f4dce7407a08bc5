"""Near-duplicate atoms across documents: one atom, every provenance.

Two atoms are near-duplicates when they state the same numbers, the same negation and
nearly the same content words (Jaccard >= threshold over lower-cased words without
stopwords, so "The Korrin Bridge is 412 metres long." and "The Korrin Bridge is 412
metres long" merge while "... 413 metres long." does not). Candidates are found through the
rarer words they share, so merging stays close to linear in the number of atoms.

The knowledge-base store keeps one source per atom today; until it keeps several, a caller
compiles each merged atom once and stores it under its first source (see ATOMIZER_NOTES.md).
This module must never load models: it runs on atom text alone.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from doc2atom.schemas import AtomDraft

STOPWORDS = {
    "a", "an", "the", "of", "in", "on", "at", "to", "by", "for", "from", "with", "and", "or", "as", "is", "are", "was",
    "were", "be", "been", "being", "its", "it", "their", "this", "that", "these", "those", "which", "who", "also",
}
NEGATIONS = {"not", "no", "never", "none", "nor", "n't", "without"}
_WORD = re.compile(r"[0-9][0-9,.]*[0-9]|[0-9]|[^\W\d_]+(?:['’-][^\W\d_]+)*", re.UNICODE)


class Provenance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    doc: str = Field(description="Document id (or path) the atom came from")
    start: int = Field(ge=0, description="Span start in that document's text")
    end: int = Field(ge=0, description="Span end (exclusive)")


class MergedAtom(BaseModel):
    """An atom stated by one or more documents: the representative draft and every source."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="Atom type of the representative")
    text: str = Field(description="Representative text (the most informative of the group)")
    key: str = Field(description="Retrieval key of the representative")
    sources: list[Provenance] = Field(description="Every document span that states this atom, in input order")


def signature(text: str) -> tuple[frozenset[str], frozenset[str], bool]:
    """(content words, numbers, negated) of an atom text."""
    words = [w.lower() for w in _WORD.findall(text)]
    numbers = frozenset(w.replace(",", "") for w in words if w[0].isdigit())
    negated = any(w in NEGATIONS or w.endswith("n't") for w in words)
    content = frozenset(w for w in words if w not in STOPWORDS and not w[0].isdigit())
    return content, numbers, negated


def near_duplicate(a: str, b: str, threshold: float = 0.8) -> bool:
    """True when two atom texts state the same fact (see the module docstring)."""
    return _similar(signature(a), signature(b), threshold)


def _similar(sa, sb, threshold: float) -> bool:
    (ca, na, ga), (cb, nb, gb) = sa, sb
    if na != nb or ga != gb:
        return False
    if not ca and not cb:
        return True
    return len(ca & cb) / len(ca | cb) >= threshold


def merge_near_duplicates(atoms_per_doc: Iterable[tuple[str, Sequence[AtomDraft]]],
                          threshold: float = 0.8) -> list[MergedAtom]:
    """Merge near-duplicate atoms of many documents; every atom ends up in exactly one group.

    atoms_per_doc: (document id, that document's atoms) pairs, as `atomize_many` yields them.
    Returns one MergedAtom per group, in order of each group's first atom.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    items: list[tuple[str, AtomDraft]] = [(doc, a) for doc, atoms in atoms_per_doc for a in atoms]
    sigs = [signature(a.text) for _, a in items]
    parent = list(range(len(items)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    df: dict[str, int] = defaultdict(int)
    for content, _, _ in sigs:
        for w in content:
            df[w] += 1
    index: dict[str, list[int]] = defaultdict(list)  # word -> atoms that have it among their rarest words
    for n, (content, _, _) in enumerate(sigs):
        seen: set[int] = set()
        for w in content or {""}:
            for m in index.get(w, ()):
                if m not in seen:
                    seen.add(m)
                    if find(m) != find(n) and _similar(sigs[m], sigs[n], threshold):
                        parent[find(n)] = find(m)
        # near-duplicates share most words, so one of them holds one of the other's rarest five
        for w in sorted(content, key=lambda w: (df[w], w))[:5] or [""]:
            index[w].append(n)
    groups: dict[int, list[int]] = {}
    for n in range(len(items)):
        groups.setdefault(find(n), []).append(n)
    out = []
    for members in sorted(groups.values(), key=lambda g: g[0]):
        best = max(members, key=lambda n: (len(sigs[n][0]), -n))  # most content words, then earliest
        rep = items[best][1]
        out.append(MergedAtom(type=rep.type, text=rep.text, key=rep.key,
                              sources=[Provenance(doc=items[n][0], start=items[n][1].start, end=items[n][1].end)
                                       for n in members]))
    return out
