"""Synthesise training questions from an atom's statement, with spaCy and no language model.

Each question asks for one part of the statement (a named entity, number or noun phrase),
by putting a wh-word in its place or asking about it directly. The answer taught is the
whole statement, so a paraphrased question about any part of it recalls the fact.
"""

from __future__ import annotations

WH = {
    "PERSON": "who", "NORP": "what", "FAC": "where", "ORG": "what organisation", "GPE": "where", "LOC": "where",
    "PRODUCT": "what", "EVENT": "what event", "WORK_OF_ART": "what work", "LAW": "what", "LANGUAGE": "what language",
    "DATE": "when", "TIME": "when", "PERCENT": "what percentage", "MONEY": "how much", "QUANTITY": "how much",
    "ORDINAL": "which", "CARDINAL": "how many",
}


def _spans(doc):
    seen = set()
    for ent in doc.ents:
        seen.add((ent.start_char, ent.end_char))
        yield ent.start_char, ent.end_char, WH.get(ent.label_, "what"), ent.text
    for nc in doc.noun_chunks:
        if any(s <= nc.start_char < e or s < nc.end_char <= e for s, e in seen):
            continue
        if nc.root.pos_ == "PRON" or len(nc.text) < 3:
            continue
        yield nc.start_char, nc.end_char, "what", nc.text


def questions(text: str, nlp, n: int) -> list[str]:
    """Up to n distinct questions about `text` (deterministic order: subject first)."""
    doc = nlp(text)
    body = text.rstrip(" .!;:")
    out: list[str] = []
    about: list[str] = []
    for s, e, wh, span in _spans(doc):
        if e > len(body):
            e = len(body)
        if s == 0:
            q = wh[0].upper() + wh[1:] + body[e:] + "?"
        else:
            q = body[:s] + wh + body[e:] + "?"
        out.append(q)
        about.append(span)
    # Direct questions about the entities and phrases of the statement.
    for span in about:
        out.append(f"What do you know about {span}?")
    if not out:
        out.append(f"{body}?")
    uniq = []
    for q in out:
        q = " ".join(q.split())
        if q not in uniq:
            uniq.append(q)
    # Interleave wh-questions and "about" questions so a small n still covers both kinds.
    k = len(uniq) - len(set(f"What do you know about {a}?" for a in about))
    wh_q, ab_q = uniq[:max(k, 0)], uniq[max(k, 0):]
    mixed = []
    for i in range(max(len(wh_q), len(ab_q))):
        if i < len(wh_q):
            mixed.append(wh_q[i])
        if i < len(ab_q):
            mixed.append(ab_q[i])
    return mixed[:n]


_DO = {"VBD": "did", "VBZ": "does", "VBP": "do"}
_TIME_WORDS = {"today", "now", "currently", "nowadays", "later", "then", "yesterday"}
# "X is known for Y", "X was used as Y", "X was named after Y": asked as "What is X known for?"
_ABOUT_VERBS = {"know", "use", "note", "name", "intend", "design", "famed", "remember", "regard", "see"}


def _words(doc, lo: int, hi: int) -> str:
    """Text of tokens lo..hi-1 with their own spacing, trimmed."""
    return "".join(t.text_with_ws for t in doc[lo:hi]).strip()


def fronted(text: str, nlp) -> list[str]:
    """Up to two questions in the order people ask them, for routing keys: the wh-word first and the verb
    inverted ("Veldt received the town of Lessing." -> "What did Veldt receive?"; "X was founded in 1921 by Y."
    -> "Who was X founded by?"; "The course is known for being flat." -> "What is the course known for?").
    Modifiers before the subject move to the end ("Under the treaty, Veldt received ..." -> "What did Veldt
    receive under the treaty?"). [] when the parse gives no such form (no verb root, no subject before it, ...).
    No inflection is needed: do-support takes the lemma, passives keep their participle."""
    doc = nlp(text)
    first = next(doc.sents)  # "X is known for being flat: the highest point ...": the first clause's question
    root = first.root
    subj = next((c for c in root.children if c.dep_ in ("nsubj", "nsubjpass") and c.i < root.i), None)
    if root.pos_ != "VERB" or subj is None or subj.right_edge.i >= root.i or subj.pos_ == "PRON":
        return []
    s_lo, s_hi = subj.left_edge.i, subj.right_edge.i + 1
    while s_lo < subj.i and (doc[s_lo].pos_ in ("NUM", "ADV", "ADP") or doc[s_lo].lower_ in _TIME_WORDS):
        s_lo += 1  # "By 1935 Kessler ...", "Today Kessler ...": the parser hangs them on the name
    s_text = _words(doc, s_lo, s_hi)
    if doc[s_lo].pos_ in ("DET", "NOUN", "ADJ", "NUM"):
        s_text = s_text[:1].lower() + s_text[1:]  # "Males guard the eggs." -> "What do males guard?"
    if s_lo > 6:
        return []  # a long opening clause ("First run in 1977 with 212 starters, ...") reads badly moved to the end
    pre = _words(doc, 0, s_lo).rstrip(" ,")
    pre = (" " + pre[:1].lower() + pre[1:]) if pre and doc[0].pos_ != "PROPN" else (" " + pre if pre else "")
    end = first.end - 1 if doc[first.end - 1].is_punct else first.end
    aux = [c for c in root.children if c.dep_ in ("aux", "auxpass") and c.i < root.i]
    out: list[str] = []
    if subj.dep_ == "nsubj" and not aux and root.tag_ in _DO:
        obj = next((c for c in root.children if c.dep_ == "dobj"), None)
        if obj is not None:
            rest = _words(doc, obj.right_edge.i + 1, end)
            rest = " " + rest if rest and not rest.startswith(",") else ""
            count = next((c for c in obj.children if c.dep_ == "nummod" and c.like_num), None)
            wh = f"How many {obj.text}" if count is not None and obj.tag_ == "NNS" else "What"
            out.append(f"{wh} {_DO[root.tag_]} {s_text} {root.lemma_}{rest}{pre}?")
    elif subj.dep_ == "nsubjpass" and len(aux) == 1:
        a = aux[0].text.lower()
        agent = next((c for c in root.children if c.dep_ == "agent"), None)
        by = next((x for x in agent.children if x.dep_ == "pobj"), None) if agent is not None else None
        if by is not None:
            wh = "Who" if any(x.pos_ == "PROPN" or x.ent_type_ in ("PERSON", "ORG", "NORP") for x in by.subtree) else "What"
            out.append(f"{wh} {a} {s_text} {root.text} by{pre}?")
        prep = next((c for c in root.children if c.dep_ == "prep" and c.i > root.i
                     and any(x.dep_ in ("pobj", "pcomp") for x in c.children)), None)
        if prep is not None and prep.lower_ in ("for", "as", "after") and root.lemma_ in _ABOUT_VERBS:
            out.append(f"What {a} {s_text} {root.text} {prep.text}{pre}?")
    return [" ".join(q.split()) for q in out[:2]]


def key_questions(text: str, nlp, trained: list[str]) -> list[str]:
    """The questions an atom's routing key is made of: the ones it was trained on, then `fronted` ones not among
    them. Stored as the atom's "questions"; the first len(trained) are the training questions."""
    return trained + [q for q in fronted(text, nlp) if q not in trained]
