"""Which names and numbers of a generated answer its sources do not contain.

An atom's micro-LoRA reproduces its statement closely but not always exactly: a 135M base can answer
"Dr. Elena Salk" from an atom that says "Dr. Irena Salk". `unsupported` lists the answer's numbers and
capitalised words (not at a sentence start) that appear in none of the texts given (the question and
the atoms that fired), so that `ask` can say where an answer strays from its sources. It checks the
surface form only: a paraphrase ("three" for "3") counts as unsupported, a wrong fact stated with the
sources' own words does not.
"""

from __future__ import annotations

import re

from doc2atom.atomizer import _ABBREV

_TOKEN = re.compile(r"(?:[A-Z]\.){2,}|\d[\d,.]*\d|\d|[^\W\d_][\w'’-]*")  # "U.S." is one token
_POSSESSIVE = re.compile(r"['’]s?$")


def _norm(tok: str) -> str:
    if tok[0].isdigit():
        return tok.replace(",", "")
    return _POSSESSIVE.sub("", tok).lower()


def _abbreviation(before: str) -> bool:
    """The text ends with an abbreviation's full stop ("Dr.", "St."), which does not end a sentence."""
    m = re.search(r"(?<![\w.])([\w.]+)\.$", before)
    return m is not None and m.group(1).lower() in _ABBREV


def unsupported(answer: str, sources: list[str]) -> list[str]:
    """The answer's numbers and mid-sentence capitalised words found in none of `sources`, in answer order."""
    known = {_norm(m.group()) for s in sources for m in _TOKEN.finditer(s)}
    out: list[str] = []
    for m in _TOKEN.finditer(answer):
        tok = m.group()
        before = answer[:m.start()].rstrip(" \t\"'“‘(")
        starts_sentence = not before or before[-1] in "!?:\n" or (
            before[-1] == "." and not _abbreviation(before))
        if not (tok[0].isdigit() or (tok[0].isupper() and not starts_sentence)):
            continue
        if tok == "I" or _norm(tok) in known:
            continue
        word = _POSSESSIVE.sub("", tok)
        if word not in out:
            out.append(word)
    return out


_WORD = re.compile(r"\S+")
_LETTER_LOOP = re.compile(r"([A-Za-z]{2,8}?)\1{3,}")  # a piece of 2-8 letters, four times in a row


def repetition_start(answer: str, min_repeats: int = 4, max_words: int = 4) -> int | None:
    """Where a decoding loop starts: the offset of the second copy of the first word or phrase (1 to max_words
    words) that the answer repeats at least min_repeats times in a row ("General Brenn Brenn Brenn Brenn ..." ->
    the offset of the second "Brenn"); None when the answer has no such loop. Greedy decoding of a small model falls
    into such loops, mostly when several atoms are composed."""
    words = [(m.start(), m.group().strip(".,;:!?\"'").lower()) for m in _WORD.finditer(answer)]
    best = None
    for n in range(1, max_words + 1):
        for i in range(0, len(words) - n * min_repeats + 1):
            unit = [w for _, w in words[i:i + n]]
            if not all(unit):
                continue
            k = 1
            while i + (k + 1) * n <= len(words) and [w for _, w in words[i + k * n:i + (k + 1) * n]] == unit:
                k += 1
            if k >= min_repeats:
                if best is None or i < best[0]:
                    best = (i, words[i + n][0])
                break
    # a loop inside a word: "Harrowgategategategate" (a piece of 2-8 letters four times in a row) -> the offset of
    # the piece's second copy
    m = _LETTER_LOOP.search(answer)
    if m is not None and (best is None or m.start() + len(m.group(1)) < best[1]):
        return m.start() + len(m.group(1))
    return None if best is None else best[1]


__all__ = ["repetition_start", "unsupported"]
