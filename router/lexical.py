"""The lexical signal: BM25 over each atom's key text, with bm25s (never a hand-written BM25).

Names, numbers and rare words that a dense sentence embedding blurs ("1843", "Oren Pask",
"thessaloop") are exactly what BM25 weights most. Text is lower-cased, thousands separators
are dropped ("4,200" -> "4200", so both spellings meet), single characters are kept (digits
matter), English stop words and question words are removed, and words are Snowball-stemmed
(PyStemmer), so "founded"/"found", "invented"/"invention" meet.

bm25s has no incremental update (its scores depend on corpus-wide document frequencies), so
the index is rebuilt from the store whenever atoms change; `Router` defers that to the next
query or flush so that a batch of commits pays it once. Saved under `lexical/` in the KB
folder (bm25s's own format plus the rowid of every document), swapped in by renames; like
keys.faiss it is derived data and is rebuilt when its ids disagree with the store's.
This module must never write to the store.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np

LEXICAL_DIR = "lexical"
_QUESTION_WORDS = ("what", "which", "who", "whom", "whose", "where", "when", "why", "how", "many", "much", "do",
                   "does", "did", "you", "know", "about", "has", "have", "had", "were", "been", "its", "his", "her",
                   "can", "could", "would", "should", "some", "any", "one", "from", "than", "also", "other")
_TOKEN = r"(?u)\b\w+\b"
_THOUSANDS = re.compile(r"(?<=\d)[,\u202f\u00a0](?=\d{3}\b)")
_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")


@lru_cache(maxsize=1)
def stopwords() -> tuple[str, ...]:
    from bm25s.stopwords import STOPWORDS_EN

    return tuple(sorted(set(STOPWORDS_EN) | set(_QUESTION_WORDS)))


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def normalize(text: str) -> str:
    return _THOUSANDS.sub("", text)


def tokenize(texts: list[str]) -> list[list[str]]:
    """Stemmed content tokens of each text (the same analysis for atoms and questions)."""
    import bm25s

    if not texts:
        return []
    out = bm25s.tokenize([normalize(t) for t in texts], token_pattern=_TOKEN, stopwords=list(stopwords()),
                         stemmer=_stemmer(), return_ids=False, show_progress=False, allow_empty=False)
    return [list(t) for t in out]


def special_tokens(text: str) -> list[str]:
    """Stemmed tokens of the words that name things: numbers, and capitalised words past the first word.

    "Who founded the town where the Korrin Bridge opened in 1957?" -> ["korrin", "bridg", "1957"]."""
    words = _WORD.findall(normalize(text))
    keep = [w for i, w in enumerate(words)
            if any(c.isdigit() for c in w) or (i > 0 and w[:1].isupper() and w.lower() not in stopwords())]
    return sorted({t for toks in tokenize([" ".join(keep)]) for t in toks}) if keep else []


class LexicalIndex:
    """BM25 (Lucene variant, k1=1.5, b=0.75) over atom key texts, addressed by atom rowid."""

    def __init__(self):
        self.bm25 = None
        self.rowids = np.zeros(0, dtype=np.int64)  # sorted; document i of bm25s is atom rowids[i]
        self.df = np.zeros(0, dtype=np.int64)  # documents containing each vocabulary id

    @property
    def n(self) -> int:
        return len(self.rowids)

    @classmethod
    def build(cls, rowids: np.ndarray, texts: list[str]) -> "LexicalIndex":
        import bm25s

        idx = cls()
        order = np.argsort(np.asarray(rowids, dtype=np.int64), kind="stable")
        idx.rowids = np.asarray(rowids, dtype=np.int64)[order]
        if len(order):
            toks = tokenize([texts[i] for i in order])
            idx.bm25 = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
            idx.bm25.index(toks, show_progress=False)
            idx._derive()
        return idx

    def _derive(self) -> None:
        self.df = np.diff(np.asarray(self.bm25.scores["indptr"])).astype(np.int64)

    # -- term statistics -------------------------------------------------------------------

    def idf(self, tokens: list[str]) -> np.ndarray:
        """Lucene IDF per token, log(1 + (N - df + 0.5) / (df + 0.5)); a token no atom has gets the maximum."""
        n = self.n
        df = np.array([self.df[v] if (v := self._vid(t)) is not None else 0 for t in tokens], dtype=np.float64)
        return np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32) if len(tokens) else np.zeros(0, np.float32)

    def known(self, tokens: list[str]) -> np.ndarray:
        return np.array([self._vid(t) is not None for t in tokens], dtype=bool)

    def _vid(self, token: str):
        if self.bm25 is None:
            return None
        v = self.bm25.vocab_dict.get(token)
        return v if v is not None and self.df[v] > 0 else None

    def term_scores(self, tokens: list[str], rowids: np.ndarray) -> np.ndarray:
        """(len(tokens), len(rowids)) float32: each token's BM25 contribution to each atom, 0 where absent."""
        out = np.zeros((len(tokens), len(rowids)), dtype=np.float32)
        if self.bm25 is None or not len(rowids) or not tokens:
            return out
        pos = np.searchsorted(self.rowids, rowids)
        pos = np.where((pos < self.n) & (self.rowids[np.minimum(pos, self.n - 1)] == rowids), pos, -1)
        sc = self.bm25.scores
        for i, t in enumerate(tokens):
            v = self._vid(t)
            if v is None:
                continue
            lo, hi = int(sc["indptr"][v]), int(sc["indptr"][v + 1])
            docs = np.asarray(sc["indices"][lo:hi])
            hit = np.isin(pos, docs) & (pos >= 0)
            if hit.any():
                order = np.argsort(docs, kind="stable")
                at = order[np.searchsorted(docs[order], pos[hit])]
                out[i, hit] = np.asarray(sc["data"][lo:hi])[at]
        return out

    # -- search ----------------------------------------------------------------------------

    def search(self, tokens: list[list[str]], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k atoms per tokenized query: (scores (n, k) float32, rowids (n, k) int64; -1 / 0 where none)."""
        nq = len(tokens)
        k = max(1, k)
        scores = np.zeros((nq, k), dtype=np.float32)
        ids = np.full((nq, k), -1, dtype=np.int64)
        if self.bm25 is None:
            return scores, ids
        kk = min(k, self.n)
        for i, toks in enumerate(tokens):
            toks = [t for t in toks if self._vid(t) is not None]
            if not toks:
                continue
            s = self.bm25.get_scores(toks)
            top = np.argpartition(-s, kk - 1)[:kk] if kk < len(s) else np.arange(len(s))
            top = top[np.argsort(-s[top], kind="stable")]
            top = top[s[top] > 0]
            scores[i, :len(top)] = s[top]
            ids[i, :len(top)] = self.rowids[top]
        return scores, ids

    # -- persistence -----------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Write `lexical/` by building it beside and swapping it in with renames."""
        folder = Path(folder)
        tmp = folder / f".{LEXICAL_DIR}.tmp{os.getpid()}"
        old = folder / f".{LEXICAL_DIR}.old{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            if self.bm25 is not None:
                self.bm25.save(str(tmp / "bm25s"))
            np.save(tmp / "rowids.npy", self.rowids)
            (tmp / "meta.json").write_text(json.dumps({"n": self.n, "format": "doc2atom-lexical/1"}))
            dest = folder / LEXICAL_DIR
            try:
                if dest.exists():
                    os.replace(dest, old)
                os.replace(tmp, dest)
            except OSError:
                pass  # another process swapped in its own copy meanwhile; `load` checks ids, so either is safe
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path) -> "LexicalIndex | None":
        """The saved index, or None when it is missing or unreadable."""
        import bm25s

        d = Path(folder) / LEXICAL_DIR
        try:
            idx = cls()
            idx.rowids = np.load(d / "rowids.npy")
            if idx.n:
                idx.bm25 = bm25s.BM25.load(str(d / "bm25s"), load_corpus=False, mmap=False)
                idx._derive()
            return idx
        except (OSError, ValueError, KeyError):
            return None
