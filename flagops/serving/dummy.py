"""Weightless models for API tests: the real request handling over fake outputs.

``DummyEmbedderModel`` is an ``EmbedderModel`` whose encoder is ``HashEncoder``,
``DummyM3Model`` an ``M3Model`` whose encoder is ``HashM3Encoder``, ``DummyVisualModel`` a
``VisualModel`` whose encoder is ``HashVisualEncoder`` and ``DummyRerankerModel``
a ``RerankerModel`` whose scorer is ``OverlapScorer``, so the HTTP surface (parsing,
validation, limits, batching, response shapes) is exactly the served one, without torch or
a model directory. Use them alongside the real-model tests, never instead. All count
whitespace words as tokens (no tokenizer here).
"""

from __future__ import annotations

import hashlib

import numpy as np

from flagops.config import ServeConfig
from flagops.serving.embedder_model import EmbedderModel
from flagops.serving.m3_model import MODES, M3Model, M3Row, SparseRow
from flagops.serving.reranker_model import RerankerModel
from flagops.serving.visual_model import VisualModel

DUMMY_MAX_LENGTH = 512  # "tokens" (words) per text or pair
DUMMY_VOCAB = 2**20  # the dummy M3's token ids: hashed words, so collisions are rare


def count_words(text: str) -> int:
    return len(text.split())


def hashed(key: str) -> int:
    """A 64-bit integer from a SHA-256 of ``key``."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")


def unit_vector(key: str, dim: int) -> np.ndarray:
    """A deterministic float32 unit vector (dim,) seeded by ``key``."""
    v = np.random.default_rng(hashed(key)).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


class HashEncoder:
    """A deterministic unit vector per (text, is_query), seeded by a SHA-256 of both."""

    def __init__(self, dim: int = 8):
        self.dim = dim

    def vector(self, text: str, *, is_query: bool) -> np.ndarray:
        return unit_vector(("query\0" if is_query else "passage\0") + text, self.dim)

    def max_length(self, *, is_query: bool) -> int:
        return DUMMY_MAX_LENGTH

    def token_lengths(self, texts: list[str], *, is_query: bool) -> list[int]:
        return [count_words(t) for t in texts]

    def encode(self, texts: list[str], *, is_query: bool, max_length: int) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # (n, dim)
        for i, text in enumerate(texts):
            out[i] = self.vector(text, is_query=is_query)
        return out


class HashM3Encoder(HashEncoder):
    """``HashEncoder``'s dense vectors; per lower-cased word, a hashed id and weight (sparse)
    and a hashed unit vector (ColBERT), for the first ``max_length`` words."""

    modes = MODES

    def __init__(self, dim: int = 8, colbert_dim: int = 4):
        super().__init__(dim)
        self.colbert_dim = colbert_dim

    @staticmethod
    def lexical(words: list[str]) -> SparseRow:
        distinct = sorted(set(words))
        ids = np.asarray([hashed("id\0" + w) % DUMMY_VOCAB for w in distinct], dtype=np.int64)
        weights = np.asarray([(hashed("weight\0" + w) % 1000 + 1) / 1000 for w in distinct], dtype=np.float32)
        order = np.lexsort((ids, -weights))  # heaviest first, as the real model's rows
        return SparseRow(ids[order], weights[order], [distinct[i] for i in order])

    def encode_rows(self, texts: list[str], *, is_query: bool, modes: tuple[str, ...], max_length: int) -> list[M3Row]:
        rows = []
        for text in texts:
            words = text.lower().split()[:max_length]
            rows.append(
                M3Row(
                    self.vector(text, is_query=is_query) if "dense" in modes else None,
                    self.lexical(words) if "sparse" in modes else None,
                    self.colbert(words) if "colbert" in modes else None,
                )
            )
        return rows

    def colbert(self, words: list[str]) -> np.ndarray:
        vectors = [unit_vector("colbert\0" + word, self.colbert_dim) for word in words]
        return np.asarray(vectors, dtype=np.float32).reshape(len(words), self.colbert_dim)  # (words, colbert_dim)


class OverlapScorer:
    """Score = how many distinct lower-cased words the query and the passage share."""

    def max_length(self) -> int:
        return DUMMY_MAX_LENGTH

    def token_lengths(self, pairs: list[tuple[str, str]]) -> list[int]:
        return [count_words(q) + count_words(p) for q, p in pairs]

    def score_pairs(self, pairs: list[tuple[str, str]], *, max_length: int) -> np.ndarray:
        return np.asarray([len(set(q.lower().split()) & set(p.lower().split())) for q, p in pairs], dtype=np.float32)


class DummyEmbedderModel(EmbedderModel):
    """``EmbedderModel`` with ``HashEncoder`` vectors; ``load`` reads nothing."""

    def __init__(self, name: str = "dummy", source: str = "dummy", serve_cfg: ServeConfig = ServeConfig(), dim: int = 8):
        super().__init__(name, source=source, serve_cfg=serve_cfg)
        self.vector_dim = dim

    def load_backend(self, source: str) -> HashEncoder:
        self.backend_name = "dummy"
        return HashEncoder(self.vector_dim)


class DummyRerankerModel(RerankerModel):
    """``RerankerModel`` with ``OverlapScorer`` scores; ``load`` reads nothing."""

    def __init__(self, name: str = "dummy", source: str = "dummy", serve_cfg: ServeConfig = ServeConfig()):
        super().__init__(name, source=source, serve_cfg=serve_cfg)

    def load_backend(self, source: str) -> OverlapScorer:
        self.backend_name = "dummy"
        return OverlapScorer()


class DummyM3Model(M3Model):
    """``M3Model`` with ``HashM3Encoder`` outputs; ``load`` reads nothing."""

    def __init__(self, name: str = "dummy", source: str = "dummy", serve_cfg: ServeConfig = ServeConfig()):
        super().__init__(name, source=source, serve_cfg=serve_cfg)

    def load_backend(self, source: str) -> HashM3Encoder:
        self.backend_name = "dummy"
        return HashM3Encoder()


class HashVisualEncoder(HashEncoder):
    """A deterministic unit vector per (image pixels, text), seeded by a SHA-256 of both."""

    def max_length(self) -> int:
        return DUMMY_MAX_LENGTH

    def token_lengths(self, texts: list[str]) -> list[int]:
        return [count_words(t) for t in texts]

    def encode(self, items, *, max_length: int) -> np.ndarray:
        keys = [("" if img is None else hashlib.sha256(img.tobytes()).hexdigest()) + "\0" + text for img, text in items]
        return np.asarray([unit_vector(key, self.dim) for key in keys], dtype=np.float32).reshape(len(items), self.dim)


class DummyVisualModel(VisualModel):
    """``VisualModel`` with ``HashVisualEncoder`` vectors; ``load`` reads nothing (images are still decoded)."""

    def __init__(self, name: str = "dummy", source: str = "dummy", serve_cfg: ServeConfig = ServeConfig()):
        super().__init__(name, source=source, serve_cfg=serve_cfg)

    def load_backend(self, source: str) -> HashVisualEncoder:
        self.backend_name = "dummy"
        return HashVisualEncoder()
