"""The atom taxonomy: what each type's atoms look like, how the type is chosen, how its key is formed.

Types are chosen from spaCy's parse and entities of the piece that states the fact, first
match wins, in this order:

| type        | looks like                                                   | key head                      |
| ----------- | ------------------------------------------------------------ | ----------------------------- |
| definition  | "X is a/an N ...", "X is known as / called / means Y",       | "X: definition"               |
|             | or an apposition "X, a N," split off as "X is a N ..."       |                               |
| event       | a statement with a date or time ("in 1843", "in the 19th     | "X <verb>: <date>"            |
|             | century", "every October")                                   |                               |
| quantity    | a measure or count ("412 metres long", "4,200 people",       | "X <measure>: <quantity>"     |
|             | "2,900 m3/s", "70%")                                         |                               |
| relation    | a non-copular verb linking two named things ("Maud Ellery    | "X <verb> Y"                  |
|             | designed the Korrin Bridge")                                 |                               |
| attribute   | a property of one entity: "X is <adjective>", "X is the N",  | "X: <attribute>"              |
|             | "the N of X is Y", "X has Y"; table cells                    |                               |
| list_member | a markdown list item that is not a sentence, completed with  | "<list>: <item>"              |
|             | the line that introduces the list ("Exports include glass.") |                               |
| statement   | anything else (the fallback)                                 | "X <verb>"                    |

X is the piece's subject after resolution (so "It" never reaches a key). Every key is
"<context>; <key head>; <atom text>" where the context (heading or title) is left out when
the text already names it: the head puts the parts a question asks about first, the text
keeps every word a question may share with the fact.
This module must never render or rewrite atom text (atomizer.py and split.py do).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from doc2atom.schemas import ATOM_TYPES

TYPE_DOCS = {
    "definition": "what something is: 'X is a N ...', 'X is called Y'; key 'X: definition'",
    "event": "something that happened or happens at a date or time; key 'X <verb>: <date>'",
    "quantity": "a measure, amount or count; key 'X <measure>: <quantity>'",
    "relation": "a verb linking two named entities; key 'X <verb> Y'",
    "attribute": "a property of one entity ('X is deep', 'the capital of X is Y', table cells); key 'X: <attribute>'",
    "list_member": "one item of a list, completed with its introduction; key '<list>: <item>'",
    "statement": "fallback for any other single fact; key 'X <verb>'",
}
assert set(TYPE_DOCS) == set(ATOM_TYPES), "TYPE_DOCS must document every type of schemas.ATOM_TYPES"

_MEASURE = {"QUANTITY", "PERCENT", "MONEY"}
_NAMED = {"PERSON", "GPE", "LOC", "ORG", "FAC", "NORP", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW"}
_MONTHS = {"january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december"}
_DEFINING = {"call", "know", "name", "define", "mean", "refer", "denote", "term"}
_TIME_WORDS = {"century", "centuries", "decade", "millennium", "bc", "ad", "bce", "ce", "bp", "era", "age", "period"}


@dataclass
class Typed:
    type: str
    head: str  # the key head: what a question about this atom asks for


def _date_text(toks) -> str:
    """The date or time a piece mentions, if it looks like a real one (a year, a month, a century)."""
    spans: list[list] = []
    for t in toks:
        if t.ent_type_ in ("DATE", "TIME"):
            if spans and t.i == spans[-1][-1].i + 1 and t.ent_iob_ != "B":
                spans[-1].append(t)
            else:
                spans.append([t])
    for sp in spans:
        words = {t.lower_ for t in sp}
        if any(t.like_num or re.search(r"\d", t.text) for t in sp) or words & _MONTHS or words & _TIME_WORDS:
            return " ".join(t.text for t in sp)
    return ""


def _year_text(toks) -> str:
    """'in 1843' when the entity tagger missed the year."""
    for t in toks:
        if re.fullmatch(r"1\d{3}|20\d{2}", t.text) and t.i > 0 and t.doc[t.i - 1].lower_ in (
                "in", "since", "until", "by", "from", "before", "after", "of", "till"):
            return t.text
    return ""


def _quantity_text(toks) -> str:
    for t in toks:
        if t.ent_type_ in _MEASURE:
            sp = [x for x in toks if x.ent_type_ == t.ent_type_ and abs(x.i - t.i) < 6]
            return " ".join(x.text for x in sp)
    for t in toks:
        if t.ent_type_ == "CARDINAL" or (t.like_num and t.dep_ == "nummod"):
            if t.dep_ == "nummod" or t.head.pos_ == "NOUN":
                return f"{t.text} {t.head.text}" if t.head.i > t.i else t.text
    return ""


def _det(t) -> str:
    return next((c.lower_ for c in t.children if c.dep_ == "det"), "")


def _named(t) -> bool:
    return t.pos_ == "PROPN" or t.ent_type_ in _NAMED


def classify(doc, own: list[int], verb: int | None, kind: str, subject: str,
             named: Callable[[int], bool] | None = None) -> Typed:
    """Type and key head of one piece; `subject` is its resolved subject text, `named(i)` says
    whether token i names an entity after resolution (a pronoun standing for 'the Rhine' does)."""
    toks = [doc[i] for i in own]
    named = named or (lambda i: _named(doc[i]))
    subject = subject.strip() or "it"
    if kind == "apposition":
        head = next((t for t in toks if t.head.i not in own or t.head.i == t.i), toks[0])
        if _det(head) in ("a", "an") or (not _det(head) and head.tag_ == "NNS"):
            return Typed("definition", f"{subject}: definition")
        return Typed("attribute", f"{subject}: {head.lemma_}")
    v = doc[verb] if verb is not None else None
    if v is None:
        return Typed("statement", subject)
    kids = [c for c in v.children if c.i in set(own)]
    attr = next((c for c in kids if c.dep_ == "attr"), None)
    acomp = next((c for c in kids if c.dep_ == "acomp"), None)
    copular = v.lemma_ == "be" and (attr is not None or acomp is not None)
    subj_tok = next((c for c in v.children if c.dep_ in ("nsubj", "nsubjpass")), None)
    relational_subject = subj_tok is not None and any(c.dep_ == "prep" and c.lower_ == "of" for c in subj_tok.children)
    counted = attr is not None and (attr.ent_type_ in _MEASURE or any(
        c.dep_ == "nummod" or c.like_num for c in attr.children))  # "is about 12 million crowns"
    if copular and attr is not None and attr.pos_ == "NOUN" and not relational_subject and not counted and (
            _det(attr) in ("a", "an") or (not _det(attr) and attr.tag_ == "NNS")):
        return Typed("definition", f"{subject}: definition")
    if v.lemma_ in _DEFINING and (any(c.dep_ in ("oprd", "attr") for c in kids) or any(
            c.dep_ == "prep" and c.lower_ == "as" for c in kids)) and v.tag_ == "VBN":
        return Typed("definition", f"{subject}: definition")
    date = _date_text(toks) or _year_text(toks)
    if date:
        return Typed("event", f"{subject} {v.text}: {date}")
    qty = _quantity_text(toks)
    if qty:
        measure = acomp.text if acomp is not None else (attr.lemma_ if attr is not None else v.lemma_)
        return Typed("quantity", f"{subject} {measure}: {qty}")
    if copular or v.lemma_ == "have":
        what = acomp if acomp is not None else attr
        return Typed("attribute", f"{subject}: {what.text if what is not None else v.lemma_}")
    if v.lemma_ != "be":
        objs = [c for c in kids if c.dep_ in ("dobj", "attr", "oprd")]
        for p in (c for c in kids if c.dep_ in ("prep", "agent")):
            objs.extend(x for x in p.children if x.dep_ == "pobj")
        objs += [a for o in objs for a in o.children if a.dep_ == "appos"]  # "the musician Oren Pask"
        named_obj = next((o for o in objs if named(o.i) or _named(o)), None)
        if named_obj is not None and (subj_tok is not None or subject):
            drop = {y.i for c in named_obj.children if c.dep_ in ("prep", "relcl", "acl", "appos", "punct", "cc", "conj")
                    for y in c.subtree}
            obj = " ".join(x.text for x in named_obj.subtree if x.i not in drop and not x.is_punct)
            return Typed("relation", f"{subject} {v.lemma_} {obj}")
    return Typed("statement", f"{subject} {v.lemma_}")


def key_context(heading: str | None, title: str | None) -> list[str]:
    """What a key says of where its statement stands: the document's title, then the section's heading ("Orvanite",
    "Uses"). A heading alone ("Uses", "Terms", "Negotiations") does not say whose uses; the title alone is left when
    the heading repeats it."""
    out = [c for c in (title, heading) if c and c.strip()]
    if len(out) == 2 and out[0].lower() in out[1].lower():
        out = out[1:]
    return out


def make_key(head: str, text: str, context: str | list[str] | None) -> str:
    """'<context>; <head>; <text>', each part of the context left out when the text or head names it already."""
    parts = []
    for c in ([context] if isinstance(context, str) else context or []):
        if c and c.lower() not in text.lower() and c.lower() not in head.lower():
            parts.append(c)
    if head and head.lower() not in text.lower():
        parts.append(head)
    parts.append(text)
    return "; ".join(parts)
