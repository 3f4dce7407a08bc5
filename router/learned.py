"""The learned router: a logistic reranker over (question, candidate atom) features.

Semantics: p(atom answers question) = sigmoid(w . f(question, atom) + b), where f mixes the
dense key score, BM25 evidence and name/number matches (FEATURES below). It is fitted on the
questions compilation synthesised for each atom (label 1 for the atom, 0 for every other
candidate the hybrid retrieval returned) and on out-of-scope questions (all candidates 0),
so one probability both orders the candidates and says whether to refuse.

Fitting is L2-regularised towards DEFAULT_WEIGHTS, a hand-set prior that leans on the dense
score (chosen on data/sample, the development set; ROUTER_NOTES.md). The pull is strong on
purpose: fitted freely, the weights learn that synthesised questions copy their atom's words
and lean on BM25, and then refuse half of the real paraphrased questions of data/sample
(10/23 routed, against 23/23 with the prior). Ten features and a Newton solver: fitting
takes milliseconds, and the weights are readable in router.json.
This module must never touch the store or the indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURES = (
    "dense",        # cosine(question, atom key vector)
    "dense_gap",    # dense - best dense among the candidates (<= 0)
    "cover",        # IDF-weighted share of the question's content words found in the atom's key text
    "cover_gap",    # cover - best cover among the candidates (<= 0)
    "bm25_rel",     # BM25 / best BM25 among the candidates (0..1)
    "rrf",          # reciprocal-rank fusion of the dense and BM25 ranks, scaled to 0..1
    "name_miss",    # share of the question's names and numbers that the atom lacks (0 when it has none)
    "name_oov",     # share of the question's names and numbers that no atom in the KB has
    "word_oov",     # IDF-weighted share of the question's other content words that no atom has
    "dense_top",    # best dense among the candidates (question-level)
    # near-miss signals (router/nearmiss.py): what a question edited from an answerable one changes
    "name_miss_kb",  # share of the question's names and numbers the atom lacks but another atom has
    "neg_mismatch",  # 1 when exactly one of question and atom is negated
    "antonym",       # 1 when the question has a word the atom lacks and the atom has its antonym
)
# Features added after the first release: weights saved without them read as 0 (the scores they gave).
LATE_FEATURES = ("name_miss_kb", "neg_mismatch", "antonym")
# The prior (hand-set, see the module docstring); bias last. The near-miss signals start mildly negative
# and are learned from the near misses calibration makes.
DEFAULT_WEIGHTS = (6.0, 8.0, 2.0, 3.0, 1.0, 1.0, -2.0, -3.0, -1.0, 4.0, 0.0, 0.0, 0.0, -7.0)


@dataclass
class Candidates:
    """One question's candidate atoms and their raw signals, before the learned score."""

    ids: np.ndarray  # (m,) int64 atom rowids
    dense: np.ndarray  # (m,) float32 cosine to the key vector
    bm25: np.ndarray  # (m,) float32 BM25 score (0 when no content word matches)
    cover: np.ndarray  # (m,) float32 IDF-weighted share of question words the atom has
    name_miss: np.ndarray  # (m,) float32
    dense_rank: np.ndarray  # (m,) int, 1-based; 0 = not in the dense list
    lex_rank: np.ndarray  # (m,) int, 1-based; 0 = not in the BM25 list
    name_oov: float
    word_oov: float
    # near-miss signals per candidate (m,) float32; None = 0 (callers that predate them)
    name_miss_kb: np.ndarray | None = None
    neg_mismatch: np.ndarray | None = None
    antonym: np.ndarray | None = None


def rrf(dense_rank: np.ndarray, lex_rank: np.ndarray, k: int = 60) -> np.ndarray:
    """Reciprocal-rank fusion (Cormack et al. 2009): sum over lists of 1/(k + rank), scaled so rank 1 in both = 1.

    The documented fusion rule; it orders candidates before any learned model exists and is
    one of the learned model's features after."""
    d = np.where(dense_rank > 0, 1.0 / (k + np.maximum(dense_rank, 1)), 0.0)
    lx = np.where(lex_rank > 0, 1.0 / (k + np.maximum(lex_rank, 1)), 0.0)
    return ((d + lx) * (k + 1) / 2).astype(np.float32)


def features(c: Candidates, rrf_k: int = 60) -> np.ndarray:
    """(m, len(FEATURES)) float32 feature rows for one question's candidates, in FEATURES order."""
    m = len(c.ids)
    if m == 0:
        return np.zeros((0, len(FEATURES)), dtype=np.float32)
    top_bm25 = float(c.bm25.max())
    z = np.zeros(m, np.float32)
    late = [z if (v := getattr(c, name)) is None else v for name in LATE_FEATURES]
    f = np.stack([
        c.dense,
        c.dense - c.dense.max(),
        c.cover,
        c.cover - c.cover.max(),
        c.bm25 / top_bm25 if top_bm25 > 0 else np.zeros(m, np.float32),
        rrf(c.dense_rank, c.lex_rank, rrf_k),
        c.name_miss,
        np.full(m, c.name_oov, np.float32),
        np.full(m, c.word_oov, np.float32),
        np.full(m, float(c.dense.max()), np.float32),
        *late,
    ], axis=1)
    return f.astype(np.float32)


class LearnedRouter:
    """w (len(FEATURES),) and b; `prob(F)` for feature rows F (m, len(FEATURES))."""

    def __init__(self, weights=DEFAULT_WEIGHTS):
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (len(FEATURES) + 1,):
            raise ValueError(f"weights must have {len(FEATURES) + 1} values ({', '.join(FEATURES)}, bias), "
                             f"got {weights.shape[0]}")
        self.w = weights

    def logit(self, F: np.ndarray) -> np.ndarray:
        return F.astype(np.float64) @ self.w[:-1] + self.w[-1]

    def prob(self, F: np.ndarray) -> np.ndarray:
        return (1.0 / (1.0 + np.exp(-np.clip(self.logit(F), -40, 40)))).astype(np.float32)

    def as_dict(self) -> dict:
        return {name: round(float(v), 4) for name, v in zip((*FEATURES, "bias"), self.w)}

    @classmethod
    def from_dict(cls, d: dict) -> "LearnedRouter":
        missing = [k for k in (*FEATURES, "bias") if k not in d and k not in LATE_FEATURES]
        if missing:
            raise ValueError(f"learned router weights lack {', '.join(missing)}; re-run calibrate")
        return cls([d.get(k, 0.0) for k in (*FEATURES, "bias")])

    @classmethod
    def fit(cls, F: np.ndarray, y: np.ndarray, groups: np.ndarray, prior=DEFAULT_WEIGHTS, l2: float = 0.005,
            iters: int = 50, late_l2: float | None = None) -> "LearnedRouter":
        """Weighted logistic regression by Newton's method, L2 towards `prior`.

        F (n, len(FEATURES)); y (n,) 0/1; groups (n,) question index of each row. Every question
        weighs the same (its rows share weight 1), and questions with an answer weigh as much in
        total as those without, so many candidates or many negatives do not swamp the rest.
        l2 is per question: the pull towards the prior grows with the data, so the prior keeps
        the same say in a KB of 20 atoms and one of 20,000. late_l2 (default l2 / 10): the pull on the
        near-miss features (LATE_FEATURES), whose prior is 0 (no hand-set belief): the data decide them."""
        F = np.asarray(F, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        X = np.concatenate([F, np.ones((len(F), 1))], axis=1)
        _, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
        sw = 1.0 / counts[inv]
        has_pos = np.zeros(counts.shape[0])
        np.add.at(has_pos, inv, y)
        pos_q = has_pos[inv] > 0
        for mask in (pos_q, ~pos_q):  # balance answerable against unanswerable questions
            if mask.any():
                sw[mask] *= 0.5 * len(counts) / max(1e-9, sw[mask].sum())
        w0 = np.asarray(prior, dtype=np.float64)
        w = w0.copy()
        reg = np.full(len(w), l2 * len(counts))
        late = [FEATURES.index(n) for n in LATE_FEATURES]
        reg[late] = (l2 / 10 if late_l2 is None else late_l2) * len(counts)
        for _ in range(iters):
            p = 1.0 / (1.0 + np.exp(-np.clip(X @ w, -40, 40)))
            g = X.T @ (sw * (p - y)) + reg * (w - w0)
            H = (X * (sw * p * (1 - p))[:, None]).T @ X + np.diag(reg)
            step = np.linalg.solve(H, g)
            w -= step
            if np.abs(step).max() < 1e-6:
                break
        return cls(w)
