"""Hard-negative mining, FlagEmbedding's method.

The candidate pool is every distinct passage in the training file (its positives and any
negatives). A teacher embedder encodes pool and queries; a faiss ``IndexFlatIP`` ranks the
pool for each query; negatives are sampled from the rank window [range_start, range_end),
skipping the query's positives by index and by exact text, and topped up with random pool
passages when the window holds too few.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import faiss
import numpy as np

from flagops.data.formats import TrainExample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    start: int
    end: int


def clamp_window(start: int, end: int, pool_size: int, negatives: int) -> Window:
    """Fit the rank window into a pool smaller than it, keeping room for the negatives."""
    if end <= pool_size:
        return Window(start, end)
    new_start = min(start, max(0, pool_size - negatives - 1))
    log.warning(
        "mine_hard_negatives: the pool has %d passages, fewer than range_end=%d; clamping the rank window to [%d, %d)",
        pool_size,
        end,
        new_start,
        pool_size,
    )
    return Window(new_start, pool_size)


def candidate_pool(examples: Sequence[TrainExample]) -> list[str]:
    return list(dict.fromkeys(t for ex in examples for t in (*ex.pos, *ex.neg)))


def search(query_emb: np.ndarray, pool_emb: np.ndarray, k: int) -> np.ndarray:
    """Top-k pool indices per query by inner product, (n_queries, k)."""
    index = faiss.IndexFlatIP(pool_emb.shape[1])
    index.add(np.ascontiguousarray(pool_emb, dtype=np.float32))
    _, ranked = index.search(np.ascontiguousarray(query_emb, dtype=np.float32), k)
    return ranked


def sample_negatives(ranked: Sequence[int], pool: Sequence[str], ex: TrainExample, window: Window, n: int, rng: random.Random) -> list[str]:
    positives = set(ex.pos)
    allowed = [i for i in ranked[window.start : window.end] if i >= 0 and pool[i] not in positives and pool[i] != ex.query]
    chosen = rng.sample(allowed, n) if len(allowed) > n else allowed
    if len(chosen) < n:
        taken = set(chosen)
        rest = [i for i in range(len(pool)) if i not in taken and pool[i] not in positives and pool[i] != ex.query]
        chosen += rng.sample(rest, min(n - len(chosen), len(rest)))
    return [pool[i] for i in chosen]


def mine(
    examples: Sequence[TrainExample],
    teacher,
    *,
    range_start: int = 10,
    range_end: int = 210,
    negative_number: int = 15,
    batch_size: int = 256,
    seed: int = 42,
) -> list[TrainExample]:
    """Return the examples with ``neg`` replaced by mined hard negatives (scores dropped)."""
    pool = candidate_pool(examples)
    window = clamp_window(range_start, range_end, len(pool), negative_number)
    pool_emb = teacher.encode(pool, is_query=False, batch_size=batch_size, progress="mining: encode pool")
    query_emb = teacher.encode([ex.query for ex in examples], is_query=True, batch_size=batch_size, progress="mining: encode queries")
    ranked = search(query_emb, pool_emb, window.end)
    rng = random.Random(seed)
    return [
        replace(ex, neg=sample_negatives(r, pool, ex, window, negative_number, rng), neg_scores=None)
        for ex, r in zip(examples, ranked, strict=True)
    ]
