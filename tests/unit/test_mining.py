"""Hard-negative mining: window, exclusion of positives, top-up, clamping, determinism."""

import logging

import numpy as np

from flagops.data.formats import TrainExample
from flagops.mining.hard_negatives import Window, clamp_window, mine, sample_negatives


class OneHotTeacher:
    """Passage i is e_i; a query 'qK' scores passage j as 1/(1+|j-K|): rank = distance from K."""

    def __init__(self, pool_size: int):
        self.n = pool_size

    def encode(self, texts, *, is_query=False, batch_size=32, progress=None):
        out = np.zeros((len(texts), self.n), dtype=np.float32)
        for row, t in enumerate(texts):
            if is_query:
                k = int(t[1:])
                out[row] = [1.0 / (1 + abs(j - k)) - 1e-4 * j for j in range(self.n)]  # no ties
            else:
                out[row, int(t[1:])] = 1.0
        return out


def _examples(n: int):
    return [TrainExample(query=f"q{i}", pos=[f"p{i}"]) for i in range(n)]


def test_negatives_come_from_the_rank_window_and_exclude_positives():
    examples = _examples(40)
    mined = mine(examples, OneHotTeacher(40), range_start=2, range_end=6, negative_number=4, seed=0)
    teacher = OneHotTeacher(40)
    for i, ex in enumerate(mined):
        scores = teacher.encode([f"q{i}"], is_query=True)[0]
        window = {f"p{j}" for j in np.argsort(-scores)[2:6]}
        assert f"p{i}" not in ex.neg
        assert set(ex.neg) == window, (i, ex.neg, window)  # rank 0 is the positive, outside the window
        assert len(ex.neg) == 4 and len(set(ex.neg)) == 4


def test_exclusion_by_exact_text_when_a_positive_repeats_in_the_pool():
    ex = TrainExample(query="q0", pos=["p1"], neg=["p1", "p2"])
    pool = ["p0", "p1", "p2", "p3"]
    got = sample_negatives([1, 0, 2, 3], pool, ex, Window(0, 4), 3, __import__("random").Random(0))
    assert "p1" not in got and sorted(got) == ["p0", "p2", "p3"]


def test_top_up_with_random_passages_when_window_is_short():
    import random

    ex = TrainExample(query="q0", pos=["p0"])
    pool = [f"p{i}" for i in range(10)]
    got = sample_negatives([0, 1, 2], pool, ex, Window(0, 3), 5, random.Random(1))
    assert len(got) == 5 and "p0" not in got and {"p1", "p2"} <= set(got)


def test_window_clamped_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        w = clamp_window(10, 210, pool_size=50, negatives=15)
    assert w == Window(10, 50) and "clamping" in caplog.text
    assert clamp_window(10, 210, pool_size=12, negatives=15) == Window(0, 12)
    assert clamp_window(10, 210, pool_size=500, negatives=15) == Window(10, 210)


def test_seeded_and_deterministic():
    examples = _examples(30)
    a = mine(examples, OneHotTeacher(30), range_start=1, range_end=10, negative_number=3, seed=7)
    b = mine(examples, OneHotTeacher(30), range_start=1, range_end=10, negative_number=3, seed=7)
    c = mine(examples, OneHotTeacher(30), range_start=1, range_end=10, negative_number=3, seed=8)
    assert a == b and a != c
