"""The lexical baseline: BM25 (bm25s, Lucene variant) over the same passage text as dense."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import bm25s

from flagops.data.formats import Passage
from flagops.evaluation.retrieval import Run


def _tokenize(texts: list[str]):
    # Lowercase word tokens of 2+ characters, English stopwords removed, no stemming.
    return bm25s.tokenize(texts, lower=True, stopwords="en", show_progress=False)


def bm25_search(corpus: Sequence[Passage], queries: Mapping[str, str], top_k: int = 100) -> Run:
    """Each query's ``top_k`` passages by BM25; passages sharing no term with it are left out."""
    doc_ids = [p.id for p in corpus]
    run: Run = {qid: {} for qid in queries}
    k = min(top_k, len(doc_ids))
    if k == 0 or not queries:
        return run
    retriever = bm25s.BM25()
    retriever.index(_tokenize([p.full_text for p in corpus]), show_progress=False)
    query_ids = list(queries)
    ranks, scores = retriever.retrieve(_tokenize([queries[q] for q in query_ids]), k=k, show_progress=False)
    for qid, row_ids, row_scores in zip(query_ids, ranks, scores, strict=True):
        # A zero score means no shared term; keeping those would rank passages by id, not text.
        run[qid] = {doc_ids[int(i)]: float(s) for i, s in zip(row_ids, row_scores, strict=True) if s > 0}
    return run
