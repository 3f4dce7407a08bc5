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
