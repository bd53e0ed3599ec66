"""Semantic textual similarity: does cosine similarity order sentence pairs as people do?"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr

from flagops.data.formats import StsPair
from flagops.evaluation.retrieval import TextEncoder


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``: (n, dim) x2 -> (n,)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)  # (n,)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def sts_spearman(embedder: TextEncoder, pairs: Sequence[StsPair], batch_size: int = 64, progress: str | None = None) -> float:
    """Spearman correlation between the pairs' cosine similarity and their gold scores.

    Raises ``ValueError`` when the gold scores cannot be ranked (fewer than two pairs, or
    all equal). A model that gives every pair the same similarity ranks nothing: 0.0.
    """
    gold = np.array([p.score for p in pairs], dtype=np.float64)
    if len(gold) < 2:
        raise ValueError(f"STS needs at least two pairs to rank; got {len(gold)}")
    if np.ptp(gold) == 0:
        raise ValueError(f"STS gold scores are all {gold[0]}; Spearman needs scores that differ")
    labels = (f"{progress} sts-1", f"{progress} sts-2") if progress else (None, None)
    first = embedder.encode([p.sentence1 for p in pairs], is_query=False, batch_size=batch_size, progress=labels[0])
    second = embedder.encode([p.sentence2 for p in pairs], is_query=False, batch_size=batch_size, progress=labels[1])
    sims = cosine_rows(first, second)  # (n,)
    if np.ptp(sims) == 0:
        return 0.0
    return float(spearmanr(sims, gold).statistic)
