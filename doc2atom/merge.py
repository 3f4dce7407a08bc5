"""Near-duplicate atoms across documents: one atom, every provenance.

Two atoms are near-duplicates when they state the same numbers, the same negation and
nearly the same content words (Jaccard >= threshold over lower-cased words without
stopwords, so "The Korrin Bridge is 412 metres long." and "The Korrin Bridge is 412
metres long" merge while "... 413 metres long." does not). Candidates are found through the
rarer words they share, so merging stays close to linear in the number of atoms.

The knowledge base keeps every provenance of an atom (store.py, `atom_sources`): `plan_ingest`
says, for each document of an ingest, which atoms it introduces (to compile once) and which
of its spans only add a provenance to an atom that already exists (in the KB, found by
`signature_key`, or introduced by an earlier document of the same ingest).
This module must never load models: it runs on atom text alone.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

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


def signature_key(text: str) -> str:
    """A short stable string for `signature(text)`; the store indexes atoms by it (equal keys = same fact)."""
    content, numbers, negated = signature(text)
    canon = "\x1f".join(sorted(content)) + "\x1e" + "\x1f".join(sorted(numbers)) + "\x1e" + str(int(negated))
    return hashlib.sha1(canon.encode()).hexdigest()


def group_near_duplicates(texts: Sequence[str], threshold: float = 0.8) -> list[list[int]]:
    """Groups of indices of near-duplicate texts; every index in exactly one group, groups in
    order of their first member, members in input order."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    sigs = [signature(t) for t in texts]
    parent = list(range(len(texts)))

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
    for n in range(len(texts)):
        groups.setdefault(find(n), []).append(n)
    return sorted(groups.values(), key=lambda g: g[0])


def _representative(texts: Sequence[str], members: list[int]) -> int:
    """The most informative member: most content words, then earliest."""
    return max(members, key=lambda n: (len(signature(texts[n])[0]), -n))


def merge_near_duplicates(atoms_per_doc: Iterable[tuple[str, Sequence[AtomDraft]]],
                          threshold: float = 0.8) -> list[MergedAtom]:
    """Merge near-duplicate atoms of many documents; every atom ends up in exactly one group.

    atoms_per_doc: (document id, that document's atoms) pairs, as `atomize_many` yields them.
    Returns one MergedAtom per group, in order of each group's first atom.
    """
    items: list[tuple[str, AtomDraft]] = [(doc, a) for doc, atoms in atoms_per_doc for a in atoms]
    texts = [a.text for _, a in items]
    out = []
    for members in group_near_duplicates(texts, threshold):
        rep = items[_representative(texts, members)][1]
        out.append(MergedAtom(type=rep.type, text=rep.text, key=rep.key,
                              sources=[Provenance(doc=items[n][0], start=items[n][1].start, end=items[n][1].end)
                                       for n in members]))
    return out


# A provenance target: an atom id already in the KB ("a12"), or (document index, position in that
# document's `new`) for an atom introduced by an earlier document of the same ingest.
AtomRef = str | tuple[int, int]


@dataclass
class DocPlan:
    """What one document of an ingest adds to the knowledge base."""

    new: list[AtomDraft] = field(default_factory=list)  # atoms this document introduces: compiled, stored under it
    spans: list[list[tuple[int, int]]] = field(default_factory=list)  # per new atom: its spans in this document
    links: list[tuple[AtomRef, int, int]] = field(default_factory=list)  # (atom, start, end): provenance only
    reused: int = 0  # of the linked atoms, how many are this document's own earlier atoms (it was replaced)


def plan_ingest(drafts_per_doc: Sequence[Sequence[AtomDraft]],
                existing: Callable[[list[str]], dict[str, str]] | None = None,
                threshold: float = 0.8,
                own: Sequence[dict[tuple[str, str], str]] | None = None) -> list[DocPlan]:
    """Decide, for the documents of one ingest (in commit order), which atoms to compile and where
    each near-duplicate only adds a provenance.

    Near-duplicates (see `near_duplicate`) among all drafts of the call form one group. A group
    whose representative's or any member's `signature_key` names an atom already in the KB
    (`existing(keys) -> {key: atom id}`) adds a provenance to it for every member; otherwise the
    representative is compiled once, stored under the group's first document with that
    document's spans, and later documents link to it. Returns one DocPlan per document.

    own[j]: for a document being replaced, its stored atoms by (text, key). A group that only document
    j states, and whose representative's text and key are those of one of them, keeps that atom (a
    provenance, counted in DocPlan.reused) instead of compiling it again: the parts of an edited
    document that did not change are not recompiled.
    """
    items = [(j, d) for j, drafts in enumerate(drafts_per_doc) for d in drafts]
    texts = [d.text for _, d in items]
    groups = group_near_duplicates(texts, threshold)
    keys = [signature_key(t) for t in texts]
    found = existing(sorted(set(keys))) if existing and keys else {}
    plans = [DocPlan() for _ in drafts_per_doc]
    for members in groups:
        rep = _representative(texts, members)
        match = next((found[keys[n]] for n in [rep] + members if keys[n] in found), None)
        j0 = items[members[0]][0]
        if match is None and own is not None and all(items[n][0] == j0 for n in members):
            match = own[j0].get((items[rep][1].text, items[rep][1].key))
            if match is not None:
                plans[j0].reused += 1
        if match is None:
            first = items[members[0]][1]
            r = items[rep][1]
            pos = len(plans[j0].new)
            plans[j0].new.append(AtomDraft(type=r.type, text=r.text, key=r.key, start=first.start, end=first.end))
            plans[j0].spans.append([(items[n][1].start, items[n][1].end) for n in members if items[n][0] == j0])
            match = (j0, pos)
        for n in members:
            j, d = items[n]
            if isinstance(match, tuple) and j == match[0]:
                continue  # one of the new atom's own spans
            plans[j].links.append((match, d.start, d.end))
    return plans
