"""Corpus building and query synthesis."""

import json

import pytest

from flagops.data import corpus
from flagops.data.formats import DataError, Passage
from flagops.data.synthesis import heuristic_generator, split_groups, synthesize


def test_stdlib_corpus_is_real_documentation():
    passages = corpus.stdlib_passages(min_chars=150)
    assert len(passages) > 500  # ~990 on CPython 3.11
    ids = [p.id for p in passages]
    assert len(ids) == len(set(ids))
    json_dumps = next(p for p in passages if p.id == "json.dumps")
    assert json_dumps.group == "json" and "JSON" in json_dumps.text
    assert corpus.stdlib_passages(min_chars=150) == passages  # deterministic


def test_max_passages_keeps_modules_spread():
    few = corpus.build("stdlib", 150, 100)
    assert len(few) == 100 and len({p.group for p in few}) > 20


def test_user_corpus_and_beir_folder(tmp_path):
    rows = [{"_id": "a", "title": "T", "text": "Summary line.\nBody text here."}]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert corpus.build(str(tmp_path / "corpus.jsonl"), 0, None) == corpus.build(str(tmp_path), 0, None)
    with pytest.raises(DataError, match="corpus.source not found"):
        corpus.build(str(tmp_path / "missing.jsonl"), 0, None)


def test_heuristic_generator_splits_summary():
    q, p = heuristic_generator(Passage("m.f", "m.f", "Do a thing.\n\nLonger explanation.", "m"))
    assert q == "Do a thing." and p.text == "Longer explanation." and p.title == "m.f"
    assert heuristic_generator(Passage("x", "", "only one line", None)) is None


def test_split_by_group_has_no_leakage():
    passages = [Passage(f"{g}.{i}", f"{g}.{i}", f"Query {g} {i}.\nBody {g} {i}.", g) for g in "abcdefghij" for i in range(5)]
    result = synthesize(passages, heuristic_generator, test_fraction=0.2, seed=1)
    test_docs = {d for rel in result.eval_set.qrels.values() for d in rel}
    test_groups = {d.split(".")[0] for d in test_docs}
    train_groups = {ex.pos[0].split(".")[0] for ex in result.train}
    assert test_groups == set(result.test_groups) and not (test_groups & train_groups)
    assert len(result.eval_set.corpus) == 50  # the whole corpus is searched at test time
    assert len(result.eval_set.queries) == 10


def test_ambiguous_queries_are_dropped():
    passages = [Passage("a", "", "Same.\nbody a", "g1"), Passage("b", "", "same.\nbody b", "g2"), Passage("c", "", "Other.\nbody c", "g3")]
    result = synthesize(passages, heuristic_generator, 0.5, 0)
    texts = [ex.query for ex in result.train] + list(result.eval_set.queries.values())
    assert texts == ["Other."]


def test_split_groups_reaches_fraction():
    groups = ["a"] * 10 + ["b"] * 10 + ["c"] * 10 + ["d"] * 10
    test = split_groups(groups, 0.25, seed=3)
    assert len(test) == 1
