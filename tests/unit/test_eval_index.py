"""flagops.evaluation.index: the passage-embedding cache, chunked encoding, flat and IVF faiss search."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from flagops.cli import main
from flagops.data.formats import EvalSet, Passage
from flagops.evaluation.index import (
    IndexSettings,
    corpus_hash,
    corpus_search,
    encode_to_file,
    exact_top_k,
    index_settings,
    model_hash,
    recall_at_k,
)
from flagops.evaluation.retrieval import dense_search
from flagops.evaluation.suite import load_task, score_task

BEIR = Path(__file__).resolve().parents[1] / "fixtures" / "eval" / "stdlib_beir"


@pytest.fixture(scope="module")
def task():
    return load_task(str(BEIR))


@pytest.fixture
def passage_calls(tiny_embedder, monkeypatch):
    """The embedder's passage encode calls, as the number of texts in each."""
    calls: list[int] = []
    encode = tiny_embedder.encode

    def spy(texts, **kwargs):
        if not kwargs["is_query"]:
            calls.append(len(texts))
        return encode(texts, **kwargs)

    monkeypatch.setattr(tiny_embedder, "encode", spy)
    return calls


def test_exact_top_k_by_hand():
    # Queries (1, 0) and (0, 1) over 5 docs read 2 at a time; inner products [3, 1, 2, 0, 2.5] and [0, 4, 1, 5, 0].
    emb = np.array([[3, 0], [1, 4], [2, 1], [0, 5], [2.5, 0]], dtype=np.float32)
    queries = np.array([[1, 0], [0, 1]], dtype=np.float32)
    assert exact_top_k(queries, emb, 3, chunk=2).tolist() == [[3, 2.5, 2], [5, 4, 1]]


def test_recall_at_k_by_hand():
    exact = np.array([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]])
    # row 1: 0.9 and 0.7 found, 0.5 is not in the exact top 3 -> 2/3; row 2: a passage tied with the
    # third best counts, IVF found only two -> 2/3
    found = np.array([[0.9, 0.7, 0.5], [0.6, 0.4, -np.inf]])
    assert recall_at_k(found, exact) == pytest.approx(2 / 3)
    assert recall_at_k(exact, exact) == 1.0


def test_second_run_reads_the_cache_and_scores_identically(tmp_path, tiny_embedder, task, passage_calls):
    with index_settings(IndexSettings(cache_dir=tmp_path)):
        first = score_task(task, tiny_embedder, is_reranker=False, batch_size=64)
        assert passage_calls == [199]
        second = score_task(task, tiny_embedder, is_reranker=False, batch_size=64)
    assert passage_calls == [199]  # not encoded again
    assert second == first
    assert [p.suffix for p in tmp_path.iterdir()] == [".npy"]  # one file, no leftover temporary folder


def test_no_cache_encodes_each_time_and_writes_nothing(tmp_path, tiny_embedder, task, passage_calls):
    with index_settings(IndexSettings(cache_dir=None)):
        first = score_task(task, tiny_embedder, is_reranker=False, batch_size=64)
        second = score_task(task, tiny_embedder, is_reranker=False, batch_size=64)
    assert passage_calls == [199, 199]
    assert second == first


def test_flat_search_is_the_exact_search(tmp_path, tiny_embedder, task):
    with index_settings(IndexSettings(cache_dir=tmp_path)):
        run, extra = corpus_search(task.data, tiny_embedder, 64, top_k=100)
    assert extra == {}
    docs = tiny_embedder.encode([p.full_text for p in task.data.corpus], is_query=False, batch_size=64)
    queries = tiny_embedder.encode(list(task.data.queries.values()), is_query=True, batch_size=64)
    want = dense_search(queries, docs, list(task.data.queries), [p.id for p in task.data.corpus], 100)
    assert run.keys() == want.keys()
    for qid, docs_scores in want.items():  # the same top-100 scores (the random tiny model's ids tie within 1e-6)
        assert sorted(run[qid].values()) == pytest.approx(sorted(docs_scores.values()), abs=1e-5)


def test_chunks_stream_into_the_file(tmp_path, tiny_embedder, task, passage_calls):
    corpus = task.data.corpus
    encode_to_file(tmp_path / "p.npy", corpus, tiny_embedder, batch_size=32, chunk=64, label="")
    assert passage_calls == [64, 64, 64, 7]
    whole = tiny_embedder.encode([p.full_text for p in corpus], is_query=False, batch_size=32)
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), whole, atol=1e-5)


def test_a_crash_mid_encode_leaves_nothing_to_read(tmp_path, tiny_embedder, task, monkeypatch):
    encode = tiny_embedder.encode
    calls = []

    def crash_on_second_chunk(texts, **kwargs):
        calls.append(kwargs["is_query"])
        if crash and calls.count(False) == 2:
            raise RuntimeError("killed")
        return encode(texts, **kwargs)

    crash = True

    monkeypatch.setattr(tiny_embedder, "encode", crash_on_second_chunk)
    settings = IndexSettings(cache_dir=tmp_path, chunk=100)
    with index_settings(settings), pytest.raises(RuntimeError, match="killed"):
        corpus_search(task.data, tiny_embedder, 64, top_k=10)
    assert list(tmp_path.iterdir()) == []
    crash = False
    calls.clear()
    with index_settings(settings):
        corpus_search(task.data, tiny_embedder, 64, top_k=10)  # encodes afresh: nothing partial was read
    assert calls.count(False) == 2


def test_cache_keys_follow_what_shapes_the_vectors(tiny_embedder, task):
    corpus = task.data.corpus
    key = corpus_hash(corpus, tiny_embedder)
    edited = [replace(corpus[0], text=corpus[0].text + " "), *corpus[1:]]
    assert corpus_hash(edited, tiny_embedder) != key
    settings = tiny_embedder.settings
    try:
        tiny_embedder.settings = replace(settings, passage_max_len=32)
        assert corpus_hash(corpus, tiny_embedder) != key
        tiny_embedder.settings = replace(settings, pooling="mean")
        assert corpus_hash(corpus, tiny_embedder) != key
        tiny_embedder.settings = replace(settings, query_instruction="query: ")  # queries are not cached
        assert corpus_hash(corpus, tiny_embedder) == key
    finally:
        tiny_embedder.settings = settings


def test_model_hash_is_the_directory_content(tmp_path, tiny_embedder):
    from flagops.models.embedder import Embedder
    from flagops.models.sources import resolve_model_source

    key = model_hash(tiny_embedder)
    assert model_hash(Embedder.load("tiny-bert@1")) != key
    copy = tmp_path / "copy"
    shutil.copytree(resolve_model_source("tiny-bert"), copy)  # the same files elsewhere: the same hash
    assert model_hash(Embedder.load(copy)) == key
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))
    assert model_hash(Embedder.load(copy)) != key
    assert model_hash(object()) is None


class PlantedEncoder:
    """Random unit passages in 32 dimensions; each query is its relevant passage plus noise.

    The random tiny BERT puts every passage within 1e-4 cosine of every other, so IVF's lists say
    nothing there; these vectors spread like a trained model's.
    """

    def __init__(self, eval_set: EvalSet, noise: float = 0.6):
        rng = np.random.default_rng(0)
        self.vectors = {p.full_text: rng.standard_normal(32) for p in eval_set.corpus}
        text = {p.id: p.full_text for p in eval_set.corpus}
        for qid, qtext in eval_set.queries.items():
            relevant = np.mean([self.vectors[text[d]] for d in eval_set.qrels[qid]], axis=0)
            self.vectors[qtext] = relevant + noise * rng.standard_normal(32) * np.linalg.norm(relevant) / np.sqrt(32)

    def encode(self, texts, *, is_query, batch_size, progress=None):
        emb = np.stack([self.vectors[t] for t in texts]).astype(np.float32)
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_ivf_above_the_threshold_reports_its_recall(task):
    encoder = PlantedEncoder(task.data)

    def scores(**settings):
        with index_settings(IndexSettings(cache_dir=None, **settings)):
            return score_task(task, encoder, is_reranker=False, batch_size=64)

    flat = scores()
    ivf = scores(ivf_above=50, ivf_min_queries=0)  # 199 passages: nlist 56, nprobe 32
    narrow = scores(ivf_above=50, ivf_min_queries=0, nprobe=1)
    every = scores(ivf_above=50, ivf_min_queries=0, nprobe=56)  # every list: exhaustive
    few_queries = scores(ivf_above=50)  # under ivf_min_queries (10,000) queries: exact, IVF would not pay
    assert "ivf_recall@10" not in flat and few_queries == flat
    assert flat["ndcg@10"] > 0.5
    assert narrow["ivf_recall@10"] < ivf["ivf_recall@10"] < 1.0
    assert ivf["ndcg@10"] == pytest.approx(flat["ndcg@10"], abs=0.05)
    assert narrow["ndcg@10"] < flat["ndcg@10"]
    assert every["ivf_recall@10"] == 1.0
    assert every["ndcg@10"] == pytest.approx(flat["ndcg@10"], abs=1e-9)


def test_exhaustive_ivf_on_a_real_tiny_model_loses_nothing(tmp_path, tiny_embedder, task):
    with index_settings(IndexSettings(cache_dir=tmp_path, method="ivf", nprobe=56)):
        got = score_task(task, tiny_embedder, is_reranker=False, batch_size=64)
    assert got["ivf_recall@10"] == 1.0  # its near-ties count as found


def test_cli_cache_and_ivf_flags(tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = [
        "eval",
        "--model",
        "tiny-bert",
        "--task",
        str(BEIR),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--ivf-above",
        "50",
        "--ivf-min-queries",
        "0",
    ]
    assert main([*args, "--out", str(out)]) == 0
    first = json.loads(out.read_text())["rows"][0]["metrics"]
    assert 0 < first["ivf_recall@10"] <= 1
    assert "cached 199 embeddings" in capsys.readouterr().out
    assert main([*args, "--out", str(out)]) == 0
    assert "199 embeddings from the cache" in capsys.readouterr().out
    assert json.loads(out.read_text())["rows"][0]["metrics"] == first
    assert main(["eval", "--model", "tiny-bert", "--task", str(BEIR), "--no-cache", "--cache-dir", str(tmp_path / "none")]) == 0
    assert not (tmp_path / "none").exists()
    with pytest.raises(SystemExit):
        main(["eval", "--model", "tiny-bert", "--task", str(BEIR), "--nprobe", "0"])


def test_ids_come_back_for_a_corpus_smaller_than_top_k(tmp_path, tiny_embedder):
    eval_set = EvalSet([Passage("a", "", "alpha"), Passage("b", "", "beta")], {"q": "alpha"}, {"q": {"a": 1}})
    with index_settings(IndexSettings(cache_dir=tmp_path)):
        run, _ = corpus_search(eval_set, tiny_embedder, 8, top_k=100)
    assert set(run["q"]) == {"a", "b"}


def test_model_hash_tells_int8_from_fp32():
    """An int8 model's vectors differ from its fp32 ones: the two must not share cached passages."""
    from flagops.models.embedder import Embedder
    from flagops.models.quantize import quantize_int8

    fp32 = model_hash(Embedder.load("tiny-bert"))
    assert model_hash(quantize_int8(Embedder.load("tiny-bert"))) != fp32


def test_cli_index_hnsw_reports_hnsw_recall(tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["eval", "--model", "tiny-bert", "--task", str(BEIR), "--no-cache", "--index", "hnsw", "--out", str(out)]
    assert main(args) == 0
    metrics = json.loads(out.read_text())["rows"][0]["metrics"]
    assert metrics["hnsw_recall@10"] > 0.9 and "ivf_recall@10" not in metrics
    assert "HNSW search (faiss IndexHNSWFlat) over 199 passages: M 32, efSearch >= 128" in capsys.readouterr().out
    assert main(args + ["--hnsw-m", "4", "--ef-search", "8"]) == 0
    assert "over 199 passages: M 4, efSearch >= 8" in capsys.readouterr().out
