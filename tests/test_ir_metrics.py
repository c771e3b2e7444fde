"""The retrieval benchmark's metric functions against hand-computed values."""

from __future__ import annotations

import math

import pytest

from benchmarks.ir_metrics import evaluate, mrr_at_k, ndcg_at_k, percentile, recall_at_k
from index.bm25 import top_positive
from index.jaccard import jaccard, rank, token_set
from index.fusion import rrf_fuse


def test_ndcg_binary_and_graded() -> None:
    qrels = {"a": 1, "b": 1}
    assert ndcg_at_k(["a", "b", "x"], qrels, 10) == pytest.approx(1.0)
    # relevant at ranks 2 and 3: (1/log2(3) + 1/log2(4)) / (1 + 1/log2(3))
    expected = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(["x", "a", "b"], qrels, 10) == pytest.approx(expected)
    assert ndcg_at_k(["x", "y"], qrels, 10) == 0.0
    assert ndcg_at_k(["x", "a"], qrels, 1) == 0.0
    graded = {"a": 2, "b": 1}
    assert ndcg_at_k(["b", "a"], graded, 2) == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    # a duplicated id earns nothing the second time
    assert ndcg_at_k(["a", "a"], qrels, 2) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_recall_mrr_and_mean() -> None:
    qrels = {"a": 1, "b": 1, "c": 0}
    assert recall_at_k(["c", "a", "z"], qrels, 100) == 0.5
    assert recall_at_k(["a", "z", "b"], qrels, 2) == 0.5
    assert mrr_at_k(["z", "c", "b"], qrels, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(["z"] * 10 + ["a"], qrels, 10) == 0.0
    means = evaluate({"q1": ["a", "b"], "q2": ["x"]}, {"q1": {"a": 1, "b": 1}, "q2": {"y": 1}, "q3": {"z": 1}})
    assert means["ndcg@10"] == pytest.approx(1 / 3)
    assert means["recall@100"] == pytest.approx(1 / 3)
    assert means["mrr@10"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        evaluate({}, {"q": {"a": 0}})


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([3.0], 95) == 3.0
    assert math.isnan(percentile([], 50))


def test_rrf_fusion_and_top_positive() -> None:
    fused = rrf_fuse([["a", "b", "c"], ["b", "d"]], k=3, rrf_k=60)
    assert [d for d, _ in fused] == ["b", "a", "d"]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)
    import numpy as np

    assert top_positive(np.array([0.0, 2.0, 1.0, 2.0, -1.0]), 3) == [(1, 2.0), (3, 2.0), (2, 1.0)]
    assert top_positive(np.zeros(4), 2) == []


def test_jaccard_baseline() -> None:
    assert token_set("Fix the Flaky test, fix it!") == frozenset({"fix", "the", "flaky", "test", "it"})
    assert jaccard(frozenset({"a", "b"}), frozenset({"b", "c"})) == pytest.approx(1 / 3)
    docs = [token_set("red apple"), token_set("green apple pie"), token_set("blue sky")]
    assert rank("apple pie", docs, 5) == [(1, pytest.approx(2 / 3)), (0, pytest.approx(1 / 3))]
    assert rank("apple pie", docs, 5, allowed=[True, False, True]) == [(0, pytest.approx(1 / 3))]
