"""Hard-negative mining: window, exclusion of positives, top-up, clamping, determinism, false-negative filter."""

import logging

import numpy as np

from flagops.data.formats import TrainExample
from flagops.mining.hard_negatives import MiningStats, Window, clamp_window, mine, mine_with_stats, sample_negatives


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


# --------------------------------------------------------------------------- false negatives


class TableTeacher:
    """Hand-made embeddings: query ``qK`` is the unit vector e_2K; a passage given score s for
    query K is s * e_2K + sqrt(1 - s^2) * e_2K+1, so its inner product with qK is exactly s and
    with every other query 0."""

    def __init__(self, scores: dict[str, dict[str, float]]):
        self.dim = 2 * len(scores)
        self.vectors = {}
        for k, (query, passages) in enumerate(scores.items()):
            self.vectors[query] = np.eye(self.dim, dtype=np.float32)[2 * k]
            for text, s in passages.items():
                v = np.zeros(self.dim, dtype=np.float32)
                v[2 * k], v[2 * k + 1] = s, np.sqrt(1 - s * s)
                self.vectors[text] = v

    def encode(self, texts, *, is_query=False, batch_size=32, progress=None):
        return np.stack([self.vectors[t] for t in texts])


def _one_query():
    """Ranks for q0: p .99 | a .96 | b .93 | c .85 | d .80 | e .70 | f .60 | g .30."""
    scores = {"p": 0.99, "a": 0.96, "b": 0.93, "c": 0.85, "d": 0.80, "e": 0.70, "f": 0.60, "g": 0.30}
    return [TrainExample(query="q0", pos=["p"], neg=list("abcdefg"))], TableTeacher({"q0": scores})


def test_absolute_filter_drops_window_candidates_above_the_threshold_before_sampling():
    examples, teacher = _one_query()
    window = dict(range_start=2, range_end=7, negative_number=4, seed=0)  # window ranks 2-6: b c d e f
    got = mine_with_stats(examples, teacher, **window, false_negatives="absolute", fn_threshold=0.9)
    assert sorted(got.examples[0].neg) == ["c", "d", "e", "f"]  # b (.93) dropped first, so 4 of 4 remain: no top-up
    assert got.stats == MiningStats(false_negatives_dropped=1, queries_with_false_negatives=1, queries_topped_up=0)


def test_top_up_never_brings_back_a_passage_above_the_threshold():
    examples, teacher = _one_query()
    window = dict(range_start=2, range_end=7, negative_number=5, seed=0)
    kept = mine_with_stats(examples, teacher, **window)
    assert sorted(kept.examples[0].neg) == ["b", "c", "d", "e", "f"] and kept.stats == MiningStats()
    got = mine_with_stats(examples, teacher, **window, false_negatives="absolute", fn_threshold=0.9)
    # a (.96, rank 1, before the window) and b (.93) are above 0.9: the top-up may only take g (rank 7)
    assert sorted(got.examples[0].neg) == ["c", "d", "e", "f", "g"]
    assert got.stats == MiningStats(false_negatives_dropped=1, queries_with_false_negatives=1, queries_topped_up=1)


def test_relative_filter_uses_each_querys_lowest_positive():
    teacher = TableTeacher(
        {
            "q0": {"p0a": 0.9, "p0b": 0.8, "x78": 0.78, "x77": 0.77, "x75": 0.75, "x70": 0.70, "x50": 0.5},
            "q1": {"p1": 0.6, "y59": 0.59, "y58": 0.58, "y56": 0.56, "y40": 0.4, "y30": 0.3, "y20": 0.2},
        }
    )
    examples = [
        TrainExample(query="q0", pos=["p0a", "p0b"], neg=["x78", "x77", "x75", "x70", "x50"]),
        TrainExample(query="q1", pos=["p1"], neg=["y59", "y58", "y56", "y40", "y30", "y20"]),
    ]
    got = mine_with_stats(examples, teacher, range_start=0, range_end=7, negative_number=3, false_negatives="relative", fn_margin=0.95)
    # q0: 0.95 x the lower positive (.8) = .76 drops x78, x77; the higher positive (.9 -> .855) would drop none.
    assert sorted(got.examples[0].neg) == ["x50", "x70", "x75"]
    # q1: 0.95 x .6 = .57 drops y59, y58; an absolute 0.9 would drop nothing here.
    assert set(got.examples[1].neg) < {"y56", "y40", "y30", "y20"} and len(got.examples[1].neg) == 3
    assert got.stats == MiningStats(false_negatives_dropped=4, queries_with_false_negatives=2, queries_topped_up=0)
    absolute = mine_with_stats(examples, teacher, range_start=0, range_end=7, negative_number=3, false_negatives="absolute")
    assert absolute.stats.false_negatives_dropped == 0


def test_keep_is_the_unfiltered_mining():
    examples = _examples(30)
    options = dict(range_start=1, range_end=10, negative_number=3, seed=7)
    kept = mine_with_stats(examples, OneHotTeacher(30), **options, false_negatives="keep", fn_threshold=-1.0, fn_margin=0.01)
    assert kept.examples == mine(examples, OneHotTeacher(30), **options) and kept.stats == MiningStats()


def test_step_prints_and_logs_the_dropped_count(tmp_path, monkeypatch, capsys):
    from flagops.config import load_config
    from flagops.data.formats import read_train_jsonl, write_train_jsonl
    from flagops.registry import tracking
    from flagops.steps import mine_hard_negatives

    logged = {}
    monkeypatch.setattr(tracking, "log_metrics", lambda metrics, step=None: logged.update(metrics))
    write_train_jsonl(tmp_path / "pairs.jsonl", [TrainExample(query=f"query {i}", pos=[f"passage {i}"]) for i in range(12)])
    # Every cosine is above -1: each query's whole window (ranks 0-4, its positive aside) goes.
    overrides = ["mining.range_start=0", "mining.range_end=5", "mining.negative_number=2", "mining.false_negatives=absolute"]
    cfg = load_config("tiny", [*overrides, "mining.fn_threshold=-1.0"])
    mine_hard_negatives.run(cfg, {"train_pairs": tmp_path / "pairs.jsonl"}, {"train_data": tmp_path / "mined.jsonl"})
    mined = list(read_train_jsonl(tmp_path / "mined.jsonl"))
    assert all(len(ex.neg) == 2 and ex.pos[0] not in ex.neg for ex in mined)  # topped up from ranks 5-11
    assert 12 * 4 <= logged["false_negatives_dropped"] <= 12 * 5
    assert logged["queries_with_false_negatives"] == 12 and logged["queries_topped_up"] == 12
    line = capsys.readouterr().out.splitlines()[-1]
    assert f"dropped {logged['false_negatives_dropped']} window candidates in 12 queries" in line, line


def test_step_searches_with_the_configured_index_and_logs_its_recall(tmp_path, monkeypatch, capsys):
    from flagops.config import load_config
    from flagops.data.formats import write_train_jsonl
    from flagops.registry import tracking
    from flagops.steps import mine_hard_negatives

    logged = {}
    monkeypatch.setattr(tracking, "log_metrics", lambda metrics, step=None: logged.update(metrics))
    monkeypatch.setenv("FLAGOPS_EMBEDDING_CACHE", str(tmp_path / "cache"))
    write_train_jsonl(tmp_path / "pairs.jsonl", [TrainExample(query=f"query {i}", pos=[f"passage {i}"]) for i in range(12)])
    overrides = ["mining.range_start=0", "mining.range_end=5", "mining.negative_number=2", "mining.index=hnsw"]
    cfg = load_config("tiny", [*overrides, "mining.hnsw_m=4", "mining.ef_search=16"])
    mine_hard_negatives.run(cfg, {"train_pairs": tmp_path / "pairs.jsonl"}, {"train_data": tmp_path / "mined.jsonl"})
    assert 0.9 <= logged["hnsw_recall@10"] <= 1.0  # 12 passages: HNSW finds them all
    out = capsys.readouterr().out
    assert "mine_hard_negatives: HNSW search, recall@10 against exact search" in out
    assert "M 4, efSearch >= 16" in out  # mining.hnsw_m and mining.ef_search reach the index
