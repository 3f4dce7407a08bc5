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


__all__ = ["unsupported"]
