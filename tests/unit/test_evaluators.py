"""Evaluators driven by a one-hot fake encoder, BM25 on a toy corpus, STS and the chart."""

from __future__ import annotations

from math import log2

import numpy as np
import pytest
from scipy.stats import spearmanr

from flagops.data.formats import EvalSet, Passage, StsPair, read_json
from flagops.evaluation import (
    RETRIEVAL_METRICS,
    RetrievalEvaluator,
    bm25_search,
    chart_rows,
    sts_spearman,
    write_chart,
    write_chart_data,
)


class FakeEncoder:
    """Looks each text up in a table of hand-made vectors and records how it was called."""

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors
        self.calls: list[tuple[tuple[str, ...], bool, int, str | None]] = []

    def encode(self, texts, *, is_query=False, batch_size=32, progress=None):
        self.calls.append((tuple(texts), is_query, batch_size, progress))
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)


# Passages are one-hot (d1 = e0 ... d4 = e3), so a query's inner product with passage di is
# simply component i of the query vector: each query vector *is* its score table.
CORPUS = [
    Passage("d1", "Alpha", "first passage"),  # encoded as "Alpha\nfirst passage"
    Passage("d2", "", "second passage"),
    Passage("d3", "", "third passage"),
    Passage("d4", "Delta", "fourth passage"),
]
PASSAGE_VECTORS = {
    "Alpha\nfirst passage": [1, 0, 0, 0],
    "second passage": [0, 1, 0, 0],
    "third passage": [0, 0, 1, 0],
    "Delta\nfourth passage": [0, 0, 0, 1],
}
QUERY_VECTORS = {
    "find one": [1.0, 0.3, 0.2, 0.1],  # ranking d1 d2 d3 d4
    "find two": [0.1, 0.6, 0.8, 0.0],  # ranking d3 d2 d1 d4
    "find many": [0.1, 0.2, 0.3, 0.9],  # ranking d4 d3 d2 d1
}
EVAL_SET = EvalSet(
    corpus=CORPUS,
    queries={"q1": "find one", "q2": "find two", "q3": "find many"},
    qrels={"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d2": 2, "d4": 1}},
)


def test_retrieval_evaluator_one_hot_by_hand():
    encoder = FakeEncoder({**PASSAGE_VECTORS, **QUERY_VECTORS})
    evaluator = RetrievalEvaluator(EVAL_SET, batch_size=5)
    got = evaluator(encoder, prefix="candidate")

    # q1: d1 (rel 1) at rank 1                       -> all metrics 1
    # q2: d2 (rel 1) at rank 2                       -> nDCG 1/log2(3), RR 1/2, AP 1/2
    # q3: d4 (rel 1) rank 1, d2 (rel 2) rank 3       -> DCG 1 + 2/log2(4) = 2,
    #     IDCG 2 + 1/log2(3); RR 1; AP (1/1 + 2/3) / 2
    ndcg = [1.0, 1 / log2(3), (1 + 2 / log2(4)) / (2 + 1 / log2(3))]
    rr = [1.0, 1 / 2, 1.0]
    ap = [1.0, 1 / 2, (1 / 1 + 2 / 3) / 2]
    want = {
        "candidate/ndcg@10": sum(ndcg) / 3,
        "candidate/mrr@10": sum(rr) / 3,
        "candidate/recall@10": 1.0,  # every relevant doc is in the top 4
        "candidate/recall@100": 1.0,
        "candidate/map": sum(ap) / 3,
    }
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert evaluator.primary_metric == "ndcg@10"

    # Passages carry their title, queries are flagged as queries, batch size passes through.
    (docs, docs_is_query, docs_batch, docs_label), (queries, q_is_query, _, q_label) = encoder.calls
    assert docs == tuple(PASSAGE_VECTORS) and docs_is_query is False and docs_batch == 5
    assert queries == tuple(QUERY_VECTORS) and q_is_query is True
    assert docs_label == "candidate passages" and q_label == "candidate queries"


def test_retrieval_evaluator_top_k_limits_recall():
    encoder = FakeEncoder({**PASSAGE_VECTORS, **QUERY_VECTORS})
    got = RetrievalEvaluator(EVAL_SET, top_k=1)(encoder)
    # Only rank 1 is kept: q1 finds d1, q2 finds nothing relevant, q3 finds d4 of {d2, d4}.
    assert set(got) == set(RETRIEVAL_METRICS)
    assert got["recall@10"] == pytest.approx((1 + 0 + 1 / 2) / 3)
    assert got["mrr@10"] == pytest.approx((1 + 0 + 1) / 3)


def test_retrieval_evaluator_rejects_unknown_primary_metric():
    with pytest.raises(ValueError, match="primary_metric 'ndcg@5'"):
        RetrievalEvaluator(EVAL_SET, primary_metric="ndcg@5")


BM25_CORPUS = [
    Passage("solar", "", "Solar panels convert sunlight into electricity with photovoltaic cells."),
    Passage("bread", "", "Knead the dough, let it rise, then bake the bread in a hot oven."),
    Passage("tides", "Ocean tides", "The moon's gravity pulls the oceans."),  # the match is in the title
    Passage("python", "", "Python lists grow dynamically and support slicing."),
]


def test_bm25_ranks_the_matching_passage_first():
    run = bm25_search(
        BM25_CORPUS,
        {"q1": "how do photovoltaic solar panels work", "q2": "what causes tides", "q3": "zebra quantum"},
        top_k=10,
    )
    assert max(run["q1"], key=run["q1"].get) == "solar"
    assert max(run["q2"], key=run["q2"].get) == "tides"
    assert run["q3"] == {}  # no shared term: nothing retrieved rather than an arbitrary order
    assert all(score > 0 for docs in run.values() for score in docs.values())


def test_bm25_top_k_caps_results():
    run = bm25_search(BM25_CORPUS, {"q": "the bread oven lists sunlight moon"}, top_k=2)
    assert len(run["q"]) == 2


STS_VECTORS = {
    "a": [1.0, 0.0],
    "a again": [2.0, 0.0],  # cos(a, a again) = 1
    "b": [0.0, 1.0],  # cos(a, b) = 0
    "ab": [1.0, 1.0],  # cos(a, ab) = 1/sqrt(2)
    "not a": [-1.0, 0.0],  # cos(a, not a) = -1
}


def test_sts_spearman_by_hand_and_against_scipy():
    pairs = [
        StsPair("a", "a again", 5.0),
        StsPair("a", "b", 3.0),
        StsPair("a", "ab", 1.0),
        StsPair("a", "not a", 0.0),
    ]
    got = sts_spearman(FakeEncoder(STS_VECTORS), pairs)
    # cosines 1, 0, 0.707, -1 rank 4 2 3 1; gold ranks 4 3 2 1; sum d^2 = 0 + 1 + 1 + 0 = 2
    # rho = 1 - 6 * 2 / (4 * (4^2 - 1)) = 0.8
    assert got == pytest.approx(0.8)
    cosines = [1.0, 0.0, 1 / np.sqrt(2), -1.0]
    assert got == pytest.approx(spearmanr(cosines, [5.0, 3.0, 1.0, 0.0]).statistic)


def test_sts_needs_rankable_gold_scores():
    encoder = FakeEncoder(STS_VECTORS)
    with pytest.raises(ValueError, match="at least two pairs"):
        sts_spearman(encoder, [StsPair("a", "b", 1.0)])
    with pytest.raises(ValueError, match="all 2.0"):
        sts_spearman(encoder, [StsPair("a", "b", 2.0), StsPair("a", "ab", 2.0)])


def test_sts_constant_model_scores_zero():
    pairs = [StsPair("a", "b", 1.0), StsPair("ab", "b", 2.0)]
    constant = FakeEncoder(dict.fromkeys(STS_VECTORS, [1.0, 1.0]))
    assert sts_spearman(constant, pairs) == 0.0


def test_chart_rows_and_files(tmp_path):
    metrics = {
        "candidate/ndcg@10": 0.5,
        "candidate/mrr@10": 0.4,
        "candidate/recall@100": 0.9,
        "candidate/map": 0.3,  # not charted
        "bm25/ndcg@10": 0.2,
        "bm25/mrr@10": 0.1,
        "bm25/recall@100": 0.6,
    }
    rows = chart_rows(metrics)
    assert rows[0] == {"system": "bm25", "metric": "ndcg@10", "label": "ndcg@10 bm25", "value": 0.2}  # baseline first
    assert [(r["system"], r["metric"]) for r in rows] == [
        (s, m) for s in ("bm25", "candidate") for m in ("ndcg@10", "mrr@10", "recall@100")
    ]
    write_chart(tmp_path / "chart.png", rows)
    write_chart_data(tmp_path / "chart.json", rows)
    assert (tmp_path / "chart.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert read_json(tmp_path / "chart.json") == rows
    first = (tmp_path / "chart.png").read_bytes()
    write_chart(tmp_path / "chart.png", rows)
    assert (tmp_path / "chart.png").read_bytes() == first  # a re-run writes the same bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chart.json", "chart.png"]  # no temp leftovers
