"""The seed's retrieval baseline: Jaccard overlap of lower-cased word sets, kept for comparison."""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"[a-z0-9_]+")


def token_set(text: str) -> frozenset[str]:
    """Lower-cased alphanumeric words; no stemming, no stopwords (the baseline is deliberately plain)."""
    return frozenset(_WORD.findall(text.lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter) if inter else 0.0


def rank(
    query: str, doc_tokens: Sequence[frozenset[str]], k: int, *, allowed: Sequence[bool] | None = None
) -> list[tuple[int, float]]:
    """(position, score) of the k best positive overlaps, best first, ties by position."""
    q = token_set(query)
    if not q or k <= 0:
        return []
    scored = []
    for i, toks in enumerate(doc_tokens):
        if allowed is not None and not allowed[i]:
            continue
        s = jaccard(q, toks)
        if s > 0:
            scored.append((-s, i))
    scored.sort()
    return [(i, -s) for s, i in scored[:k]]
