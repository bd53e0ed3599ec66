"""Request limits: token truncation or rejection, strict fields, body size; 4xx, never 5xx."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from serving_helpers import DUMMY_MAX_TOKENS, MAX_BODY_BYTES, bytes_input, post, v1, v2

from flagops.models.embedder import Embedder

LONG = "a b " * 45  # 92 tokens with [CLS] and [SEP], 180 characters: over the real server's 64 tokens


def test_truncate_policy_cuts_at_max_tokens(real_server):
    embedder = Embedder.load("tiny-bert")
    assert len(embedder.tokenizer(LONG)["input_ids"]) > 64
    r = post(real_server, "/v1/embeddings", {"model": real_server.name, "input": [LONG, "short"]})
    assert r.status_code == 200, r.text
    got = np.asarray([d["embedding"] for d in r.json()["data"]])
    np.testing.assert_allclose(got[0], embedder.encode([LONG], max_length=64)[0], atol=1e-5)
    assert np.abs(got[0] - embedder.encode([LONG])[0]).max() > 1e-4  # the cut made a difference
    assert r.json()["usage"]["prompt_tokens"] == 64 + 3  # what the model read: [CLS] short [SEP]


@pytest.mark.parametrize("protocol", ["v1", "v2", "openai"])
def test_reject_policy_is_a_400_naming_the_limit(dummy_server, protocol):
    texts = ["fine", "w " * (DUMMY_MAX_TOKENS + 1)]  # the dummy counts words
    if protocol == "v1":
        r = v1(dummy_server, {"instances": texts})
    elif protocol == "v2":
        r = v2(dummy_server, {"inputs": [bytes_input("text", texts)]})
    else:
        r = post(dummy_server, "/v1/embeddings", {"model": dummy_server.name, "input": texts})
    assert r.status_code == 400, r.text
    assert f"[1] has {DUMMY_MAX_TOKENS + 1} tokens; the limit (max_tokens) is {DUMMY_MAX_TOKENS}" in r.text
    assert v1(dummy_server, {"instances": ["w " * DUMMY_MAX_TOKENS]}).status_code == 200  # at the limit is fine


@pytest.mark.parametrize(
    ("path", "body", "problem"),
    [
        ("v1", {"instances": ["a"], "extra": 1}, "'extra'"),
        ("v2", {"inputs": [bytes_input("text", ["a"])], "parameters": {"normalise": True}}, "'normalise'"),
        ("openai", {"input": ["a"], "truncate": True}, "'truncate'"),
    ],
)
def test_strict_mode_rejects_unknown_fields(dummy_server, path, body, problem):
    if path == "openai":
        r = post(dummy_server, "/v1/embeddings", {"model": dummy_server.name, **body})
    else:
        r = v1(dummy_server, body) if path == "v1" else v2(dummy_server, body)
    assert r.status_code == 400, r.text
    assert problem in r.text and "unknown key" in r.text


def test_triton_protocol_parameters_pass_in_strict_mode(dummy_server):
    body = {"inputs": [bytes_input("text", ["a"])], "parameters": {"priority": 1, "is_query": True}}
    assert v2(dummy_server, body).status_code == 200


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/models/dummy:predict", "/v2/models/dummy/infer"])
def test_oversize_bodies_are_413(dummy_server, path):
    big = b'{"input": ["' + b"x" * MAX_BODY_BYTES + b'"]}'
    headers = {"Content-Type": "application/json"}
    r = httpx.post(dummy_server.url + path, content=big, headers=headers, timeout=60)
    assert r.status_code == 413, r.text
    assert f"the limit (max_body_bytes) is {MAX_BODY_BYTES} bytes" in r.text

    def chunks():  # no Content-Length: the cap applies as the body streams in
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    r = httpx.post(dummy_server.url + path, content=chunks(), headers=headers, timeout=60)
    assert r.status_code == 413, r.text


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/v1/embeddings", b'{"model": "dummy", "input": "\\ud800"}'),  # a lone surrogate
        ("/v1/models/dummy:predict", b'{"instances": ["\\udfff"]}'),
        ("/v1/models/dummy:predict", b"[1, 2"),
        ("/v1/models/dummy:predict", b"[]"),
        ("/v1/embeddings", b"null"),
        ("/v1/embeddings", b'{"model": "dummy", "input": ["a"], "encoding_format": "base85"}'),
        ("/v1/embeddings", b'{"model": "dummy", "input": ["a"], "dimensions": 2.5}'),
        ("/v1/embeddings", b'{"model": "dummy", "input": [["nested"]]}'),
        ("/v2/models/dummy/infer", b'{"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": [1]}]}'),
        ("/v2/models/dummy/infer", b'{"inputs": "x"}'),
        ("/v2/models/dummy/infer?model_version=2", b'{"inputs": []}'),
        ("/v1/models/dummy:explain", b'{"instances": ["a"]}'),
        ("/v1/embeddings", b"[" * 30000 + b"]" * 30000),  # deeper than Python's recursion limit
        ("/v1/models/dummy:predict", b"[" * 30000 + b"]" * 30000),
        ("/v2/models/dummy/infer", b"[" * 30000 + b"]" * 30000),
    ],
)
def test_malformed_bodies_are_4xx(dummy_server, path, content):
    r = httpx.post(dummy_server.url + path, content=content, headers={"Content-Type": "application/json"}, timeout=60)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]


def test_wrong_model_name_is_404_everywhere(dummy_server):
    assert post(dummy_server, "/v1/models/nope:predict", {"instances": ["a"]}).status_code == 404
    assert post(dummy_server, "/v2/models/nope/infer", {"inputs": [bytes_input("text", ["a"])]}).status_code == 404
    r = post(dummy_server, "/v1/embeddings", {"model": "nope", "input": ["a"]})
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
