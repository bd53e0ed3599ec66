"""Weightless models for API tests: the real request handling over fake outputs.

``DummyEmbedderModel`` is an ``EmbedderModel`` whose encoder is ``HashEncoder`` and
``DummyRerankerModel`` a ``RerankerModel`` whose scorer is ``OverlapScorer``, so the HTTP
surface (parsing, validation, limits, batching, response shapes) is exactly the served
one, without torch or a model directory. Use them alongside the real-model tests, never
instead. Both count whitespace words as tokens (no tokenizer here).
"""

from __future__ import annotations

import hashlib

import numpy as np

from flagops.config import ServeConfig
from flagops.serving.embedder_model import EmbedderModel
from flagops.serving.reranker_model import RerankerModel

DUMMY_MAX_LENGTH = 512  # "tokens" (words) per text or pair


def count_words(text: str) -> int:
    return len(text.split())


class HashEncoder:
    """A deterministic unit vector per (text, is_query), seeded by a SHA-256 of both."""

    def __init__(self, dim: int = 8):
        self.dim = dim

    def vector(self, text: str, *, is_query: bool) -> np.ndarray:
        key = ("query\0" if is_query else "passage\0") + text
        seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def max_length(self, *, is_query: bool) -> int:
        return DUMMY_MAX_LENGTH

    def token_lengths(self, texts: list[str], *, is_query: bool) -> list[int]:
        return [count_words(t) for t in texts]

    def encode(self, texts: list[str], *, is_query: bool, max_length: int) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # (n, dim)
        for i, text in enumerate(texts):
            out[i] = self.vector(text, is_query=is_query)
        return out


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

    def __init__(
        self, name: str = "dummy", source: str = "dummy", serve_cfg: ServeConfig = ServeConfig(), dim: int = 8
    ):
        super().__init__(name, source=source, serve_cfg=serve_cfg)
        self.vector_dim = dim

    def load(self) -> bool:
        self.encoder = HashEncoder(self.vector_dim)
        self.ready = True
        return self.ready


class DummyRerankerModel(RerankerModel):
    """``RerankerModel`` with ``OverlapScorer`` scores; ``load`` reads nothing."""

    def __init__(self, name: str = "dummy", source: str = "dummy", serve_cfg: ServeConfig = ServeConfig()):
        super().__init__(name, source=source, serve_cfg=serve_cfg)

    def load(self) -> bool:
        self.scorer = OverlapScorer()
        self.ready = True
        return self.ready
