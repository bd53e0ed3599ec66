"""Query synthesis: a pluggable generator turns each passage into a (query, passage) pair.

The built-in ``heuristic`` generator takes a passage's first line (a docstring's summary)
as the query and keeps the rest, with the title, as the relevant passage. An LLM-backed
generator (``flagops.data.llm_synthesis``) makes its pairs concurrently and hands them to
``split_pairs``, with any LLM-written negatives.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from flagops.data.formats import EvalSet, Passage, TrainExample


class QueryGenerator(Protocol):
    def __call__(self, passage: Passage) -> tuple[str, Passage] | None:
        """Return (query, passage as it enters the corpus), or None to skip the passage."""


def heuristic_generator(passage: Passage) -> tuple[str, Passage] | None:
    summary, _, rest = passage.text.strip().partition("\n")
    summary, rest = summary.strip(), rest.strip()
    if not summary or not rest:
        return None
    return summary, Passage(passage.id, passage.title, rest, passage.group)


GENERATORS: dict[str, QueryGenerator] = {"heuristic": heuristic_generator}


@dataclass(frozen=True)
class Synthesized:
    train: list[TrainExample]
    eval_set: EvalSet
    test_groups: list[str]


def split_groups(groups: Sequence[str], test_fraction: float, seed: int) -> set[str]:
    """Pick whole groups for the test split until they hold ~test_fraction of the items."""
    sizes = Counter(groups)
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    target = test_fraction * len(groups)
    test: set[str] = set()
    held = 0
    for g in order:
        if held >= target:
            break
        test.add(g)
        held += sizes[g]
    return test


def synthesize(passages: Sequence[Passage], generator: QueryGenerator, test_fraction: float, seed: int) -> Synthesized:
    """Generate a query per passage with ``generator``, then ``split_pairs``."""
    return split_pairs([made for made in map(generator, passages) if made is not None], test_fraction, seed)


def split_pairs(
    pairs: Sequence[tuple[str, Passage]], test_fraction: float, seed: int, negatives: Mapping[str, Sequence[str]] | None = None
) -> Synthesized:
    """Drop ambiguous queries (the same query for two passages), split by group.

    ``negatives`` (by passage id) become the training examples' ``neg``."""
    negatives = negatives or {}
    counts = Counter(q.casefold() for q, _ in pairs)
    corpus = [p for _, p in pairs]
    unique = [(q, p) for q, p in pairs if counts[q.casefold()] == 1]
    group_of = {p.id: p.group if p.group is not None else p.id for _, p in unique}
    test_groups = split_groups([group_of[p.id] for _, p in unique], test_fraction, seed)
    train: list[TrainExample] = []
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for i, (q, p) in enumerate(unique):
        if group_of[p.id] in test_groups:
            qid = f"q{i}"
            queries[qid] = q
            qrels[qid] = {p.id: 1}
        else:
            train.append(TrainExample(query=q, pos=[p.full_text], neg=list(negatives.get(p.id, ()))))
    return Synthesized(train, EvalSet(corpus, queries, qrels), sorted(test_groups))
