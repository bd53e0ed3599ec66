"""Evaluation: retrieval metrics (pytrec_eval), dense and BM25 search, STS, comparison charts.

Evaluators return flat ``dict[str, float]`` with ``<system>/<metric>`` keys, ready for
MLflow and the promotion gate.
"""

from flagops.evaluation.bm25 import bm25_search
from flagops.evaluation.plots import CHART_METRICS, SYSTEMS, chart_rows, result_rows, write_chart, write_chart_data
from flagops.evaluation.retrieval import (
    RETRIEVAL_METRICS,
    RetrievalEvaluator,
    cut_run,
    dense_search,
    prefixed,
    retrieval_metrics,
)
from flagops.evaluation.sts import cosine_rows, sts_spearman

__all__ = [
    "CHART_METRICS",
    "RETRIEVAL_METRICS",
    "SYSTEMS",
    "RetrievalEvaluator",
    "bm25_search",
    "chart_rows",
    "cosine_rows",
    "cut_run",
    "dense_search",
    "prefixed",
    "result_rows",
    "retrieval_metrics",
    "sts_spearman",
    "write_chart",
    "write_chart_data",
]
