"""One atom, one fact: split a parsed sentence into pieces, each stating one fact.

A piece is a list of segments: token indices into the sentence's own parse (so the words are
the source's words) and the few literal words a split has to add (a repeated subject is
copied tokens; "is" for an apposition is a literal). Splitting only removes connectives
("and", commas, "which") and repeats a subject, so the union of the pieces still says what
the sentence said. What is split:

- coordinated verb phrases sharing a subject ("X begins in A, forms B and flows C"): one piece
  per verb, each repeating the subject (and a passive/perfect auxiliary the verb relies on);
- coordinated clauses with their own subjects, and "while"/"whereas" contrasts;
- descriptive appositions ("the Rhine Gorge, a formation ..." -> "The Rhine Gorge is a formation ...");
  naming appositions ("the lighthouse, the Tarn Light,") and place pairs ("Cologne, Germany") stay;
- non-restrictive relative clauses on a definite or proper noun (", which ...", ", who ...",
  ", whose ..."), and coordinated verbs inside any relative clause;

Coordinated noun phrases ("Gaißau, Höchst and Fußach") are not split: the set is one fact
and its members cannot be pulled out without rewriting the sentence. When a split would
leave a piece without a verb or the parse looks unreliable, the sentence stays whole.

This module must never resolve references (resolve.py does) or choose types (atom_types.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Union

Segment = Union[int, str]  # a token index (rendered from the source) or a literal word

SUBJ = ("nsubj", "nsubjpass", "csubj", "csubjpass", "expl")
AUX = ("aux", "auxpass")
# dependents that do not make a coordinated verb a phrase of its own ("X rose and fell")
_LIGHT = {"cc", "punct", "conj", "advmod", "neg", "aux", "auxpass", "prt", "preconj"}
# a sentence-initial modifier is repeated for a later conjunct unless it moves the time on
_SEQUENCE = {"then", "later", "eventually", "subsequently", "afterwards", "afterward", "finally", "now",
             "today", "still", "thereafter", "again"}
_CONTRAST = {"while", "whereas"}
_CLOSE = {",", ".", ";", ":", ")", "]", "!", "?", "'s", "'", "%", "n't", "’s"}
_OPEN = {"(", "[", "$", "“"}


@dataclass
class Piece:
    """One fact of a sentence, before resolution and rendering."""

    kind: str  # "sentence", "clause", "conjunct", "apposition", "relative", "contrast"
    own: list[int]  # source tokens this piece states; its span runs from the first to the last
    lead: list[Segment] = field(default_factory=list)  # copied subject/modifiers, or "X is" for appositions
    verb: int | None = None  # the predicate's token (None for apposition pieces)
    subj: list[int] = field(default_factory=list)  # the subject's tokens (in lead or own)
    # the segments to render, when not lead + own: a gapped clause gets the first clause's verb in its middle
    order: list[Segment] | None = None


def _subtree(t) -> set[int]:
    return {x.i for x in t.subtree}


def subject_of(v):
    """The subject token of verb v; a coordinated verb without one shares its head verb's."""
    seen = 0
    while v is not None and seen < 8:
        for c in v.children:
            if c.dep_ in SUBJ:
                return c
        if v.dep_ == "conj" and v.head.i != v.i:
            v, seen = v.head, seen + 1
            continue
        return None
    return None


def core(t, conj: bool = True) -> list[int]:
    """The noun phrase headed by t without appositions, relative clauses and parentheses
    (and without coordinated nouns when conj is False)."""
    inside: set[int] = set()  # bracketed material: "The Rhine (Romansh: Rein, ...)"
    depth = 0
    for x in t.subtree:
        if x.text in ("(", "["):
            depth += 1
        if depth:
            inside.add(x.i)
        if x.text in (")", "]"):
            depth = max(0, depth - 1)
    drop: set[int] = set(inside)
    for c in t.children:
        if (c.i > t.i and c.dep_ not in ("conj", "cc") and _comma_before(c)) or c.dep_ in (
                "relcl", "acl", "advcl", "parataxis") or (
                c.dep_ == "punct" and c.i > t.i) or (c.dep_ == "advmod" and c.i < t.i) or (
                not conj and c.dep_ in ("conj", "cc", "preconj")):
            drop |= _subtree(c)
    out = [x for x in t.subtree if x.i not in drop]
    while out and (out[-1].is_punct or out[-1].dep_ in ("cc", "case")):
        out.pop()
    while out and out[0].is_punct:
        out.pop(0)
    return [x.i for x in out]


def _conjuncts(v) -> list:
    out = []
    for c in v.children:
        if c.dep_ == "conj" and c.pos_ in ("VERB", "AUX") and c.i > v.i:
            out.append(c)
            out.extend(_conjuncts(c))
        elif _listed_verb(v, c):
            out.append(c)
            out.extend(_conjuncts(c))
    return sorted(out, key=lambda x: x.i)


def _listed_verb(v, c) -> bool:
    """'X rises in A, crosses B ...': a finite verb after a comma, with no subject or conjunction of
    its own, is the next item of a verb list even when the parser hangs it off as a clause."""
    return (c.dep_ == "advcl" and c.i > v.i and c.tag_ in ("VBZ", "VBD", "VBP") and v.tag_ == c.tag_
            and c.doc[c.left_edge.i - 1].text == "," and not any(
                x.dep_ in ("mark", "nsubj", "nsubjpass", "aux", "auxpass") for x in c.children))


def _has_subject(v) -> bool:
    return any(c.dep_ in SUBJ for c in v.children)


def _bare(v) -> bool:
    """True when a verb has nothing of its own after it: 'rose' in 'rose and fell'."""
    return not any(c.i > v.i and c.dep_ not in _LIGHT for c in v.children)


_EDGE_PUNCT = {",", ".", ";", ":", "-", "–", "—"}


def _edges(ids: list[int], doc) -> list[int]:
    """Drop connectives and separators left at a piece's edges (brackets and quotes stay)."""
    ids = sorted(ids)
    while ids and (doc[ids[0]].text in _EDGE_PUNCT or doc[ids[0]].dep_ in ("cc", "preconj", "mark") and
                   doc[ids[0]].lower_ in ("and", "or", "but", "while", "whereas", "so", "yet", "nor")):
        ids.pop(0)
    while ids and (doc[ids[-1]].text in _EDGE_PUNCT or doc[ids[-1]].dep_ in ("cc", "preconj")):
        ids.pop()
    return ids


def _preamble(v, subj) -> list[int]:
    """Modifiers before the subject of v ('In Mainz,', 'By 1900,'): they scope over every conjunct."""
    if subj is None:
        return []
    left = subj.left_edge.i
    out: list[int] = []
    for c in v.children:
        # "When heated above 600 °C, orvanite turns black and loses its water": the clause scopes over both verbs
        if c.dep_ in ("prep", "npadvmod", "advcl") and c.right_edge.i < left and not (
                c.dep_ == "advcl" and any(x.pos_ == "PRON" or x.tag_ == "PRP$" for x in c.subtree)):
            # (not a clause with a pronoun of its own: "Though they retained the name, the streams ...")
            out.extend(range(c.left_edge.i, c.right_edge.i + 1))
            nxt = c.right_edge.i + 1
            if c.dep_ == "advcl" and nxt < left and c.doc[nxt].text == ",":
                out.append(nxt)  # a clause keeps its comma: "When heated above 600 °C, orvanite loses ..."
    return sorted(out)


def _own_left_modifiers(c, subj_ids: set[int]) -> bool:
    for x in c.children:
        if x.i < c.i and x.i not in subj_ids and x.dep_ not in ("cc", "punct", "aux", "auxpass", "neg") and not (
                x.dep_ == "advmod" and x.lower_ not in _SEQUENCE):
            return True
    return False


def _copied_aux(v, c) -> list[int]:
    """'was founded in 1843 and renamed in 1900': 'renamed' needs the 'was' of its head."""
    if any(x.dep_ in AUX for x in c.children):
        return []
    passive = any(x.dep_ == "auxpass" for x in v.children)
    if v.lemma_ == "be" and v.pos_ == "AUX" and c.tag_ == "VBN":
        return [v.i]  # "is a World Heritage Site and known as ...": "is known as"
    # "was designed by Paul Arden and completed in 1862": the tagger calls "completed" a past tense; a regular
    # form with no object after a passive is the passive's participle
    participle = c.tag_ in ("VBN", "VBG") or (passive and v.tag_ == "VBN" and c.tag_ == "VBD"
                                              and c.lower_.endswith("ed") and c.lemma_ not in _INTRANSITIVE
                                              and not any(
                                                  x.dep_ in ("dobj", "nsubj", "ccomp", "xcomp") for x in c.children))
    if participle and (passive or c.tag_ == "VBG" or any(x.dep_ == "aux" for x in v.children)):
        return [x.i for x in v.children if x.dep_ in AUX + ("neg",) and x.i < v.i]
    return []


_NO_SPLIT_SUBJECTS = {"this", "that", "these", "those", "which", "who", "whom"}
# verbs whose past tense after a passive is their own, active one: "was founded in 1806 and lasted until 1814"
_INTRANSITIVE = {"last", "remain", "continue", "exist", "live", "die", "stay", "appear", "happen", "occur", "arrive",
                 "emerge", "survive", "flourish", "prosper", "decline", "rise", "fall", "flow", "end", "start", "begin",
                 "succeed", "fail", "retire", "return", "move", "work", "serve", "act", "collapse", "disappear",
                 "vanish", "belong", "consist", "depend", "stand", "lie", "expand", "grow", "evolve", "merge"}


def _finite(v) -> bool:
    return v.tag_ in ("VBZ", "VBD", "VBP", "MD") or any(c.dep_ in AUX for c in v.children)


def _name_particle(t) -> bool:
    """'am' in 'Rüdesheim am Rhein' is no verb: a lowercase word between two names."""
    d = t.doc
    return (t.i > 0 and t.i + 1 < len(d) and d[t.i - 1].pos_ == "PROPN" and d[t.i + 1].pos_ == "PROPN"
            and t.text.islower())


def _split_verbs(v, subj_lead: list[Segment] | None, subj_ids: list[int], allowed: set[int], kind: str) -> list[Piece]:
    """Pieces for verb v and the verbs coordinated with it, all restricted to `allowed` tokens."""
    doc = v.doc
    keep = [Piece(kind, sorted(allowed), list(subj_lead or []), v.i, list(subj_ids))]
    subj = subject_of(v)
    conj = [c for c in _conjuncts(v) if c.i in allowed and not _name_particle(c)]
    if any(_has_subject(c) and next(x for x in c.children if x.dep_ in SUBJ).lower_ in _NO_SPLIT_SUBJECTS
           for c in conj):
        return keep  # ", and this is ..." / ", that overflowed": stays with what it points at
    shared = [c for c in conj if not _has_subject(c)]
    weak_subject = subj_lead is None and (subj is None or not (subj.pos_ in ("NOUN", "PROPN") or (
        subj.pos_ == "PRON" and subj.lower_ in ("it", "they", "he", "she", "we", "i", "you"))))
    if shared and (_bare(v) or any(_bare(c) for c in shared) or not _finite(v) or weak_subject):
        conj = [c for c in conj if _has_subject(c)]  # "join and form the Rhine": keep the verbs together
    if not conj or _name_particle(v) or (subj is None and subj_lead is None and kind == "sentence"):
        return keep
    subtrees = {c.i: _subtree(c) for c in conj}
    pre = _preamble(v, subj) if subj is not None and subj_lead is None else []
    owns: list[set[int]] = []
    heads = [v] + conj
    for x in heads:
        own = {i for i in _subtree(x) if i in allowed}
        for c in conj:
            if c is not x and c.i in own:
                own -= subtrees[c.i]
        owns.append(own)
    # words between a conjunction and the next verb belong to that verb: "and at first doesn't mix"
    for k in range(1, len(heads)):
        y = heads[k]
        for j in range(k):
            cc = [i for i in owns[j] if doc[i].dep_ == "cc" and i < y.i and doc[i].head.i in (heads[j].i, y.i)]
            if not cc:
                continue
            lo = max(cc)
            moved = {i for i in owns[j] if lo < i < y.left_edge.i}
            if moved and all(doc[i].pos_ in ("ADV", "ADP", "DET", "ADJ", "NUM", "PUNCT", "PART") or
                             doc[i].head.i in moved for i in moved):
                owns[j] -= moved
                owns[k] |= moved
        trail = [i for i in owns[k - 1] if i < y.left_edge.i and doc[i].lower_ in _SEQUENCE and doc[i].dep_ == "advmod"
                 and i == max(j for j in owns[k - 1] if j < y.left_edge.i and not doc[j].is_punct)]
        for i in trail:  # "..., then flows": 'then' hangs off the verb before but opens this one
            owns[k - 1].discard(i)
            owns[k].add(i)
    pieces = []
    for x, own in zip(heads, owns):
        own_ids = _edges(list(own), doc)
        if x is v:
            pieces.append(Piece(kind, own_ids, list(subj_lead or []), v.i, list(subj_ids)))
        elif _has_subject(x):
            lead: list[Segment] = [] if _own_left_modifiers(x, set()) else list(pre)
            s = next(c for c in x.children if c.dep_ in SUBJ)
            pieces.append(Piece("clause", own_ids, lead, x.i, core(s)))
        else:
            sseg: list[Segment] = list(subj_lead) if subj_lead is not None else core(subj)
            lead = ([] if _own_left_modifiers(x, set()) else list(pre)) + list(sseg) + _copied_aux(v, x)
            pieces.append(Piece("conjunct", own_ids, lead, x.i, list(subj_ids) or core(subj)))
    return pieces


def _definite(t) -> bool:
    if t.pos_ == "PROPN" or t.ent_type_:
        return True
    return any(c.dep_ in ("det", "poss") and c.lower_ not in ("a", "an", "some", "any", "no", "each", "every")
               for c in t.children)


def _copula(t) -> str:
    """'is', 'are', 'was' or 'were' for an apposition on t, after the tense of its clause."""
    v = t
    while v.pos_ not in ("VERB", "AUX") and v.head.i != v.i:
        v = v.head
    past = v.tag_ == "VBD" or any(c.dep_ in AUX and c.tag_ == "VBD" for c in v.children)
    plural = t.tag_ in ("NNS", "NNPS") or any(c.dep_ == "conj" for c in t.children)
    return ("were" if plural else "was") if past else ("are" if plural else "is")


def _comma_before(t) -> bool:
    j = t.left_edge.i - 1
    if j < t.sent.start:
        return False
    tok = t.doc[j]
    return tok.text == "," or (tok.text in ("–", "—") and bool(t.doc[j - 1].whitespace_) and bool(tok.whitespace_))


def _remove(host: Piece, ids: set[int], doc) -> None:
    """Take tokens (and the commas around them) out of a host piece."""
    lo, hi = min(ids), max(ids)
    extra = set()
    if lo - 1 >= 0 and doc[lo - 1].text in (",", "–", "—"):
        extra.add(lo - 1)
    if hi + 1 < len(doc) and doc[hi + 1].text in (",", "–", "—") and (lo - 1) in extra:
        extra.add(hi + 1)
    keep = [i for i in host.own if i not in ids and i not in extra]
    host.own = _edges(keep, doc) if keep else keep


_NUMERIC = {"DATE", "TIME", "CARDINAL", "QUANTITY", "PERCENT", "MONEY", "ORDINAL"}
_APPOS_OPENERS = {"i.e.", "e.g.", "namely", "ie", "eg"}
# "He was born in Dunmere, the son of a miller": a kinship noun after a place describes the clause's subject,
# not the place
_KIN = {"son", "daughter", "child", "wife", "husband", "widow", "widower", "brother", "sister", "father", "mother",
        "grandson", "granddaughter", "nephew", "niece", "cousin", "heir", "stepson", "stepdaughter"}


def _adjacent(t, c, anchor: list[int]) -> bool:
    """The apposition c follows the anchor's own words directly (", " between): no long-distance misparse."""
    return bool(anchor) and max(anchor) == c.left_edge.i - 2


def _appositive(t, c, own: set[int]) -> bool:
    if not (c.dep_ == "appos" and c.i > t.i and c.i in own and c.pos_ == "NOUN" and _comma_before(c)):
        return False
    if c.ent_type_ in ("GPE", "LOC") or c.ent_type_ in _NUMERIC or t.ent_type_ in _NUMERIC or t.like_num:
        return False
    where = t.dep_ == "pobj" and t.head.lower_ in ("in", "at", "near", "from")  # a place the clause happens at
    if c.lemma_.lower() in _KIN and (t.ent_type_ in ("GPE", "LOC", "FAC") or where):
        return False
    if where and any(x.tag_ == "PRP$" for x in c.children):
        return False  # "lent to an exhibition in Tallow, its only journey abroad": the lending's, not Tallow's
    if _in_brackets(c) or not _definite(t) or t.dep_ == "appos" or any(x.dep_ == "conj" for x in t.children):
        return False
    return not any(x.tag_ in ("WDT", "WP", "WP$") and x.dep_ in ("pobj", "poss") for x in c.subtree)


def _between_owner(t):
    """The noun a "between X and Y" phrase describes, when t is X: a relative clause the parser hung on X or Y
    describes that noun ("the ferry between Velmora and Holmstad, which carries ..."); None otherwise."""
    prep = t.head
    if t.dep_ != "pobj" or prep.lower_ != "between" or prep.head.pos_ not in ("NOUN", "PROPN"):
        return None
    return prep.head if _definite(prep.head) else None


def _extract(host: Piece, doc, copula_subj: dict[int, list[int]]) -> list[Piece]:
    """Appositions and relative clauses inside a host piece become pieces of their own."""
    out: list[Piece] = []
    own = set(host.own)
    for i in list(host.own):
        t = doc[i]
        if i not in own or t.pos_ not in ("NOUN", "PROPN"):
            continue
        for c in t.children:
            if c.i not in own:
                continue
            if _appositive(t, c, own):
                anchor = core(t, conj=False)
                ids = _subtree(c) & own
                if not _adjacent(t, c, anchor) or len(ids) < 2:
                    continue
                _remove(host, ids, doc)
                own = set(host.own)
                body = _edges(sorted(ids), doc)
                while body and doc[body[0]].lower_ in _APPOS_OPENERS:
                    body.pop(0)
                out.append(Piece("apposition", body, list(anchor) + [_copula(t)], None, list(anchor)))
            elif c.dep_ == "relcl" and c.i > t.i:
                rel = _relative_pronoun(c)
                near = t
                for x in t.children:  # "Waal and Pannerdens Kanaal, which ...": the nearest noun is meant
                    if x.dep_ == "conj" and x.i < c.i and x.pos_ in ("NOUN", "PROPN"):
                        near = x
                antecedent = copula_subj.get(t.i) or (core(near, conj=False) if _definite(near) else None)
                owner = _between_owner(t)
                if owner is not None:  # "the ferry between Velmora and Holmstad, which carries ...": the ferry
                    skip = _subtree(c) | {x.i for x in doc[c.left_edge.i - 1:c.left_edge.i] if x.is_punct}
                    antecedent = [j for j in core(owner, conj=False) if j not in skip]
                    while antecedent and doc[antecedent[-1]].is_punct:
                        antecedent.pop()
                if rel is None or not antecedent:
                    continue
                whose = rel.tag_ == "WP$"
                if rel.dep_ not in ("nsubj", "nsubjpass") and not whose:
                    continue
                ids = _subtree(c) & own
                if _comma_before(c) and not _in_brackets(c):
                    _remove(host, ids, doc)
                    own = set(host.own)
                    lead: list[Segment] = list(antecedent) + (["'s"] if whose else [])
                    body = _edges([j for j in ids if j != rel.i], doc)
                    out.extend(_split_verbs(c, lead, list(antecedent), set(body), "relative"))
                elif not whose and any(x.dep_ == "conj" and x.pos_ in ("VERB", "AUX") for x in c.children):
                    # restrictive, but carrying several facts: the first verb stays, the others split off
                    lead = list(antecedent)
                    body = [j for j in ids if j != rel.i]
                    parts = _split_verbs(c, lead, list(antecedent), set(body), "relative")
                    if len(parts) > 1:
                        moved = set().union(*(set(p.own) for p in parts[1:]))
                        host.own = _edges([j for j in host.own if j not in moved], doc)
                        own = set(host.own)
                        out.extend(parts[1:])
    return out


def _in_brackets(t) -> bool:
    depth = 0
    for x in t.doc[t.sent.start:t.i]:
        if x.text in ("(", "["):
            depth += 1
        elif x.text in (")", "]"):
            depth = max(0, depth - 1)
    return depth > 0


def _relative_pronoun(c):
    for x in c.subtree:
        if x.tag_ in ("WDT", "WP", "WP$") and x.lower_ in ("which", "who", "whom", "whose", "that"):
            return x
        if x.i > c.i:
            break
    return None


def _contrasts(v, allowed: set[int]) -> list:
    return [c for c in v.children if c.dep_ == "advcl" and c.i in allowed and _has_subject(c)
            and any(m.dep_ == "mark" and m.lower_ in _CONTRAST for m in c.children)]


def split_sentence(sent) -> list[Piece]:
    """The pieces of one parsed sentence, in source order; [whole sentence] when nothing splits."""
    doc = sent.doc
    root = sent.root
    all_ids = [t.i for t in sent]
    whole = Piece("sentence", _edges(all_ids, doc), [], root.i, core(subject_of(root)) if subject_of(root) else [])
    if root.pos_ not in ("VERB", "AUX"):
        return [whole]
    gapped = _gapped(sent)
    if gapped is not None:
        return gapped
    allowed = set(all_ids)
    pieces: list[Piece] = []
    for c in _contrasts(root, allowed):  # "..., while the Nederrijn carries two ninths"
        ids = _subtree(c)
        allowed -= ids
        body = _edges([j for j in ids if not (doc[j].dep_ == "mark" and doc[j].head.i == c.i)], doc)
        s = next(x for x in c.children if x.dep_ in SUBJ)
        pieces.extend(_split_verbs(c, None, core(s), set(body), "contrast"))
    subj = subject_of(root)
    pieces[:0] = _split_verbs(root, None, core(subj) if subj is not None else [], allowed, "sentence")
    copula_subj = {}
    for p in pieces:  # "X is a river that ..., which ...": the relative clause is about X
        v = doc[p.verb] if p.verb is not None else None
        if v is not None and v.lemma_ == "be" and p.subj:
            for a in v.children:
                if a.dep_ == "attr":
                    copula_subj[a.i] = p.subj
    out: list[Piece] = []
    for p in pieces:
        out.append(p)
        out.extend(_extract(p, doc, {k: v for k, v in copula_subj.items() if v}))
    out = [p for p in out if p.own]
    if len(out) > 1 and (not all(_valid(p, doc) for p in out) or _cuts_a_word(out, sent)):
        return [whole]
    return sorted(out, key=lambda p: p.own[0])


def _gapped(sent) -> list[Piece] | None:
    """A second clause that leaves out the first one's verb (gapping): "The Arnsmark delegation was led by Edvard Holm;
    the Veldtish one by Maren of Tiel." -> the first clause, and "the Veldtish delegation was led by Maren of Tiel"
    ("one" and a bare possessive, "the women's", take the first subject's noun). None when the sentence is not
    of that form: one ";" (or ", and" / ", while"), no verb after it, and after the second subject the preposition
    that follows the first clause's verb."""
    doc = sent.doc
    end = sent.end - 1 if doc[sent.end - 1].is_punct else sent.end
    seps = [t for t in sent if t.i < end and (t.text == ";" or (t.text == "," and t.i + 1 < end and doc[t.i + 1].lower_
                                                                 in ("and", "while", "whereas")))]
    if len(seps) != 1:
        return None
    s = seps[0]
    j = s.i + (2 if s.text == "," else 1)
    part2 = [doc[k] for k in range(j, end)]
    if len(part2) < 3 or any(t.pos_ in ("VERB", "AUX") for t in part2):
        return None
    adp = next((t for t in part2 if t.pos_ == "ADP"), None)
    root = sent.root
    if adp is None or adp.i == j or root.i >= s.i or root.pos_ != "VERB":
        return None
    subj = next((c for c in root.children if c.dep_ in SUBJ and c.i < root.i), None)
    p1 = next((c for c in root.children if c.dep_ in ("prep", "agent") and c.lower_ == adp.lower_
               and root.i < c.i < s.i), None)
    if subj is None or p1 is None:
        return None
    # "was led", "studied" (the parser may hang the second subject on the first: its subtree then runs past the verb)
    group = list(range(max(x.i for x in subj.subtree if x.i < root.i) + 1, p1.i))
    if not group or len(group) > 4 or any(doc[k].is_punct or doc[k].pos_ not in ("VERB", "AUX", "ADV", "PART")
                                          for k in group):
        return None
    np2: list[Segment] = []
    for t in part2:
        if t.i >= adp.i:
            break
        np2.append(subj.text if t.lower_ == "one" and t.pos_ in ("NOUN", "NUM", "PRON") else t.i)
    if isinstance(np2[-1], int) and doc[np2[-1]].tag_ == "POS":
        np2.append(subj.text)  # "the women's" -> "the women's race"
    rest = [t.i for t in part2 if t.i >= adp.i]
    first = Piece("sentence", _edges([k for k in range(sent.start, s.i)], doc), [], root.i, core(subj))
    second = Piece("clause", [t.i for t in part2], [], root.i, [x for x in np2 if isinstance(x, int)],
                   order=np2 + group + rest)
    return [first, second]


def _valid(p: Piece, doc) -> bool:
    words = [i for i in p.own if not doc[i].is_punct]
    if p.kind == "apposition":
        return len(words) >= 1
    if len(words) < 2:
        return False
    return any(doc[i].pos_ in ("VERB", "AUX") and not _name_particle(doc[i]) for i in p.own)


def _cuts_a_word(pieces: list[Piece], sent) -> bool:
    """A split must not separate 're' from '-occupied': glued tokens stay in one piece."""
    where: dict[int, int] = {}
    for n, p in enumerate(pieces):
        for i in p.own:
            where.setdefault(i, n)
    doc = sent.doc
    for t in sent[:-1]:
        nxt = doc[t.i + 1]
        if t.whitespace_ or (t.is_punct and t.text != "-") or (nxt.is_punct and nxt.text != "-"):
            continue
        if where.get(t.i) != where.get(nxt.i) and where.get(t.i) is not None and where.get(nxt.i) is not None:
            return True
        if (where.get(t.i) is None) != (where.get(nxt.i) is None):
            return True
    return False


def render(segments: list[Segment], doc, replace: Callable[[int], str | None] | None = None) -> str:
    """Text of a piece: tokens keep their source spacing; literals and jumps get one space.

    replace(i) may return a string to put in place of token i ('' drops it), or None to keep it.
    """
    parts: list[str] = []
    prev: Segment | None = None
    for seg in segments:
        if isinstance(seg, str):
            word, tok = seg, None
        else:
            tok = doc[seg]
            r = replace(seg) if replace else None
            if r == "":
                continue
            word = tok.text if r is None else r
        if parts:
            if isinstance(prev, int) and tok is not None and tok.i == prev + 1:
                parts.append(doc[prev].whitespace_)
            elif word in _CLOSE or word.startswith("'") or word.startswith("’"):
                pass
            elif isinstance(prev, int) and doc[prev].text in _OPEN:
                pass
            else:
                parts.append(" ")
        parts.append(word)
        prev = seg
    return "".join(parts)


def _balance(s: str) -> str:
    """Drop brackets left without a partner by a split; quotes too when their count is odd."""
    drop: set[int] = set()
    for o, c in (("(", ")"), ("[", "]")):
        stack: list[int] = []
        for k, ch in enumerate(s):
            if ch == o:
                stack.append(k)
            elif ch == c:
                if stack:
                    stack.pop()
                else:
                    drop.add(k)
        drop.update(stack)
    s = "".join(ch for k, ch in enumerate(s) if k not in drop)
    if s.count('"') % 2:
        k = s.rfind('"') if not s.startswith('"') else 0
        s = s[:k] + s[k + 1:]
    return s


def finish(text: str) -> str:
    """Tidy a rendered piece into a sentence: balanced brackets, one final stop, capital first letter."""
    s = " ".join(_balance(text).split())
    s = re.sub(r"\s+([,.;:)\]])", r"\1", s)
    s = re.sub(r"([(\[])\s+", r"\1", s)
    s = re.sub(r"[,;:]+(?=[.!?]$)", "", s)
    s = re.sub(r",\s*,", ",", s)
    s = s.strip(" ,;:–—-")
    if s and s.rstrip("\"')”’")[-1:] not in (".", "!", "?"):
        s += "."
    if s and s[0].islower():
        s = s[0].upper() + s[1:]
    return s
