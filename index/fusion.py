"""Hybrid fusion of a dense and a BM25 ranking: pure functions over (id, score) lists, best first.

Equal-weight reciprocal-rank fusion lets the weaker retriever drag the stronger one down (on a
BEIR subset hybrid scored below dense alone). Two fusions take a weight instead:

- `rrf`: score(d) = 2·w/(k + rank_dense) + 2·(1 - w)/(k + rank_bm25); w = 0.5 is classic RRF.
- `score`: each list's scores min-max normalised over its own top `depth` (a document absent from
  a list gets 0 there), then w·dense + (1 - w)·bm25. Scores keep how far apart two hits are,
  which ranks lose.

The default method and weight are chosen on data by benchmarks/fusion.py (dev splits of SciFact and
of a PubMedQA-built BEIR set; results on their test splits in benchmarks/results/fusion.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from distill.config import IndexSettings

FusionMethod = Literal["rrf", "score"]
Ranked = Sequence[tuple[str, float]]


class Fusion(BaseModel):
    """How hybrid search merges its two rankings."""

    model_config = ConfigDict(frozen=True)

    method: FusionMethod = "score"
    dense_weight: float = Field(0.5, ge=0.0, le=1.0)
    rrf_k: int = Field(60, ge=1)

    @classmethod
    def from_settings(cls, cfg: IndexSettings) -> Fusion:
        return cls(method=cfg.fusion, dense_weight=cfg.dense_weight, rrf_k=cfg.rrf_k)

    def fuse(self, dense: Ranked, lexical: Ranked, *, k: int) -> list[tuple[str, float]]:
        if self.method == "rrf":
            return weighted_rrf(dense, lexical, k=k, dense_weight=self.dense_weight, rrf_k=self.rrf_k)
        return score_fusion(dense, lexical, k=k, dense_weight=self.dense_weight)


def _top(scores: dict[str, float], k: int) -> list[tuple[str, float]]:
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]  # ties by id: stable


def weighted_rrf(dense: Ranked, lexical: Ranked, *, k: int, dense_weight: float, rrf_k: int) -> list[tuple[str, float]]:
    scores: dict[str, float] = {}
    for ranking, weight in ((dense, 2.0 * dense_weight), (lexical, 2.0 * (1.0 - dense_weight))):
        for rank, (doc_id, _) in enumerate(ranking, start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + weight / (rrf_k + rank)
    return _top(scores, k)


def min_max(ranked: Ranked) -> dict[str, float]:
    """Scores scaled to [0, 1] within the list; a list of equal scores maps to 1."""
    if not ranked:
        return {}
    values = [s for _, s in ranked]
    lo, hi = min(values), max(values)
    span = hi - lo
    return {d: (s - lo) / span if span > 0 else 1.0 for d, s in ranked}


def score_fusion(dense: Ranked, lexical: Ranked, *, k: int, dense_weight: float) -> list[tuple[str, float]]:
    scores: dict[str, float] = {}
    for ranking, weight in ((dense, dense_weight), (lexical, 1.0 - dense_weight)):
        for doc_id, s in min_max(ranking).items():
            scores[doc_id] = scores.get(doc_id, 0.0) + weight * s
    return _top(scores, k)


def rrf_fuse(rankings: Sequence[Sequence[str]], *, k: int, rrf_k: int) -> list[tuple[str, float]]:
    """Classic equal-weight reciprocal-rank fusion over any number of id lists."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, doc_id in enumerate(ranking, start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + 1.0 / (rrf_k + rank)
    return _top(scores, k)
