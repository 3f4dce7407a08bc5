"""Syntactic clues the resolver weighs: roles, binding, cataphora, expletives, class nouns.

Functions of spaCy tokens and spans only; the discourse state lives in resolve.py.
This module must never keep state between calls.
"""

from __future__ import annotations

import re

from doc2atom.lexicon import GENERIC, NOT_ENTITIES, PARTITIVE

def norm(words) -> str:
    return " ".join(w.lower() for w in words)


def is_expletive(t) -> bool:
    """'It is expected that ...', 'It is here that ...', 'it is clearer to call ...'."""
    if t.lower_ != "it":
        return False
    if t.dep_ == "expl":
        return True
    if t.dep_ not in ("nsubj", "nsubjpass"):
        return False
    v = t.head
    if not any(c.dep_ in ("ccomp", "xcomp", "csubj") and c.i > v.i for c in v.children):
        return False
    return v.lemma_ in ("be", "seem", "appear", "happen", "remain") or (v.tag_ == "VBN" and any(
        c.dep_ == "auxpass" for c in v.children))


def classes_of(words) -> set[str]:
    """Class nouns of a phrase: its common nouns, and generic words inside names ('Lake' in 'Lake Constance')."""
    out = set()
    for x in words:
        low = x.lower_
        if x.pos_ == "NOUN" and low not in NOT_ENTITIES:
            out.add(x.lemma_.lower())
        elif x.pos_ == "PROPN" and low in GENERIC:
            out.add(low)
    return out


def source_text(span, skip_det: bool) -> str:
    """A phrase as written (source spacing), without a leading determiner when asked."""
    toks = [t for t in span]
    if skip_det and toks and toks[0].dep_ == "det":
        toks = toks[1:]
    return "".join(t.text_with_ws for t in toks).strip()


def life_dates(c) -> bool:
    """A name followed by '(1811–1879)' or '(born 1811)' names a person."""
    doc = c.doc
    nxt = doc[c.end:min(len(doc), c.end + 5)]
    return len(nxt) >= 3 and nxt[0].text == "(" and (
        re.fullmatch(r"\d{3,4}[–—-]\d{2,4}", nxt[1].text) is not None
        or (re.fullmatch(r"\d{3,4}", nxt[1].text) is not None and nxt[2].text in ("–", "-", "—"))
        or nxt[1].lower_ in ("born", "b.", "née"))


def bracketed(t) -> bool:
    depth = 0
    for x in t.doc[t.sent.start:t.i]:
        depth += x.text in ("(", "[") and 1 or (-1 if x.text in (")", "]") and depth else 0)
    return depth > 0


def near(head, t) -> bool:
    return t.i - head.i <= 8


def role_weight(t) -> float:
    """Salience of a grammatical role: subject of the main clause > other subjects > objects > the rest."""
    if t.dep_ in ("nsubj", "nsubjpass"):
        return 3.0 if t.head.dep_ in ("ROOT", "conj") else 2.0
    if t.dep_ == "pobj" and t.head.lower_ == "of" and t.head.head.dep_ in ("nsubj", "nsubjpass"):
        return 3.0 if t.head.head.lower_ in PARTITIVE else 1.5
    if t.dep_ in ("dobj", "attr", "appos") or partitive_object(t):
        return 1.5
    return 0.5


def partitive_object(t) -> bool:
    """t names what a partitive object is part of: "the old town" in "a fire destroyed much of the old town"."""
    return (t.dep_ == "pobj" and t.head.lower_ == "of" and t.head.head.dep_ in ("dobj", "nsubjpass")
            and t.head.head.lower_ in PARTITIVE)


def clause_verb(p):
    v = p.head
    while v.pos_ not in ("VERB", "AUX") and v.head.i != v.i:
        v = v.head
    return v


def clause_subject(p, mention: dict, topic):
    """The entity that is the subject of the pronoun's clause (through coordination and 'which');
    the topic when a headline-style sentence has none ('Known for its glass.')."""
    v = clause_verb(p)
    for _ in range(6):
        s = next((c for c in v.children if c.dep_ in ("nsubj", "nsubjpass")), None)
        if s is not None:
            return mention.get(s.i)
        if v.dep_ == "conj" and v.head.i != v.i:
            v = v.head
            continue
        return topic if v.dep_ == "ROOT" and not any(t.pos_ in ("NOUN", "PROPN", "PRON") and t.i < v.i
                                                      for t in v.sent) else None
    return None


def same_clause_subjects(p, mention: dict) -> set[int]:
    """Principle B: in 'a dam prevents it from flowing', 'it' is not the dam."""
    if p.dep_ in ("nsubj", "nsubjpass") or p.tag_ == "PRP$":
        return set()
    v = p.head
    if p.dep_ == "pobj" and v.dep_ == "prep":
        v = v.head
    out = set()
    for c in v.children:
        if c.dep_ in ("nsubj", "nsubjpass") and mention.get(c.i) is not None:
            out.add(id(mention[c.i]))
    return out


def cataphor(p):
    """'As it approaches the border, the Rhine ...': the pronoun sits before the subject it means."""
    root = p.sent.root
    s = next((c for c in root.children if c.dep_ in ("nsubj", "nsubjpass")), None)
    if s is None or p.i >= s.left_edge.i or p.dep_ not in ("nsubj", "nsubjpass", "poss") or s.pos_ == "PRON":
        return None
    if p.dep_ in ("nsubj", "nsubjpass") and p.head.i == root.i:
        return None
    x = p
    while x.head.i != root.i and x.head.i != x.i:  # only from a clause or phrase put before the subject
        x = x.head
    if x.dep_ not in ("advcl", "prep", "npadvmod", "advmod") or x.i > s.i:
        return None
    return s


def copula_noun(p) -> str | None:
    """'It is the second-longest river': the class a subject pronoun is said to belong to."""
    if p.dep_ != "nsubj" or p.head.lemma_ != "be":
        return None
    for c in p.head.children:
        if c.dep_ == "attr" and c.pos_ == "NOUN":
            return c.lemma_.lower()
    return None


def later_mentions(p, chunks, by_key) -> set[int]:
    """Entities named later in the pronoun's own sentence (so not what a subject pronoun means)."""
    if p.dep_ not in ("nsubj", "nsubjpass") and p.tag_ != "PRP$":
        return set()
    out = set()
    for c in chunks:
        if c.start > p.i:
            propn = [x.text for x in c if x.pos_ == "PROPN"]
            e = by_key.get(norm(propn)) if propn else None
            if e is not None:
                out.add(id(e))
    return out
