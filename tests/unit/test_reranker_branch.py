"""The reranker branch of the DAG: how a config wires it, the family projection the
register/promote/deploy steps read, the gate on reranked/ keys and the rerank stage's numbers."""

from __future__ import annotations

import pytest

from flagops import catalog
from flagops.config import ConfigError, load_config
from flagops.data.formats import EvalSet, Passage
from flagops.evaluation.rerank import layer_rows, rerank_metrics, rerank_run
from flagops.evaluation.retrieval import retrieval_metrics
from flagops.registry import families
from flagops.registry.promotion import decide

# --------------------------------------------------------------------------- wiring


def edges(profile: str, *overrides: str) -> set[tuple[str, str]]:
    return catalog.pipeline(load_config(profile, list(overrides))).edges()


def test_without_a_reranker_the_dag_is_the_embedder_loop():
    names = catalog.pipeline(load_config("tiny")).names
    assert not {n for n in names if "reranker" in n or n.startswith("score_")}


def test_the_trained_reranker_scores_the_data_the_embedder_distils_from():
    e = edges("tiny_reranker")
    assert {
        ("mine_hard_negatives", "train_reranker"),
        ("train_reranker", "score_with_reranker"),
        ("score_with_reranker", "train_embedder"),
        ("train_reranker", "evaluate"),  # the rerank stage
        ("evaluate", "register_reranker"),
        ("register_reranker", "promote_reranker"),
        ("promote_reranker", "deploy_reranker"),
        ("score_with_reranker", "register_model"),  # the embedder's lineage names the data it trained on
    } <= e
    assert ("mine_hard_negatives", "train_embedder") not in e


def test_an_external_teacher_scores_the_data_both_trainers_read():
    e = edges("tiny_reranker", "teacher.source=tiny-reranker@3")
    assert {
        ("mine_hard_negatives", "score_with_teacher"),
        ("score_with_teacher", "train_reranker"),
        ("score_with_teacher", "train_embedder"),
    } <= e
    assert not any("score_with_reranker" in pair for pair in e)


def test_a_teacher_alone_feeds_the_embedder_without_a_reranker_branch():
    pipe = catalog.pipeline(load_config("tiny", ["teacher.source=tiny-reranker", "train.distill=true"]))
    assert pipe.task("train_embedder").inputs == {"train_data": "scored_data"}
    assert "train_reranker" not in pipe.names


def test_scoring_with_the_trained_reranker_needs_the_reranker_branch():
    with pytest.raises(ConfigError, match=r"^tiny: teacher.source=reranker .* set reranker.enabled=true$"):
        load_config("tiny", ["teacher.source=reranker"])


def test_evaluate_runs_without_a_reranker_and_takes_one_when_there_is():
    assert catalog.pipeline(load_config("tiny")).task("evaluate").inputs == {"model": "model", "eval_set": "eval_set"}
    assert catalog.pipeline(load_config("tiny_reranker")).task("evaluate").inputs["reranker_model"] == "reranker_model"


# --------------------------------------------------------------------------- families


def test_the_reranker_family_reads_its_own_name_service_and_served_kind():
    cfg = load_config("tiny_reranker")
    rr = families.project(cfg, "reranker")
    assert (rr.registry.model_name, rr.deploy.service_name) == ("bge-reranker-tiny", "bge-reranker-tiny")
    assert (rr.serve.kind, rr.serve.model_name) == ("reranker", "reranker")
    assert rr.registry.primary_metric == cfg.registry.primary_metric and rr.train == cfg.train
    assert families.project(cfg, "embedder") is cfg
    assert families.artifact("reranker", "promotion") == "reranker_promotion" and families.artifact("embedder", "promotion") == "promotion"
    assert (families.step("embedder", "deploy"), families.step("reranker", "deploy")) == ("deploy_model", "deploy_reranker")
    with pytest.raises(ValueError, match="unknown model family 'llm'"):
        families.project(cfg, "llm")


def test_each_family_step_writes_the_artifacts_the_catalog_gives_it():
    for verb in ("register", "promote", "deploy"):
        step = catalog.get(families.step("reranker", verb))
        assert dict(step.params) == {"family": "reranker"}
        base = catalog.get(families.step("embedder", verb))
        assert step.output_names == tuple(families.artifact("reranker", n) for n in base.output_names)


def test_the_reranker_gate_compares_reranked_keys_only():
    champion = {"candidate/ndcg@10": 0.9, "reranked/ndcg@10": 0.50, "reranked/mrr@10": 0.40}
    better = {"candidate/ndcg@10": 0.1, "reranked/ndcg@10": 0.55, "reranked/mrr@10": 0.395}
    d = decide(better, champion, "ndcg@10", 0.0, ["mrr@10"], 0.01, prefix="reranked/")
    assert d.promote
    assert d.reasons == [
        "ndcg@10: 0.5500 vs champion 0.5000 (+0.0500); beats the champion",
        "guard mrr@10: 0.3950 vs champion 0.4000 (-0.0050) within tolerance 0.0100",
    ]
    # The embedder's keys would say the opposite: the prefix decides what is compared.
    assert not decide(better, champion, "ndcg@10", 0.0, [], 0.01).promote
    with pytest.raises(KeyError, match="'reranked/recall@10'"):
        decide(better, champion, "recall@10", 0.0, [], 0.01, prefix="reranked/")


# --------------------------------------------------------------------------- rerank stage

EVAL = EvalSet(
    corpus=[Passage(f"d{i}", "", f"text {i}") for i in range(6)],
    queries={"q1": "query one", "q2": "query two"},
    qrels={"q1": {"d4": 1}, "q2": {"d0": 1, "d5": 1}},
)
# The dense run: q1's relevant d4 third, q2's d0 fourth and d5 beyond a top-4 cut.
RUN = {
    "q1": {"d0": 0.9, "d1": 0.8, "d4": 0.7, "d2": 0.1},
    "q2": {"d1": 0.9, "d2": 0.8, "d3": 0.7, "d0": 0.6, "d5": 0.5},
}


def oracle(pairs):
    """Scores a pair 1 when the passage is judged relevant to the query: a perfect reranker."""
    import numpy as np

    qid = {text: q for q, text in EVAL.queries.items()}
    return np.array([float(EVAL.qrels[qid[q]].get("d" + p.split()[-1], 0)) for q, p in pairs])  # "text 4" is d4


def test_reranking_reorders_only_the_top_k_with_one_call():
    calls = []

    def score(pairs):
        calls.append(list(pairs))
        return oracle(pairs)

    reranked = rerank_run(score, EVAL, RUN, top_k=4)
    assert len(calls) == 1 and len(calls[0]) == 8  # 4 + 4 pairs, one pass
    order = {qid: sorted(docs, key=docs.get, reverse=True) for qid, docs in reranked.items()}
    assert order["q1"] == ["d4", "d0", "d1", "d2"]  # the relevant d4 first, the rest in dense order (a stable sort)
    assert order["q2"] == ["d0", "d1", "d2", "d3", "d5"]  # d5 was below the top-4: it stays below, unscored


def test_a_perfect_reranker_lifts_ndcg_and_keeps_recall():
    dense = retrieval_metrics(EVAL.qrels, RUN)
    found = rerank_metrics(oracle, EVAL, RUN, top_k=4, prefix="reranked")
    # q1: d4 moves from rank 3 to 1 (nDCG 1). q2: d0 moves from rank 4 to 1, d5 stays 5th:
    # DCG = 1 + 1/log2(6), ideal 1 + 1/log2(3).
    q2 = (1 + 1 / 2.584962500721156) / (1 + 1 / 1.5849625007211563)
    assert found["reranked/ndcg@10"] == pytest.approx((1.0 + q2) / 2, abs=1e-6)
    assert found["reranked/mrr@10"] == pytest.approx(1.0) and dense["mrr@10"] == pytest.approx((1 / 3 + 1 / 4) / 2)
    assert found["reranked/recall@100"] == dense["recall@100"] == pytest.approx(1.0)
    assert found["reranked/ms_per_query"] >= 0.0


def test_layer_rows_come_out_in_layer_order():
    metrics = {
        "reranked/layer_10/ndcg@10": 0.6,
        "reranked/layer_10/ms_per_query": 9.0,
        "reranked/layer_8/ndcg@10": 0.5,
        "reranked/layer_8/ms_per_query": 7.0,
        "reranked/ndcg@10": 0.6,
    }
    assert layer_rows(metrics) == [
        {"layer": 8, "ndcg@10": 0.5, "ms_per_query": 7.0},
        {"layer": 10, "ndcg@10": 0.6, "ms_per_query": 9.0},
    ]
