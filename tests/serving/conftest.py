"""Real servers for the serving tests, one subprocess each, started once per session.

Each is ``flagops serve`` on a free loopback port:

* ``real_server``: the tiny random BERT embedder (``tiny-bert``), checked against ``Embedder``;
  truncates at 64 tokens;
* ``dummy_server``: the hash-vector embedder, for the API surface: strict, rejects texts over
  50 words, caps bodies at 64 KiB;
* ``reranker_server``: the tiny random cross-encoder (``tiny-reranker``, kind read from the
  directory), checked against ``CrossEncoderReranker``; rejects pairs over 64 tokens;
* ``dummy_reranker_server``: the word-overlap reranker, non-strict (unknown fields ignored);
* ``m3_server``: a tiny random M3 (``tiny_m3_dir``, kind read from the directory), checked
  against ``M3Embedder.encode_m3``;
* ``dummy_m3_server``: the hashed-word M3, strict.
"""

from __future__ import annotations

import pytest
from serving_helpers import DUMMY_MAX_TOKENS, LIMITS, MAX_BODY_BYTES, RERANKER_MAX_TOKENS, start_server, stop_server


@pytest.fixture(scope="session")
def real_server(tmp_path_factory):
    from flagops.models.embedder import Embedder

    Embedder.load("tiny-bert")  # builds the tiny model into the cache here, so the server only reads it
    # No --host: the default must be loopback (see test_listens_on_loopback_by_default).
    args = ["--model", "tiny-bert", *LIMITS, "serve.max_tokens=64", "serve.max_wait_ms=20"]
    server = start_server(tmp_path_factory.mktemp("real") / "server.log", "tiny", *args)
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def dummy_server(tmp_path_factory):
    args = ["--dummy", *LIMITS, "serve.truncation=reject", f"serve.max_tokens={DUMMY_MAX_TOKENS}"]
    args += [f"serve.max_body_bytes={MAX_BODY_BYTES}", "serve.max_wait_ms=20"]
    server = start_server(tmp_path_factory.mktemp("dummy") / "server.log", "dummy", *args)
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def reranker_server(tmp_path_factory):
    from flagops.models.reranker import ensure_tiny_reranker

    ensure_tiny_reranker()  # built here, so the server only reads it
    args = ["--model", "tiny-reranker", *LIMITS, "serve.truncation=reject", f"serve.max_tokens={RERANKER_MAX_TOKENS}"]
    server = start_server(tmp_path_factory.mktemp("reranker") / "server.log", "tiny-rr", *args)
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def dummy_reranker_server(tmp_path_factory):
    args = ["--dummy", "--kind", "reranker", *LIMITS, "serve.strict=false", "serve.max_wait_ms=20"]
    server = start_server(tmp_path_factory.mktemp("dummy-rr") / "server.log", "dummy-rr", *args)
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def tiny_m3_dir(tmp_path_factory):
    """A tiny random M3 checkpoint (hidden 64, ColBERT dim 16, seeded heads), saved once."""
    from flagops.models.m3 import M3Embedder

    m3 = M3Embedder.load("tiny-bert", pooling="cls", query_max_len=16, passage_max_len=48, colbert_dim=16, seed=8)
    dest = tmp_path_factory.mktemp("m3") / "tiny-m3"
    m3.save(dest)
    return dest


@pytest.fixture(scope="session")
def m3_server(tmp_path_factory, tiny_m3_dir):
    args = ["--model", str(tiny_m3_dir), *LIMITS, "serve.max_wait_ms=20"]
    server = start_server(tmp_path_factory.mktemp("m3-server") / "server.log", "tiny-m3", *args)
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def dummy_m3_server(tmp_path_factory):
    args = ["--dummy", "--kind", "m3", *LIMITS, "serve.max_wait_ms=20"]
    server = start_server(tmp_path_factory.mktemp("dummy-m3") / "server.log", "dummy-m3", *args)
    yield server
    stop_server(server)
