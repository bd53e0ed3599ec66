"""Teacher scores: ``pos_scores``/``neg_scores`` from a reranker, for distillation.

Each (query, passage) pair gets the reranker's raw score, a logit with no sigmoid, as
FlagEmbedding's ``add_reranker_score`` writes by default: the KD losses take a softmax
over each group of them. Pairs repeat (a query in several rows, a positive also listed as
a negative), so every distinct pair is scored once, in one batched pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from flagops.data.formats import TrainExample


def unique_pairs(examples: Sequence[TrainExample]) -> list[tuple[str, str]]:
    """Every distinct (query, passage) pair of the examples' positives and negatives, in order."""
    return list(dict.fromkeys((ex.query, p) for ex in examples for p in (*ex.pos, *ex.neg)))


def score_examples(examples: Sequence[TrainExample], reranker, batch_size: int = 32) -> list[TrainExample]:
    """The examples with ``pos_scores``/``neg_scores`` set (replaced) to ``reranker``'s raw scores."""
    pairs = unique_pairs(examples)
    score = dict(zip(pairs, reranker.score_pairs(pairs, batch_size=batch_size).tolist(), strict=True))
    return [
        replace(ex, pos_scores=[score[ex.query, p] for p in ex.pos], neg_scores=[score[ex.query, n] for n in ex.neg]) for ex in examples
    ]
