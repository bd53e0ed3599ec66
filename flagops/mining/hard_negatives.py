"""Hard-negative mining, FlagEmbedding's method, with an optional false-negative filter.

The candidate pool is every distinct passage in the training file (its positives and any
negatives). A teacher embedder encodes pool and queries; a faiss ``IndexFlatIP`` ranks the
pool for each query; negatives are sampled from the rank window [range_start, range_end),
skipping the query's positives by index and by exact text, and topped up with random pool
passages when the window holds too few.

Speed and scale (``flagops.evaluation.index``, settings from ``index_settings``): passages and
queries are encoded tokenized once and sorted by token count (``Embedder.encode``); the
pool's vectors go through the embedding cache keyed by model and pool hash, so a re-run with
another window or filter does not encode again; a pool above ``ivf_above`` passages is searched
with IVF (``mining.index`` may force flat, IVF or HNSW), and an approximate index's recall@10
against exact search is returned in ``Mined.search``. Up to ``ivf_above`` the search is exact
and the output the same as a plain ``IndexFlatIP``'s.

The window starts below the top ranks because the passages nearest a query are often
relevant too (an alias's docstring, an overload's). A window still holds some: the filter
drops window candidates the teacher scores too close to the query, using the similarities
the search already computed, before negatives are sampled:

- ``absolute``: drop a candidate scoring above ``fn_threshold``;
- ``relative``: drop a candidate scoring above ``fn_margin`` x the positive's own score
  (NV-Retriever's positive-aware TopK-PercPos).
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from flagops.data.formats import Passage, TrainExample
from flagops.evaluation.index import IndexSettings, build_index, current_settings, passage_embeddings, search_index

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    start: int
    end: int


@dataclass(frozen=True)
class MiningStats:
    """Window candidates the false-negative filter dropped, over how many queries, and how many
    queries were left short of candidates (a filter too strict makes negatives random)."""

    false_negatives_dropped: int = 0
    queries_with_false_negatives: int = 0
    queries_topped_up: int = 0  # windows with fewer than negative_number candidates: random passages fill in

    def metrics(self) -> dict[str, int]:
        return {
            "false_negatives_dropped": self.false_negatives_dropped,
            "queries_with_false_negatives": self.queries_with_false_negatives,
            "queries_topped_up": self.queries_topped_up,
        }


@dataclass(frozen=True)
class Mined:
    examples: list[TrainExample]
    stats: MiningStats
    search: dict[str, float] = field(default_factory=dict)  # {"ivf_recall@10": r} (or hnsw_) when an approximate index searched


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


def search(
    query_emb: np.ndarray, pool_emb: np.ndarray, k: int, settings: IndexSettings | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(scores, pool indices, extra): top-k inner products per query, both (n_queries, k), best first.

    The index ``settings.method_for(pool size, queries)`` names: exact up to ``ivf_above`` pool
    passages (or under ``ivf_min_queries`` queries), IVF above, or as forced (index -1 where an approximate one found fewer than k); for an
    approximate index ``extra`` is ``{"ivf_recall@10": r}`` (or ``hnsw_``), measured against exact
    search on a sample.
    """
    settings = settings or current_settings()
    queries = np.ascontiguousarray(query_emb, dtype=np.float32)
    index = build_index(pool_emb, settings, "mining: ", len(queries))
    return search_index(index, queries, pool_emb, k, settings, "mining: ")


def false_negative_ceiling(mode: str, positive_scores: np.ndarray, threshold: float, margin: float) -> float:
    """The teacher score above which a candidate counts as a false negative (``inf``: keep all).

    ``relative`` takes the lowest positive: it is the lowest score the teacher gives a
    passage known to be relevant, so a candidate within the margin of it is as likely
    relevant as that positive. The highest positive would let such candidates through. The
    rule assumes a positive score above 0, as a cosine of a relevant pair is.
    """
    if mode == "keep":
        return math.inf
    if mode == "absolute":
        return threshold
    if mode == "relative":
        return margin * float(positive_scores.min())
    raise ValueError(f"unknown false_negatives mode {mode!r}; use keep, absolute or relative")


def window_candidates(
    ranked: Sequence[int], pool: Sequence[str], ex: TrainExample, window: Window, excluded: frozenset[int] = frozenset()
) -> list[int]:
    """Pool indices in the rank window that may be negatives: not a positive, not the query, not ``excluded``."""
    positives = set(ex.pos)
    return [
        i for i in ranked[window.start : window.end] if i >= 0 and i not in excluded and pool[i] not in positives and pool[i] != ex.query
    ]


def draw(
    allowed: list[int], pool: Sequence[str], ex: TrainExample, n: int, rng: random.Random, excluded: frozenset[int] = frozenset()
) -> list[str]:
    """``n`` of ``allowed`` at random, topped up with random pool passages (never ``excluded``) when too few."""
    chosen = rng.sample(allowed, n) if len(allowed) > n else allowed
    if len(chosen) < n:
        positives = set(ex.pos)
        taken = set(chosen) | excluded
        rest = [i for i in range(len(pool)) if i not in taken and pool[i] not in positives and pool[i] != ex.query]
        chosen += rng.sample(rest, min(n - len(chosen), len(rest)))
    return [pool[i] for i in chosen]


def sample_negatives(ranked: Sequence[int], pool: Sequence[str], ex: TrainExample, window: Window, n: int, rng: random.Random) -> list[str]:
    return draw(window_candidates(ranked, pool, ex, window), pool, ex, n, rng)


def mine_with_stats(
    examples: Sequence[TrainExample],
    teacher,
    *,
    range_start: int = 10,
    range_end: int = 210,
    negative_number: int = 15,
    batch_size: int = 256,
    seed: int = 42,
    false_negatives: str = "keep",
    fn_threshold: float = 0.9,
    fn_margin: float = 0.95,
) -> Mined:
    """The examples with ``neg`` replaced by mined hard negatives (scores dropped), and the filter's counts."""
    pool = candidate_pool(examples)
    position = {text: i for i, text in enumerate(pool)}
    window = clamp_window(range_start, range_end, len(pool), negative_number)
    encoder = teacher
    query_emb = encoder.encode([ex.query for ex in examples], is_query=True, batch_size=batch_size, progress="mining: encode queries")
    settings = current_settings()
    with tempfile.TemporaryDirectory(prefix="flagops-mining-") as scratch:
        passages = [Passage(str(i), "", text) for i, text in enumerate(pool)]  # full_text is the text itself
        pool_emb = passage_embeddings(passages, encoder, batch_size, settings, Path(scratch), "mining: ")  # (n_pool, dim) memmap
        scores, ranked, extra = search(query_emb, pool_emb, window.end, settings)
        positives = [np.asarray(pool_emb[[position[p] for p in ex.pos]]) @ q for ex, q in zip(examples, query_emb, strict=True)]
        del pool_emb  # the memmap, before its scratch file goes
    rng = random.Random(seed)
    mined, dropped, affected, topped_up = [], 0, 0, 0
    for ex, positive_scores, row_scores, row in zip(examples, positives, scores, ranked, strict=True):
        ceiling = false_negative_ceiling(false_negatives, positive_scores, fn_threshold, fn_margin)
        # Every searched rank above the ceiling is excluded, the top ranks before the window
        # too, so that the random top-up cannot bring one back. Unsearched passages score at
        # most the last searched one: all below the ceiling unless the whole search is above it.
        excluded = frozenset(int(i) for i, s in zip(row, row_scores, strict=True) if i >= 0 and s > ceiling)
        allowed = window_candidates(row, pool, ex, window, excluded)
        if excluded:
            n_dropped = len(window_candidates(row, pool, ex, window)) - len(allowed)
            dropped += n_dropped
            affected += n_dropped > 0
        topped_up += len(allowed) < negative_number
        mined.append(replace(ex, neg=draw(allowed, pool, ex, negative_number, rng, excluded), neg_scores=None))
    return Mined(mined, MiningStats(dropped, affected, topped_up), extra)


def mine(examples: Sequence[TrainExample], teacher, **options) -> list[TrainExample]:
    """The examples with ``neg`` replaced by mined hard negatives (scores dropped); see ``mine_with_stats``."""
    return mine_with_stats(examples, teacher, **options).examples
