"""BGE-M3 retrieval evaluation: dense, sparse, ColBERT and hybrid runs on a BEIR-layout set.

* **dense**: exact inner-product search (``dense_search``).
* **sparse**: an inverted index over the lexical weights. The corpus matrix (docs x vocab)
  transposed to CSR is one posting list per token id; a block of queries times it is a
  sparse-sparse product that walks only the posting lists of the ids the queries hold.
  Documents sharing no id with a query are not retrieved.
* **ColBERT**: exhaustive late interaction when the corpus has at most
  ``m3.colbert_exhaustive_max_docs`` documents, else a rerank of each query's dense top
  ``m3.rerank_top_k``.
* **hybrid**: ``w_dense * dense + w_sparse * sparse + w_colbert * colbert`` with
  ``m3.hybrid_weights`` (default 0.4, 0.2, 0.4), over every document when ColBERT is
  exhaustive, else over the same dense candidates.

Keys are ``<prefix>/m3_<mode>/<metric>`` for every metric of ``RETRIEVAL_METRICS``,
computed by ``retrieval_metrics`` (pytrec_eval). A model without heads gets m3_dense only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from flagops.data.formats import EvalSet
from flagops.evaluation.retrieval import RETRIEVAL_METRICS, SEARCH_BLOCK, Run, dense_search, prefixed, retrieval_metrics
from flagops.models.m3 import M3Embedder, M3Encoded, colbert_scores

TOP_K = 100  # documents per query in each run (Recall@100 needs 100)
DOC_BLOCK = 256  # documents padded together for exhaustive ColBERT


def top_k_rows(
    scores: np.ndarray,
    k: int,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    columns: np.ndarray | None = None,
    positive_only: bool = False,
) -> Run:
    """Each row's ``k`` best columns as a run. scores: (block, n); ``columns`` (block, n) maps a
    row's columns to document indices (default: column j is document j)."""
    k = min(k, scores.shape[1])
    run: Run = {}
    if k == 0:
        return {qid: {} for qid in query_ids}
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (block, k), unordered
    for row, cols in enumerate(best):
        docs = cols if columns is None else columns[row, cols]
        vals = scores[row, cols]
        keep = vals > 0 if positive_only else np.ones(len(cols), bool)
        run[query_ids[row]] = {doc_ids[d]: float(v) for d, v, ok in zip(docs, vals, keep, strict=True) if ok}
    return run


def sparse_search(queries: sp.csr_matrix, docs: sp.csr_matrix, query_ids: Sequence[str], doc_ids: Sequence[str], top_k: int = TOP_K) -> Run:
    """Lexical-weight search through an inverted index; only documents sharing an id score."""
    index = sp.csr_matrix(docs.T)  # (vocab, n_docs): row t is token t's posting list
    block = max(1, SEARCH_BLOCK // max(len(doc_ids), 1))
    run: Run = {}
    for start in range(0, len(query_ids), block):
        scores = (queries[start : start + block] @ index).toarray()  # (block, n_docs)
        run.update(top_k_rows(scores, top_k, query_ids[start : start + block], doc_ids, positive_only=True))
    return run


def pad_vectors(vecs: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length (tokens, dim) arrays -> (n, max_tokens, dim) zeros-padded and a mask (n, max_tokens)."""
    width = max((len(v) for v in vecs), default=0)
    dim = vecs[0].shape[1] if vecs else 0
    out = np.zeros((len(vecs), max(width, 1), dim), np.float32)
    mask = np.zeros((len(vecs), max(width, 1)), np.float32)
    for i, v in enumerate(vecs):
        out[i, : len(v)] = v
        mask[i, : len(v)] = 1
    return torch.from_numpy(out), torch.from_numpy(mask)


@torch.inference_mode()
def colbert_matrix(queries: Sequence[np.ndarray], docs: Sequence[np.ndarray]) -> np.ndarray:
    """Exhaustive ColBERT scores (n_queries, n_docs); docs padded in blocks of similar length."""
    q, q_mask = pad_vectors(queries)  # (nq, lq, dim)
    out = np.zeros((len(queries), len(docs)), np.float32)
    by_length = np.argsort([len(v) for v in docs], kind="stable")
    for start in range(0, len(docs), DOC_BLOCK):
        idx = by_length[start : start + DOC_BLOCK]
        d, d_mask = pad_vectors([docs[i] for i in idx])  # (block, ld, dim)
        q_block = max(1, SEARCH_BLOCK // (q.shape[1] * d.shape[0] * d.shape[1]))  # caps the (q, lq, d, ld) tensor
        for qs in range(0, len(queries), q_block):
            out[qs : qs + q_block, idx] = colbert_scores(q[qs : qs + q_block], q_mask[qs : qs + q_block], d, d_mask).numpy()
    return out


@torch.inference_mode()
def colbert_rerank(query: np.ndarray, docs: Sequence[np.ndarray], candidates: np.ndarray) -> np.ndarray:
    """One query's ColBERT scores for its candidate documents (k,)."""
    q, q_mask = pad_vectors([query])
    d, d_mask = pad_vectors([docs[i] for i in candidates])
    return colbert_scores(q, q_mask, d, d_mask)[0].numpy()


def m3_runs(
    queries: M3Encoded,
    docs: M3Encoded,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    *,
    weights: Sequence[float] = (0.4, 0.2, 0.4),
    exhaustive: bool = True,
    rerank_top_k: int = 100,
    top_k: int = TOP_K,
) -> dict[str, Run]:
    """One run per mode the encodings hold, and ``hybrid`` when they hold all three."""
    runs = {"dense": dense_search(queries.dense, docs.dense, query_ids, doc_ids, top_k)}
    if queries.sparse is not None:
        runs["sparse"] = sparse_search(queries.sparse, docs.sparse, query_ids, doc_ids, top_k)
    if queries.colbert is None:
        return runs
    w_dense, w_sparse, w_colbert = weights
    index = sp.csr_matrix(docs.sparse.T)  # (vocab, n_docs)
    full = colbert_matrix(queries.colbert, docs.colbert) if exhaustive else None  # (nq, n_docs)
    runs["colbert"], runs["hybrid"] = {}, {}
    block = max(1, SEARCH_BLOCK // max(len(doc_ids), 1))
    for start in range(0, len(query_ids), block):
        qids = query_ids[start : start + block]
        dense = queries.dense[start : start + block] @ docs.dense.T  # (block, n_docs)
        sparse = (queries.sparse[start : start + block] @ index).toarray()  # (block, n_docs)
        if exhaustive:
            colbert, cols = full[start : start + block], None
        else:  # rerank the dense top-k
            k = min(rerank_top_k, len(doc_ids))
            cols = np.argpartition(-dense, k - 1, axis=1)[:, :k]  # (block, k)
            colbert = np.stack([colbert_rerank(queries.colbert[start + r], docs.colbert, c) for r, c in enumerate(cols)])
            dense, sparse = np.take_along_axis(dense, cols, 1), np.take_along_axis(sparse, cols, 1)  # (block, k)
        hybrid = w_dense * dense + w_sparse * sparse + w_colbert * colbert
        runs["colbert"].update(top_k_rows(colbert, top_k, qids, doc_ids, cols))
        runs["hybrid"].update(top_k_rows(hybrid, top_k, qids, doc_ids, cols))
    return runs


class M3RetrievalEvaluator:
    """Scores an M3 model's modes on a BEIR-layout set; keys ``<prefix>/m3_<mode>/<metric>``.

    ``primary_metric`` (``m3_hybrid/ndcg@10``) names the key that ranks M3 models; give it
    to the promotion gate as ``registry.primary_metric``.
    """

    primary_metric = "m3_hybrid/ndcg@10"

    def __init__(self, eval_set: EvalSet, m3_cfg, batch_size: int = 64):
        self.eval_set = eval_set
        self.cfg = m3_cfg
        self.batch_size = batch_size
        self.doc_ids = [p.id for p in eval_set.corpus]
        self.doc_texts = [p.full_text for p in eval_set.corpus]
        self.query_ids = list(eval_set.queries)
        self.query_texts = [eval_set.queries[q] for q in self.query_ids]

    def search(self, model: M3Embedder, label: str = "") -> dict[str, Run]:
        tag = f"{label} " if label else ""
        docs = model.encode_m3(self.doc_texts, is_query=False, batch_size=self.batch_size, progress=f"{tag}passages")
        queries = model.encode_m3(self.query_texts, is_query=True, batch_size=self.batch_size, progress=f"{tag}queries")
        c = self.cfg
        exhaustive = len(self.doc_ids) <= c.colbert_exhaustive_max_docs
        return m3_runs(
            queries, docs, self.query_ids, self.doc_ids, weights=c.hybrid_weights, exhaustive=exhaustive, rerank_top_k=c.rerank_top_k
        )

    def __call__(self, model: M3Embedder, prefix: str = "") -> dict[str, float]:
        metrics: dict[str, float] = {}
        for mode, run in self.search(model, label=prefix).items():
            metrics.update(prefixed(retrieval_metrics(self.eval_set.qrels, run), f"m3_{mode}"))
        return prefixed(metrics, prefix)


def evaluate_m3(model: M3Embedder, eval_set: EvalSet, cfg, prefix: str = "candidate") -> dict[str, float]:
    """Every mode of ``model`` on ``eval_set``: ``{"<prefix>/m3_hybrid/ndcg@10": ..., ...}``.

    ``cfg`` is the whole ``FlagopsConfig`` (its ``m3`` and ``evaluate.batch_size``).
    """
    return M3RetrievalEvaluator(eval_set, cfg.m3, cfg.evaluate.batch_size)(model, prefix=prefix)


__all__ = ["RETRIEVAL_METRICS", "M3RetrievalEvaluator", "colbert_matrix", "evaluate_m3", "m3_runs", "sparse_search"]
