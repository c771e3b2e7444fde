"""Retrieval metrics (BEIR conventions, no pytrec_eval): nDCG@k, recall@k, MRR@k, and their means.

`ranking` is a list of doc ids best first; `qrels` maps doc id -> graded relevance (> 0 relevant).
nDCG uses linear gain (rel / log2(rank + 1)), as trec_eval and BEIR do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def dcg(gains: Sequence[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at_k(ranking: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    ideal = dcg(sorted((r for r in qrels.values() if r > 0), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    seen: set[str] = set()
    gains = []
    for doc in ranking[:k]:
        gains.append(float(qrels.get(doc, 0)) if doc not in seen else 0.0)
        seen.add(doc)
    return dcg(gains) / ideal


def recall_at_k(ranking: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    relevant = {d for d, r in qrels.items() if r > 0}
    if not relevant:
        return 0.0
    return len(relevant & set(ranking[:k])) / len(relevant)


def mrr_at_k(ranking: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    for i, doc in enumerate(ranking[:k], start=1):
        if qrels.get(doc, 0) > 0:
            return 1.0 / i
    return 0.0


def evaluate(
    runs: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]], *, ndcg_k: int = 10, recall_k: int = 100, mrr_k: int = 10
) -> dict[str, float]:
    """Mean metrics over every judged query; a judged query with no run counts as zeros."""
    judged = [q for q, rels in qrels.items() if any(r > 0 for r in rels.values())]
    if not judged:
        raise ValueError("no judged queries")
    totals = {f"ndcg@{ndcg_k}": 0.0, f"recall@{recall_k}": 0.0, f"mrr@{mrr_k}": 0.0}
    for q in judged:
        ranking = runs.get(q, [])
        totals[f"ndcg@{ndcg_k}"] += ndcg_at_k(ranking, qrels[q], ndcg_k)
        totals[f"recall@{recall_k}"] += recall_at_k(ranking, qrels[q], recall_k)
        totals[f"mrr@{mrr_k}"] += mrr_at_k(ranking, qrels[q], mrr_k)
    return {name: value / len(judged) for name, value in totals.items()}


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation): the value a user actually waited."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]
