"""The lexical baseline: BM25 (bm25s, Lucene variant) over the same passage text as dense.

English (the default) is lowercased word tokens of 2+ characters, stopwords removed, no
stemming. Chinese has no spaces between words, so whitespace/regex tokens would be whole
clauses that rarely match; ``language="zh"`` cuts words with jieba instead, as C-MTEB's
BM25 baselines do.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence

import bm25s
import numpy as np

from flagops.data.formats import Passage
from flagops.evaluation.retrieval import Run

# A text set is Chinese when at least this share of its letters and digits are CJK ideographs.
# Low on purpose: jieba passes English words through whole, so mixed text loses little by it,
# while regex tokens on Chinese lose nearly everything.
CJK_SHARE = 0.2
CJK_SAMPLE = 1000  # texts looked at per set: enough to tell, cheap on a C-MTEB corpus
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
_WORD = re.compile(r"\w")


def cjk_share(texts: Iterable[str]) -> float:
    """The share of CJK ideographs among the letters and digits of ``texts`` (0 when there are none)."""
    cjk = alnum = 0
    for text in texts:
        cjk += len(_CJK.findall(text))
        alnum += sum(c.isalnum() for c in text)
    return cjk / alnum if alnum else 0.0


def detect_language(*text_sets: Sequence[str]) -> str:
    """``zh`` when the first ``CJK_SAMPLE`` texts of each set together pass ``CJK_SHARE``, else ``en``."""
    sample = [t for texts in text_sets for t in texts[:CJK_SAMPLE]]
    return "zh" if cjk_share(sample) >= CJK_SHARE else "en"


def _jieba_words(texts: Sequence[str]) -> list[list[str]]:
    import jieba

    jieba.setLogLevel(logging.WARNING)  # its dictionary-loading notes go to stderr otherwise
    # Lowercased words; punctuation and spaces (no word character) are dropped, as the English regex drops them.
    return [[w.lower() for w in jieba.lcut(t) if _WORD.search(w)] for t in texts]


def _tokenize(texts: list[str], language: str = "en"):
    if language == "zh":
        return _jieba_words(texts)
    # Lowercase word tokens of 2+ characters, English stopwords removed, no stemming.
    return bm25s.tokenize(texts, lower=True, stopwords="en", show_progress=False)


def bm25_search(corpus: Sequence[Passage], queries: Mapping[str, str], top_k: int = 100, language: str = "en") -> Run:
    """Each query's ``top_k`` passages by BM25; passages sharing no term with it are left out."""
    doc_ids = [p.id for p in corpus]
    run: Run = {qid: {} for qid in queries}
    k = min(top_k, len(doc_ids))
    if k == 0 or not queries:
        return run
    retriever = bm25s.BM25()
    retriever.index(_tokenize([p.full_text for p in corpus], language), show_progress=False)
    query_ids = list(queries)
    ranks, scores = retriever.retrieve(_tokenize([queries[q] for q in query_ids], language), k=k, show_progress=False)
    for qid, row_ids, row_scores in zip(query_ids, ranks, scores, strict=True):
        # A zero score means no shared term; keeping those would rank passages by id, not text.
        run[qid] = {doc_ids[int(i)]: float(s) for i, s in zip(row_ids, row_scores, strict=True) if s > 0}
    return run


def bm25_scores(query: str, candidates: Sequence[str], language: str = "en") -> np.ndarray:
    """BM25 score of each candidate for ``query``, the candidates being the whole index (reranking)."""
    if language == "zh":
        docs, terms = _jieba_words(list(candidates)), _jieba_words([query])[0]
    else:
        docs = bm25s.tokenize(list(candidates), lower=True, stopwords="en", show_progress=False, return_ids=False)
        terms = bm25s.tokenize([query], lower=True, stopwords="en", show_progress=False, return_ids=False)[0]
    retriever = bm25s.BM25()
    retriever.index(docs, show_progress=False)
    # bm25s cannot score an empty query (all stopwords); it matches nothing.
    return np.asarray(retriever.get_scores(terms), dtype=np.float64) if terms else np.zeros(len(candidates))
