"""Choose which atoms answer a question, with what weight, or refuse.

First version: dense scores from the key index; refuse when the best score is under
`threshold`; keep the atoms within `margin` of the best, at most `top_k`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class RouterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(default=1, ge=1, le=64, description="Most atoms composed for one question")
    candidates: int = Field(default=16, ge=1, le=1024, description="Atoms fetched from the index before selection")
    threshold: float = Field(default=0.45, ge=-1.0, le=1.0, description="Refuse when the best key score is below this")
    margin: float = Field(default=0.08, ge=0.0, le=2.0, description="Keep atoms scoring within this of the best")


@dataclass
class Route:
    ids: list[int]  # atom rowids, best first
    scores: list[float]
    weights: list[float]
    refused: bool
    best: float


def select(scores, ids, cfg: RouterConfig, top_k: int | None = None) -> Route:
    """Selection for one question from index hits (scores, ids sorted best first; id -1 = none)."""
    k = top_k or cfg.top_k
    hits = [(float(s), int(i)) for s, i in zip(scores, ids) if int(i) >= 0]
    best = hits[0][0] if hits else float("-inf")
    if not hits or best < cfg.threshold:
        return Route([], [], [], True, best)
    keep = [(s, i) for s, i in hits if s >= cfg.threshold and s >= best - cfg.margin][:k]
    return Route([i for _, i in keep], [s for s, _ in keep], [1.0] * len(keep), False, best)
