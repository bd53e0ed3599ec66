"""build_ood_eval: numpy/scipy docstrings as a BEIR set no step trains on (the real installed packages)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy
import pytest
import scipy

from flagops.config import FlagopsConfig, OodEvalConfig
from flagops.data.corpus import module_passages, stdlib_passages
from flagops.data.formats import DataError, read_beir
from flagops.data.synthesis import heuristic_generator
from flagops.steps import build_ood_eval


def build(out: Path, **ood) -> Path:
    build_ood_eval.run(FlagopsConfig(ood_eval=OodEvalConfig(**ood)), {}, {"ood_eval_set": out})
    return out


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default_set(tmp_path_factory) -> Path:
    """The step with the default module list, run once for this file."""
    return build(tmp_path_factory.mktemp("ood") / "ood_eval_set")


def test_reads_back_as_beir_with_every_query_a_test_query(default_set):
    eval_set = read_beir(default_set)
    assert 300 <= len(eval_set.queries) <= 500 and len(eval_set.corpus) == 500  # the default cap
    assert all(len(rel) == 1 for rel in eval_set.qrels.values())
    written = [json.loads(line)["_id"] for line in (default_set / "queries.jsonl").read_text().splitlines()]
    assert sorted(written) == sorted(eval_set.qrels)  # no query is left without a judgement
    source = json.loads((default_set / "source.json").read_text())
    assert source["versions"] == {"numpy": numpy.__version__, "scipy": scipy.__version__}
    assert source["modules"] == list(OodEvalConfig().modules)
    assert any(p.id == "numpy.linalg.norm" for p in module_passages(["numpy.linalg"], 150))  # a wrapped (dispatcher) function


def test_no_passage_overlaps_the_stdlib_corpus(default_set):
    stdlib = stdlib_passages(150)
    stdlib_texts = {p.text for p in stdlib} | {heuristic_generator(p)[1].text for p in stdlib if heuristic_generator(p)}
    corpus = read_beir(default_set).corpus
    assert not {p.id for p in corpus} & {p.id for p in stdlib}
    assert not {p.text for p in corpus} & stdlib_texts
    assert all(p.id.startswith(("numpy.", "scipy.")) for p in corpus)


def test_two_runs_are_byte_identical(default_set, tmp_path):
    again = build(tmp_path / "again")
    assert files(again) == files(default_set)
    assert set(files(again)) == {"corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "source.json"}


def test_unknown_module_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out" / "ood_eval_set"
    with pytest.raises(DataError, match=r"ood_eval\.modules: cannot import 'numpy\.no_such_module'") as err:
        build(out, modules=("numpy", "numpy.no_such_module"))
    assert "\n" not in str(err.value) and "install" in str(err.value)
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_max_passages_caps_and_keeps_modules_spread(tmp_path):
    eval_set = read_beir(build(tmp_path / "small", max_passages=20))
    assert len(eval_set.corpus) == 20 and 0 < len(eval_set.queries) <= 20
    group_of = {p.id: p.group for p in module_passages(OodEvalConfig().modules, 150)}
    assert len({group_of[p.id] for p in eval_set.corpus}) >= 6  # evenly spaced, not the first 20
