"""Hybrid fusion (index/fusion.py): pure functions over (id, score) rankings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distill.config import IndexSettings
from index.fusion import Fusion, min_max, rrf_fuse, score_fusion, weighted_rrf

DENSE = [("a", 0.91), ("b", 0.90), ("c", 0.40)]
BM25 = [("c", 12.0), ("d", 11.0), ("a", 2.0)]


def test_weighted_rrf_at_one_half_is_classic_rrf() -> None:
    classic = rrf_fuse([[d for d, _ in DENSE], [d for d, _ in BM25]], k=10, rrf_k=60)
    weighted = weighted_rrf(DENSE, BM25, k=10, dense_weight=0.5, rrf_k=60)
    assert [d for d, _ in weighted] == [d for d, _ in classic]
    assert [s for _, s in weighted] == pytest.approx([s for _, s in classic])


def test_score_fusion_at_the_ends_is_one_retriever() -> None:
    assert [d for d, _ in score_fusion(DENSE, BM25, k=2, dense_weight=1.0)] == ["a", "b"]
    assert [d for d, _ in score_fusion(DENSE, BM25, k=2, dense_weight=0.0)] == ["c", "d"]


def test_score_fusion_keeps_score_gaps_that_ranks_lose() -> None:
    # b is a near-tie with a in dense but absent from BM25; d is BM25's close second
    fused = dict(score_fusion(DENSE, BM25, k=10, dense_weight=0.5))
    assert fused["a"] == pytest.approx(0.5 * 1.0 + 0.5 * 0.0)
    assert fused["b"] == pytest.approx(0.5 * (0.90 - 0.40) / 0.51)
    assert fused["d"] == pytest.approx(0.5 * 0.9)
    assert set(fused) == {"a", "b", "c", "d"}


def test_min_max_edge_cases() -> None:
    assert min_max([]) == {}
    assert min_max([("x", 3.0), ("y", 3.0)]) == {"x": 1.0, "y": 1.0}


def test_ties_are_broken_by_id_so_results_are_stable() -> None:
    fused = score_fusion([("b", 1.0), ("a", 1.0)], [], k=2, dense_weight=0.5)
    assert [d for d, _ in fused] == ["a", "b"]


def test_fusion_follows_the_settings() -> None:
    cfg = IndexSettings(fusion="rrf", dense_weight=0.3, rrf_k=10)
    fusion = Fusion.from_settings(cfg)
    assert (fusion.method, fusion.dense_weight, fusion.rrf_k) == ("rrf", 0.3, 10)
    assert fusion.fuse(DENSE, BM25, k=4) == weighted_rrf(DENSE, BM25, k=4, dense_weight=0.3, rrf_k=10)
    assert Fusion.from_settings(IndexSettings()).method == "score"
    with pytest.raises(ValueError):
        IndexSettings(dense_weight=1.5)


ranking = st.lists(st.tuples(st.sampled_from("abcdefgh"), st.floats(-5, 5, allow_nan=False)), max_size=8,
                   unique_by=lambda t: t[0])


@given(ranking, ranking, st.floats(0, 1), st.sampled_from(["rrf", "score"]), st.integers(1, 10))
def test_fused_lists_hold_only_retrieved_ids_best_first(dense, bm25, weight, method, k) -> None:
    fused = Fusion(method=method, dense_weight=weight).fuse(dense, bm25, k=k)
    ids = [d for d, _ in fused]
    assert len(ids) == len(set(ids)) <= k
    assert set(ids) <= {d for d, _ in dense} | {d for d, _ in bm25}
    scores = [s for _, s in fused]
    assert scores == sorted(scores, reverse=True)
