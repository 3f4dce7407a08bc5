"""Answer extraction: the short answer inside a whole-sentence reply, for scoring.

SmolLM2-135M answers in whole sentences ("The Rhine flows into the North Sea."), and atoms
are trained to say their whole statement; SQuAD F1/EM punish every extra word. This
post-step keeps the part of the reply that answers: the phrase (named entity or noun
phrase, preferring the kind the wh-word asks for) that is not made of the question's own
words. It is a function of (question, reply) alone, so it treats every mode identically;
eval reports its scores beside the raw ones, never instead of them.
"""

from __future__ import annotations

import re
from functools import lru_cache

from serving.evaluate.scoring import normalize

_STOP = set("""a an the of in on at to for from by with and or is are was were be been being it its this that
these those as which who whom whose what when where why how does do did has have had not no into onto than
then there their they them he she his her i you we our your can could would should will may might also
about over under between during after before up out so such very""".split())

# spaCy entity labels that answer each kind of question, best first.
_WANT = {
    "who": ("PERSON", "ORG", "NORP"), "whom": ("PERSON", "ORG"), "whose": ("PERSON", "ORG"),
    "where": ("GPE", "LOC", "FAC", "ORG"), "when": ("DATE", "TIME"), "what year": ("DATE",),
    "how many": ("CARDINAL", "QUANTITY"), "how much": ("MONEY", "QUANTITY", "PERCENT", "CARDINAL"),
    "how long": ("QUANTITY", "DATE", "TIME", "CARDINAL"), "how far": ("QUANTITY", "CARDINAL"),
    "how big": ("QUANTITY", "CARDINAL"), "how large": ("QUANTITY", "CARDINAL"), "what percentage": ("PERCENT",),
    "which country": ("GPE",), "what country": ("GPE",), "which city": ("GPE",), "what city": ("GPE",),
    "what language": ("LANGUAGE", "NORP"),
}
_WORD = re.compile(r"\w+", re.UNICODE)


@lru_cache(maxsize=1)
def _nlp():
    from doc2atom.models import load_spacy

    return load_spacy()


def _stem(w: str) -> str:
    return w[:5] if len(w) > 5 else w


def _wanted(question: str) -> tuple[str, ...]:
    q = question.lower()
    for key in sorted(_WANT, key=len, reverse=True):
        if re.search(rf"\b{key}\b", q):
            return _WANT[key]
    return ()


def short_answer(question: str, reply: str, nlp=None) -> str:
    """The short answer in `reply` to `question` (the reply itself when it is already short)."""
    text = reply.strip().split("\n")[0].strip()
    if not text:
        return ""
    if len(_WORD.findall(text)) <= 3:
        return text.rstrip(" .")
    qstems = {_stem(w) for w in normalize(question).split()}

    def novel(words: list[str]) -> int:
        return sum(1 for w in words if w not in _STOP and _stem(w) not in qstems)

    doc = (nlp or _nlp())(text)
    first = next(iter(doc.sents), doc)  # the first sentence answers; the rest is elaboration
    want = _wanted(question)
    cands = []  # (score, start, span text)
    for ent in first.ents:
        words = normalize(ent.text).split()
        if novel(words):
            bonus = 2 if ent.label_ in want else 1
            cands.append((bonus + novel(words) / len(words), -ent.start_char, ent.text))
    for nc in first.noun_chunks:
        if nc.root.pos_ == "PRON":
            continue
        words = normalize(nc.text).split()
        if words and novel(words):
            cands.append((novel(words) / len(words), -nc.start_char, nc.text))
    if cands:
        return max(cands)[2].strip(" .,;:")
    # No phrase: the longest run of words that are not the question's own.
    words = first.text.split()
    best, run = [], []
    for w in words + [""]:
        n = normalize(w)
        if n and n not in _STOP and _stem(n) not in qstems:
            run.append(w)
        else:
            if len(run) > len(best):
                best = run
            run = []
    return " ".join(best).strip(" .,;:") if best else text.rstrip(" .")


__all__ = ["short_answer"]
