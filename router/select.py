"""Router settings and decisions: which atoms answer a question, with what weight, or a refusal.

`RouterConfig` is validated once here. `Route` is what `Router.route` returns per question:
the atoms to compose (best first), their composition weights, the refusal flag, and per atom
the dense, lexical and learned scores that `ask --explain` shows. `select` is the first,
dense-only rule, kept for callers that hold raw index hits (no lexical or learned stage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RouterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(default=1, ge=1, le=64, description="Most atoms composed for one question (hop atoms excluded)")
    candidates: int = Field(default=16, ge=1, le=1024,
                            description="Atoms fetched from each of the dense and the BM25 index before reranking")
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0,
                                    description="Refuse when the best learned score is below this; None = the "
                                                "threshold calibrated for this knowledge base (router.json)")
    margin: float = Field(default=1.0, ge=0.0, le=2.0,
                          description="Keep further atoms only when their learned score is within this of the best")
    allow_base: bool = Field(default=False,
                             description="When nothing covers a question, let the base model answer instead of refusing")
    target_routed: float = Field(default=0.97, gt=0.5, lt=1.0,
                                 description="Calibration: share of held-out in-scope questions the threshold must route")
    multihop: bool = Field(default=True, description="Run a second retrieval round conditioned on the first atom")
    max_hop_atoms: int = Field(default=1, ge=0, le=4, description="Atoms a second round may add beyond top_k")
    gate: bool = Field(default=True,
                       description="Weigh atoms a request carries beside the routed ones (given by the caller) by "
                                   "their learned score for the question, and leave out those under the threshold")
    rrf_k: int = Field(default=60, ge=1, le=1000, description="Reciprocal-rank-fusion constant k in 1/(k + rank)")
    exact_max: int = Field(default=20_000, ge=1, description="Exact key search up to this many atoms, IVF beyond")
    approx: Literal["hnsw", "ivf"] = Field(default="hnsw", description="Approximate index beyond exact_max")
    nprobe: int = Field(default=32, ge=1, le=65536, description="IVF lists visited per query")
    ef_search: int = Field(default=256, ge=1, le=4096, description="HNSW candidates explored per query")

    @model_validator(mode="after")
    def _check(self):
        if self.threshold is not None and self.threshold > 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1] or None, got {self.threshold}")
        return self


@dataclass
class AtomScore:
    """Why one atom was chosen: the signals `ask --explain` prints."""

    id: int  # atom rowid
    dense: float  # cosine(question, key vector)
    lexical: float  # BM25 score of the atom's key text for the question
    cover: float  # IDF-weighted share of the question's content words in the atom
    learned: float  # learned router probability (the final score)
    weight: float  # composition weight
    hop: int = 1  # 1 = first retrieval round, 2 = found by the second (multi-hop) round


@dataclass
class Route:
    ids: list[int]  # atom rowids, best first (second-round atoms last)
    scores: list[float]  # final (learned) score per atom
    weights: list[float]  # composition weight per atom (best = 1.0)
    refused: bool  # no atom covers the question
    best: float  # best final score (the refusal statistic), -inf when the KB is empty
    use_base: bool = False  # refused, and the config allows the base model to answer instead
    threshold: float = 0.0  # the refusal threshold that was applied
    details: list[AtomScore] = field(default_factory=list)  # per atom in `ids`; the best candidate when refused


def select(scores, ids, cfg: RouterConfig, top_k: int | None = None, threshold: float = 0.45,
           margin: float = 0.08) -> Route:
    """Dense-only selection from raw index hits (scores, ids sorted best first; id -1 = none).

    Refuse below `threshold` (cosine); keep atoms within `margin` of the best, at most top_k."""
    k = top_k or cfg.top_k
    thr = cfg.threshold if cfg.threshold is not None else threshold
    hits = [(float(s), int(i)) for s, i in zip(scores, ids) if int(i) >= 0]
    best = hits[0][0] if hits else float("-inf")
    if not hits or best < thr:
        return Route([], [], [], True, best, use_base=cfg.allow_base, threshold=thr)
    keep = [(s, i) for s, i in hits if s >= thr and s >= best - margin][:k]
    return Route([i for _, i in keep], [s for s, _ in keep], [1.0] * len(keep), False, best, threshold=thr)
