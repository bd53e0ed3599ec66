"""retrieval_metrics against hand arithmetic; dense_search against brute force."""

from __future__ import annotations

from math import log2

import numpy as np
import pytest

from flagops.evaluation import retrieval
from flagops.evaluation.retrieval import RETRIEVAL_METRICS, cut_run, dense_search, prefixed, retrieval_metrics

# Five queries, each exercising one thing:
#   q1  graded relevance (d1=2, d2=1) and a judged non-relevant doc (d3=0) ranked first
#   q2  the one relevant doc at rank 1
#   q3  the first relevant doc at rank 12: inside Recall@100 and MAP, outside MRR@10 and nDCG@10
#   q4  no results at all (absent from the run)
#   q5  results, none relevant
QRELS = {
    "q1": {"d1": 2, "d2": 1, "d3": 0},
    "q2": {"d4": 1},
    "q3": {"d5": 1, "d6": 1},
    "q4": {"d7": 1},
    "q5": {"d8": 1},
}
FILLER = [f"x{i:02d}" for i in range(1, 12)]  # 11 non-relevant docs
RUN = {
    "q1": {"d3": 0.9, "d1": 0.8, "d9": 0.7, "d2": 0.6},  # ranks: d3 (0), d1 (2), d9 (-), d2 (1)
    "q2": {"d4": 5.0, "x01": 1.0},
    "q3": {**{doc: 2.0 - i / 100 for i, doc in enumerate(FILLER)}, "d5": 1.0},  # d5 at rank 12
    "q5": {"x01": 1.0},
    "not-judged": {"d1": 1.0},  # not in qrels: must be ignored
}


def hand_metrics() -> dict[str, float]:
    # q1: DCG@10 = 0/log2(2) + 2/log2(3) + 0/log2(4) + 1/log2(5)
    #     IDCG@10 = 2/log2(2) + 1/log2(3)     (ideal order d1, d2)
    dcg_q1 = 0 + 2 / log2(3) + 0 + 1 / log2(5)
    idcg_q1 = 2 / 1 + 1 / log2(3)
    ndcg = {"q1": dcg_q1 / idcg_q1, "q2": 1.0, "q3": 0.0, "q4": 0.0, "q5": 0.0}
    # first relevant doc: q1 rank 2, q2 rank 1, q3 rank 12 (> 10, so 0)
    mrr = {"q1": 1 / 2, "q2": 1.0, "q3": 0.0, "q4": 0.0, "q5": 0.0}
    # q1 finds both relevant docs in the top 4; q3 finds 1 of 2, at rank 12
    recall10 = {"q1": 2 / 2, "q2": 1.0, "q3": 0 / 2, "q4": 0.0, "q5": 0.0}
    recall100 = {"q1": 2 / 2, "q2": 1.0, "q3": 1 / 2, "q4": 0.0, "q5": 0.0}
    # AP = mean over relevant docs of precision at their rank (0 for those not retrieved)
    #   q1: relevant at ranks 2 and 4 -> (1/2 + 2/4) / 2
    #   q3: relevant at rank 12, the other never -> (1/12 + 0) / 2
    ap = {"q1": (1 / 2 + 2 / 4) / 2, "q2": 1.0, "q3": (1 / 12) / 2, "q4": 0.0, "q5": 0.0}
    mean = lambda per_query: sum(per_query.values()) / 5  # noqa: E731  (all five qrels queries)
    return {
        "ndcg@10": mean(ndcg),
        "mrr@10": mean(mrr),
        "recall@10": mean(recall10),
        "recall@100": mean(recall100),
        "map": mean(ap),
    }


def test_metrics_match_hand_computation():
    got = retrieval_metrics(QRELS, RUN)
    want = hand_metrics()
    assert list(got) == list(RETRIEVAL_METRICS)
    for name in RETRIEVAL_METRICS:
        assert got[name] == pytest.approx(want[name], abs=1e-9), name
    # Spot-check the arithmetic itself, so a wrong hand formula cannot hide.
    assert want["mrr@10"] == pytest.approx(0.3)
    assert want["recall@100"] == pytest.approx(0.5)
    assert want["ndcg@10"] == pytest.approx((1.69253607 / 2.63092975 + 1) / 5, abs=1e-8)


def test_mrr_is_cut_at_ten_but_map_is_not():
    # q3 alone: its only retrieved relevant doc sits at rank 12.
    got = retrieval_metrics({"q3": QRELS["q3"]}, {"q3": RUN["q3"]})
    assert got["mrr@10"] == 0.0
    assert got["map"] == pytest.approx(1 / 24)
    assert got["recall@100"] == pytest.approx(0.5)


def test_query_with_no_results_counts_as_zero():
    qrels = {"a": {"d1": 1}, "b": {"d2": 1}}
    alone = retrieval_metrics({"a": qrels["a"]}, {"a": {"d1": 1.0}})
    with_missing = retrieval_metrics(qrels, {"a": {"d1": 1.0}})
    with_empty = retrieval_metrics(qrels, {"a": {"d1": 1.0}, "b": {}})
    for name in RETRIEVAL_METRICS:
        assert alone[name] == 1.0
        assert with_missing[name] == pytest.approx(0.5)
        assert with_empty[name] == pytest.approx(0.5)


def test_only_zero_grades_means_nothing_is_relevant():
    got = retrieval_metrics({"a": {"d1": 0}}, {"a": {"d1": 1.0}})
    assert all(value == 0.0 for value in got.values())


def test_empty_qrels_is_an_error():
    with pytest.raises(ValueError, match="qrels is empty"):
        retrieval_metrics({}, {"a": {"d1": 1.0}})


def test_cut_run_orders_ties_like_trec_eval():
    run = {"q": {"a": 1.0, "b": 1.0, "c": 2.0, "d": 0.5}}
    assert list(cut_run(run, 3)["q"]) == ["c", "b", "a"]  # ties: larger doc id first


def test_prefixed():
    assert prefixed({"map": 0.5}, "bm25") == {"bm25/map": 0.5}
    assert prefixed({"map": 0.5}, "") == {"map": 0.5}


def brute_force(q: np.ndarray, d: np.ndarray, k: int) -> list[list[int]]:
    scores = q @ d.T
    return [sorted(range(d.shape[0]), key=lambda j: -scores[i, j])[:k] for i in range(q.shape[0])]


@pytest.mark.parametrize("block", [retrieval.SEARCH_BLOCK, 7, 1])  # 7 floats: one query per block
def test_dense_search_matches_brute_force(monkeypatch, block):
    monkeypatch.setattr(retrieval, "SEARCH_BLOCK", block)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((5, 8)).astype(np.float32)
    d = rng.standard_normal((20, 8)).astype(np.float32)
    qids = [f"q{i}" for i in range(5)]
    dids = [f"d{j}" for j in range(20)]
    run = dense_search(q, d, qids, dids, top_k=4)
    for i, expected in enumerate(brute_force(q, d, 4)):
        got = sorted(run[qids[i]].items(), key=lambda kv: -kv[1])
        assert [doc for doc, _ in got] == [dids[j] for j in expected]
        for doc, score in got:
            assert score == pytest.approx(float(q[i] @ d[int(doc[1:])]), abs=1e-5)


def test_dense_search_top_k_larger_than_corpus():
    q = np.eye(2, dtype=np.float32)
    run = dense_search(q, q, ["a", "b"], ["x", "y"], top_k=100)
    assert run == {"a": {"x": 1.0, "y": 0.0}, "b": {"x": 0.0, "y": 1.0}}


def test_dense_search_rejects_mismatched_ids():
    q = np.eye(2, dtype=np.float32)
    with pytest.raises(ValueError, match="ids and embeddings disagree"):
        dense_search(q, q, ["a"], ["x", "y"])
