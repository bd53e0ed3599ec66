"""A weightless embedder for API tests: the real request handling over fake vectors.

``DummyEmbedderModel`` is an ``EmbedderModel`` whose encoder is ``HashEncoder``, so the
HTTP surface (parsing, validation, response shapes) is exactly the served one, without
torch or a model directory. Use it alongside the real-model tests, never instead.
"""

from __future__ import annotations

import hashlib

import numpy as np

from flagops.config import ServeConfig
from flagops.serving.embedder_model import EmbedderModel


class HashEncoder:
    """A deterministic unit vector per (text, is_query), seeded by a SHA-256 of both."""

    def __init__(self, dim: int = 8):
        self.dim = dim

    def vector(self, text: str, *, is_query: bool) -> np.ndarray:
        key = ("query\0" if is_query else "passage\0") + text
        seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode(self, texts: list[str], *, is_query: bool) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # (n, dim)
        for i, text in enumerate(texts):
            out[i] = self.vector(text, is_query=is_query)
        return out

    def count_tokens(self, texts: list[str], *, is_query: bool) -> int:
        return sum(len(t.split()) for t in texts)  # whitespace words: no tokenizer here


class DummyEmbedderModel(EmbedderModel):
    """``EmbedderModel`` with ``HashEncoder`` vectors; ``load`` reads nothing."""

    def __init__(self, name: str = "dummy", serve_cfg: ServeConfig = ServeConfig(), dim: int = 8):
        super().__init__(name, source="dummy", serve_cfg=serve_cfg)
        self.vector_dim = dim

    def load(self) -> bool:
        self.encoder = HashEncoder(self.vector_dim)
        self.ready = True
        return self.ready
