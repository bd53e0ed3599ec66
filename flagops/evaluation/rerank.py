"""The rerank stage: a reranker reorders each query's top-k from the candidate's dense run.

This is how FlagEmbedding pairs its models in practice: the embedder retrieves, the
reranker reorders. Documents below the top-k stay under it in their dense order, so
recall@k for k >= top-k is the dense run's; what a reranker changes is the order within
the top-k: nDCG@10, MRR@10, MAP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from flagops.data.formats import EvalSet
from flagops.evaluation.retrieval import Run, cut_run, prefixed, retrieval_metrics

PairScorer = Callable[[Sequence[tuple[str, str]]], np.ndarray]  # (query, passage) pairs -> scores


def rerank_run(score: PairScorer, eval_set: EvalSet, run: Run, top_k: int) -> Run:
    """``run`` with each query's ``top_k`` documents reordered by ``score`` (one pass over all
    pairs) and the rest kept below them in their dense order, as a retrieve-then-rerank system
    serves them. Scores in the result are ranks turned around (higher first), nothing more."""
    texts = {p.id: p.full_text for p in eval_set.corpus}
    longest = max((len(docs) for docs in run.values()), default=0)
    ranked = {qid: list(docs) for qid, docs in cut_run(run, longest).items()}  # each query's documents, best first
    keys = [(qid, did) for qid, docs in ranked.items() for did in docs[:top_k]]
    scores = score([(eval_set.queries[qid], texts[did]) for qid, did in keys]) if keys else []
    new: dict[str, dict[str, float]] = {qid: {} for qid in run}
    for (qid, did), s in zip(keys, scores, strict=True):
        new[qid][did] = float(s)
    out: Run = {}
    for qid, docs in ranked.items():
        head = sorted(docs[:top_k], key=lambda d: new[qid][d], reverse=True)  # stable: ties keep the dense order
        order = head + docs[top_k:]
        out[qid] = {did: float(len(order) - i) for i, did in enumerate(order)}
    return out


def rerank_metrics(score: PairScorer, eval_set: EvalSet, run: Run, top_k: int, prefix: str) -> dict[str, float]:
    """``<prefix>/<metric>`` of the reranked run, and ``<prefix>/ms_per_query``: the reranking
    latency per query over ``top_k`` candidates (the scoring pass, batched, on this machine;
    after one warm-up pair, so a model's first call does not count)."""
    first = next(((qid, did) for qid, docs in run.items() for did in docs), None)
    if first is not None:
        score([(eval_set.queries[first[0]], next(p.full_text for p in eval_set.corpus if p.id == first[1]))])
    start = time.perf_counter()
    reranked = rerank_run(score, eval_set, run, top_k)
    elapsed = time.perf_counter() - start
    metrics = prefixed(retrieval_metrics(eval_set.qrels, reranked), prefix)
    metrics[f"{prefix}/ms_per_query"] = 1000.0 * elapsed / max(len(run), 1)
    return metrics


def layer_rows(metrics: Mapping[str, float], prefix: str = "reranked") -> list[dict[str, float]]:
    """``[{"layer", "ndcg@10", "ms_per_query"}]`` from ``<prefix>/layer_<n>/...`` keys, by layer."""
    layers = sorted({int(k.split("/")[1].removeprefix("layer_")) for k in metrics if k.startswith(f"{prefix}/layer_")})
    return [
        {
            "layer": layer,
            "ndcg@10": metrics[f"{prefix}/layer_{layer}/ndcg@10"],
            "ms_per_query": metrics[f"{prefix}/layer_{layer}/ms_per_query"],
        }
        for layer in layers
    ]
