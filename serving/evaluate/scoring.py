"""Answer scores: the official SQuAD normalisation, F1, exact match, containment accuracy,
and refusal rates.

`normalize`, `f1` and `exact` follow the SQuAD v1.1/v2.0 evaluation script exactly
(lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace; F1 over
bag-of-tokens overlap; the best score over the gold answers). `contains` is doc2atom's
`acc`: the normalised output contains a normalised gold answer as a whole-token sequence,
which credits a right answer said in a whole sentence. Pure functions, no models.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass, field

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize(s: str) -> str:
    """SQuAD answer normalisation: lowercase, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _f1_one(pred: str, gold: str) -> float:
    p, g = normalize(pred).split(), normalize(gold).split()
    if not p or not g:  # as the official script: both empty counts 1, one empty counts 0
        return float(p == g)
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def f1(pred: str, golds: list[str]) -> float:
    """Best token F1 of `pred` over the gold answers (0.0 with no gold answers)."""
    return max((_f1_one(pred, g) for g in golds), default=0.0)


def exact(pred: str, golds: list[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer."""
    p = normalize(pred)
    return float(any(p == normalize(g) for g in golds))


def contains(pred: str, golds: list[str]) -> float:
    """1.0 when a normalised gold answer occurs in the normalised prediction on token boundaries
    (so gold "10" is not found inside "100"). An empty gold never counts."""
    p = f" {normalize(pred)} "
    return float(any(normalize(g) and f" {normalize(g)} " in p for g in golds))


@dataclass
class Tally:
    """Running totals for one mode (or one question type within it)."""

    answerable: int = 0
    unanswerable: int = 0
    f1: float = 0.0
    em: float = 0.0
    acc: float = 0.0
    refused_answerable: int = 0  # false refusals
    refused_unanswerable: int = 0  # right refusals
    by_type: dict[str, "Tally"] = field(default_factory=dict)

    def add(self, pred: str, refused: bool, golds: list[str], impossible: bool, qtype: str | None = None) -> dict:
        """Score one prediction; a refusal counts as the empty answer. Returns its scores."""
        if impossible:
            self.unanswerable += 1
            self.refused_unanswerable += int(refused)
            s = {"refused": refused, "right_refusal": refused}
        else:
            text = "" if refused else pred
            s = {"refused": refused, "f1": f1(text, golds), "em": exact(text, golds), "acc": contains(text, golds)}
            self.answerable += 1
            self.refused_answerable += int(refused)
            self.f1 += s["f1"]
            self.em += s["em"]
            self.acc += s["acc"]
        if qtype:
            self.by_type.setdefault(qtype, Tally()).add(pred, refused, golds, impossible)
        return s

    def summary(self, digits: int = 4) -> dict:
        """The per-mode object of the eval JSON: scores in [0, 1]; None where there is nothing to score."""
        a, u = self.answerable, self.unanswerable

        def r(x):
            return None if x is None else round(x, digits)

        out = {"f1": r(self.f1 / a if a else None), "em": r(self.em / a if a else None),
               "acc": r(self.acc / a if a else None),
               "refusal_accuracy": r(self.refused_unanswerable / u if u else None),
               "false_refusal": r(self.refused_answerable / a if a else None),
               "answerable": a, "unanswerable": u}
        if self.by_type:
            out["by_type"] = {t: v.summary(digits) for t, v in sorted(self.by_type.items())}
        return out


__all__ = ["Tally", "contains", "exact", "f1", "normalize"]
