"""The rerank stage: a reranker rescores each query's top-k from the candidate's dense run.

This is how FlagEmbedding pairs its models in practice: the embedder retrieves, the
reranker reorders. The reranked run holds only the top-k, so recall@k is the dense run's
and what a reranker can change is the order: nDCG@10, MRR@10, MAP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from flagops.data.formats import EvalSet
from flagops.evaluation.retrieval import Run, cut_run, prefixed, retrieval_metrics

PairScorer = Callable[[Sequence[tuple[str, str]]], np.ndarray]  # (query, passage) pairs -> scores


def rerank_run(score: PairScorer, eval_set: EvalSet, run: Run, top_k: int) -> Run:
    """Each query's ``top_k`` documents of ``run``, rescored by ``score`` in one pass over all pairs."""
    texts = {p.id: p.full_text for p in eval_set.corpus}
    top = cut_run(run, top_k)
    keys = [(qid, did) for qid, docs in top.items() for did in docs]
    if not keys:
        return {qid: {} for qid in run}
    scores = score([(eval_set.queries[qid], texts[did]) for qid, did in keys])
    out: Run = {qid: {} for qid in run}
    for (qid, did), s in zip(keys, scores, strict=True):
        out[qid][did] = float(s)
    return out


def rerank_metrics(score: PairScorer, eval_set: EvalSet, run: Run, top_k: int, prefix: str) -> dict[str, float]:
    """``<prefix>/<metric>`` of the reranked run, and ``<prefix>/ms_per_query``: the reranking
    latency per query over ``top_k`` candidates (the scoring pass, batched, on this machine)."""
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
