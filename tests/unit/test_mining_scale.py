"""Mining at scale: the pool's embedding cache, IVF above a pool size with its recall."""

import hashlib

import numpy as np
import pytest

from flagops.data.formats import TrainExample
from flagops.evaluation.index import IndexSettings, index_settings
from flagops.mining.hard_negatives import mine_with_stats, search
from flagops.models.embedder import Embedder


class RandomTeacher:
    """Each text a fixed random unit vector (seeded by its hash); query ``qK`` is near passage ``pK``."""

    dim = 16

    def vector(self, text: str) -> np.ndarray:
        seed = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)
        v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode(self, texts, *, is_query=False, batch_size=32, progress=None):
        rows = [self.vector("p" + t[1:]) + 0.3 * self.vector(t) if is_query else self.vector(t) for t in texts]
        return np.stack([r / np.linalg.norm(r) for r in rows])


def _examples(n: int):
    return [TrainExample(query=f"q{i}", pos=[f"p{i}"]) for i in range(n)]


def test_second_mining_run_reads_the_pool_from_the_cache(tmp_path, tiny_embedder, monkeypatch):
    examples = [TrainExample(query=f"query {i}", pos=[f"passage number {i} " * (1 + i % 5)]) for i in range(40)]
    options = dict(range_start=2, range_end=20, negative_number=4, seed=3)
    calls = []
    real = Embedder.encode

    def spy(self, texts, *, is_query=False, **kw):
        calls.append((is_query, len(texts)))
        return real(self, texts, is_query=is_query, **kw)

    monkeypatch.setattr(Embedder, "encode", spy)
    with index_settings(IndexSettings(cache_dir=tmp_path / "cache")):
        first = mine_with_stats(examples, tiny_embedder, **options)
        second = mine_with_stats(examples, tiny_embedder, **options)
    assert calls == [(True, 40), (False, 40), (True, 40)]  # the pool once, the queries each time
    assert first == second and len(list((tmp_path / "cache").glob("*.npy"))) == 1


def test_flat_search_reports_no_recall_and_ivf_with_every_list_is_the_flat_output():
    examples = _examples(400)
    options = dict(range_start=5, range_end=60, negative_number=6, seed=1)
    with index_settings(IndexSettings(cache_dir=None)):
        flat = mine_with_stats(examples, RandomTeacher(), **options)
    with index_settings(
        IndexSettings(cache_dir=None, ivf_above=100, ivf_min_queries=0, nprobe=10_000)
    ):  # nprobe clamps to nlist: exhaustive
        ivf = mine_with_stats(examples, RandomTeacher(), **options)
    assert flat.search == {}
    assert ivf.search == {"ivf_recall@10": pytest.approx(1.0)}
    assert ivf.examples == flat.examples


def test_ivf_with_one_probe_loses_recall_and_says_so():
    teacher = RandomTeacher()
    pool = teacher.encode([f"p{i}" for i in range(400)])
    queries = teacher.encode([f"q{i}" for i in range(100)], is_query=True)
    _, _, extra = search(queries, pool, 30, IndexSettings(cache_dir=None, method="ivf", nprobe=1))
    assert 0.0 < extra["ivf_recall@10"] < 0.9
    scores, ranked, extra = search(queries, pool, 30, IndexSettings(cache_dir=None))
    exact = np.argsort(-(queries @ pool.T), axis=1, kind="stable")[:, :30]
    assert extra == {} and (ranked == exact).mean() > 0.999


def test_hnsw_mining_reports_its_recall_and_a_tiny_ef_search_loses_some():
    teacher = RandomTeacher()
    pool = teacher.encode([f"p{i}" for i in range(2000)])
    queries = teacher.encode([f"q{i}" for i in range(100)], is_query=True)
    _, ranked, extra = search(queries, pool, 30, IndexSettings(cache_dir=None, method="hnsw"))
    exact = np.argsort(-(queries @ pool.T), axis=1, kind="stable")[:, :30]
    assert extra["hnsw_recall@10"] > 0.95  # efSearch is raised to k=30 at least
    assert np.mean([len(set(a) & set(b)) / 30 for a, b in zip(ranked, exact, strict=True)]) > 0.9
    _, _, poor = search(queries, pool, 30, IndexSettings(cache_dir=None, method="hnsw", hnsw_m=2, ef_search=1))
    assert poor["hnsw_recall@10"] < extra["hnsw_recall@10"]


def test_index_method_settings_and_the_mining_config_key_validate():
    from flagops.config import MiningConfig

    assert MiningConfig().index == "auto"
    with pytest.raises(ValueError, match="index"):
        MiningConfig(index="annoy")
    with pytest.raises(ValueError, match="unknown index method 'annoy'"):
        IndexSettings(method="annoy")
    assert IndexSettings(ivf_above=10).method_for(10, 10_000) == "flat"
    assert IndexSettings(ivf_above=10).method_for(11, 10_000) == "ivf"
    assert IndexSettings(ivf_above=10).method_for(11, 9_999) == "flat"  # too few queries for IVF's build to pay
    assert IndexSettings(ivf_above=10, ivf_min_queries=0).method_for(11, 1) == "ivf"
    assert IndexSettings(method="hnsw").method_for(5, 1) == "hnsw"


def test_the_mining_config_defaults_are_the_index_defaults():
    """mining.* index keys are IndexSettings' fields under the same names, with the same defaults."""
    from flagops.config import MiningConfig
    from flagops.steps.mine_hard_negatives import INDEX_KEYS

    assert {key: getattr(MiningConfig(), key) for key in INDEX_KEYS} == {key: getattr(IndexSettings(), key) for key in INDEX_KEYS}
    with pytest.raises(ValueError, match="hnsw_m"):
        MiningConfig(hnsw_m=1)
