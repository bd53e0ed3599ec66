"""Dense retrieval evaluation on a BEIR-layout set, with pytrec_eval as the metric reference.

A *run* is ``{query_id: {doc_id: score}}``, the shape pytrec_eval and BEIR use; higher
scores rank first. Metric names are the flagops ones (``ndcg@10``), not trec_eval's
(``ndcg_cut_10``), because they go straight into MLflow and the promotion gate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import pytrec_eval

from flagops.data.formats import EvalSet

Qrels = Mapping[str, Mapping[str, int]]
Run = dict[str, dict[str, float]]

# flagops name -> (trec_eval measure to request, key pytrec_eval returns it under)
_TREC_MEASURES = {
    "ndcg@10": ("ndcg_cut.10", "ndcg_cut_10"),
    "recall@10": ("recall.10", "recall_10"),
    "recall@100": ("recall.100", "recall_100"),
    "map": ("map", "map"),
}
RETRIEVAL_METRICS: tuple[str, ...] = ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map")
MRR_CUTOFF = 10
SEARCH_BLOCK = 1 << 24  # scores per query block (floats): 64 MiB at float32


class TextEncoder(Protocol):
    """What the evaluators need from a model: ``flagops.models.embedder.Embedder`` fits."""

    def encode(self, texts: Sequence[str], *, is_query: bool, batch_size: int, progress: str | None) -> np.ndarray: ...


def prefixed(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    """``{"ndcg@10": x}`` -> ``{"<prefix>/ndcg@10": x}``; an empty prefix leaves keys alone."""
    return {(f"{prefix}/{k}" if prefix else k): v for k, v in metrics.items()}


def cut_run(run: Run, k: int) -> Run:
    """Keep each query's ``k`` highest-scoring documents.

    Ties go to the larger doc id, as trec_eval orders them, so cutting then scoring
    agrees with trec_eval's own ranking.
    """
    return {qid: dict(sorted(docs.items(), key=lambda d: (d[1], d[0]), reverse=True)[:k]) for qid, docs in run.items()}


def retrieval_metrics(qrels: Qrels, run: Run) -> dict[str, float]:
    """nDCG@10, MRR@10, Recall@10/100 and MAP, averaged over the queries in ``qrels``.

    A judgement counts as relevant when its grade is >= 1; nDCG uses the grade as gain
    (trec_eval's linear gain). A query the run has no results for scores 0 on every metric.
    """
    if not qrels:
        raise ValueError("qrels is empty: there are no queries to evaluate")
    qrels = {qid: {did: int(rel) for did, rel in docs.items()} for qid, docs in qrels.items()}
    judged_run = {qid: {did: float(s) for did, s in docs.items()} for qid, docs in run.items() if qid in qrels and docs}
    per_query: dict[str, dict[str, float]] = {qid: dict.fromkeys(RETRIEVAL_METRICS, 0.0) for qid in qrels}
    if judged_run:
        full = pytrec_eval.RelevanceEvaluator(qrels, {m for m, _ in _TREC_MEASURES.values()}).evaluate(judged_run)
        # trec_eval's recip_rank has no cutoff, so MRR@10 is recip_rank on the top-10 run.
        cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut_run(judged_run, MRR_CUTOFF))
        for qid in judged_run:
            for name, (_, key) in _TREC_MEASURES.items():
                per_query[qid][name] = full[qid][key]
            per_query[qid]["mrr@10"] = cut[qid]["recip_rank"]
    n = len(per_query)
    return {name: sum(q[name] for q in per_query.values()) / n for name in RETRIEVAL_METRICS}


def dense_search(
    query_emb: np.ndarray,
    doc_emb: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    top_k: int = 100,
) -> Run:
    """Exact inner-product search: each query's ``top_k`` documents with their scores.

    Queries are scored in blocks so the score matrix never exceeds ``SEARCH_BLOCK`` floats,
    whatever the corpus size.
    """
    if query_emb.shape[0] != len(query_ids) or doc_emb.shape[0] != len(doc_ids):
        raise ValueError(
            f"ids and embeddings disagree: {len(query_ids)} query ids for {query_emb.shape[0]} rows, "
            f"{len(doc_ids)} doc ids for {doc_emb.shape[0]} rows"
        )
    if query_emb.ndim != 2 or doc_emb.ndim != 2 or query_emb.shape[1] != doc_emb.shape[1]:
        raise ValueError(f"embedding shapes do not match: queries {query_emb.shape}, docs {doc_emb.shape}")
    n_docs = len(doc_ids)
    k = min(top_k, n_docs)
    run: Run = {qid: {} for qid in query_ids}
    if k == 0:
        return run
    docs_t = np.ascontiguousarray(doc_emb, dtype=np.float32).T  # (dim, n_docs)
    block = max(1, SEARCH_BLOCK // n_docs)
    for start in range(0, len(query_ids), block):
        scores = np.asarray(query_emb[start : start + block], dtype=np.float32) @ docs_t  # (block, n_docs)
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (block, k), unordered
        for row, cols in enumerate(best):
            qid = query_ids[start + row]
            run[qid] = {doc_ids[c]: float(scores[row, c]) for c in cols}
    return run


class RetrievalEvaluator:
    """Scores an encoder on a BEIR-layout set, like sentence-transformers' SentenceEvaluator.

    Calling it encodes the corpus and queries, searches exactly and returns a flat dict with
    keys ``<prefix>/<metric>``; ``primary_metric`` names the metric that ranks models.
    """

    def __init__(self, eval_set: EvalSet, batch_size: int = 64, *, top_k: int = 100, primary_metric: str = "ndcg@10"):
        if primary_metric not in RETRIEVAL_METRICS:
            raise ValueError(f"primary_metric {primary_metric!r} is not one of {', '.join(RETRIEVAL_METRICS)}")
        self.eval_set = eval_set
        self.batch_size = batch_size
        self.top_k = top_k
        self.primary_metric = primary_metric
        self.doc_ids = [p.id for p in eval_set.corpus]
        self.doc_texts = [p.full_text for p in eval_set.corpus]  # title + "\n" + text
        self.query_ids = list(eval_set.queries)
        self.query_texts = [eval_set.queries[q] for q in self.query_ids]

    def search(self, encoder: TextEncoder, label: str = "") -> Run:
        """Encode corpus and queries with ``encoder`` and return its run."""
        tag = f"{label} " if label else ""
        docs = encoder.encode(self.doc_texts, is_query=False, batch_size=self.batch_size, progress=f"{tag}passages")
        queries = encoder.encode(self.query_texts, is_query=True, batch_size=self.batch_size, progress=f"{tag}queries")
        return dense_search(queries, docs, self.query_ids, self.doc_ids, self.top_k)

    def __call__(self, encoder: TextEncoder, prefix: str = "") -> dict[str, float]:
        run = self.search(encoder, label=prefix)
        return prefixed(retrieval_metrics(self.eval_set.qrels, run), prefix)
