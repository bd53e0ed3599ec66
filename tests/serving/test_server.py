"""The served embedder over real HTTP: V1, V2 (Open Inference Protocol) and OpenAI routes.

The servers (``conftest.py``) are real ``flagops serve`` subprocesses:
the tiny random BERT (``tiny-bert``) to check the vectors against ``Embedder.encode``, and
``--dummy`` for the API surface alone.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
import pytest
from serving_helpers import MAX_CHARS, MAX_TEXTS, Server, post, serve_command, start_server, v1, v2

from flagops.models.embedder import Embedder

TEXTS = [
    "what is dense retrieval?",
    "BGE embedders map queries and passages into one vector space, where relevance is a dot product. "
    "Hard negatives mined from a first-stage retriever make contrastive training much more effective.",
    "short",
    "a passage of middling length about inverted indexes and BM25",
]
ATOL = 1e-5


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load("tiny-bert")


@pytest.fixture(params=["real", "dummy"])
def any_server(request) -> Server:
    return request.getfixturevalue(f"{request.param}_server")


def v2_body(texts, **extra) -> dict:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}], **extra}


def openai(server: Server, **body) -> httpx.Response:
    return post(server, "/v1/embeddings", {"model": server.name, **body})


def v2_vectors(response: httpx.Response) -> np.ndarray:
    (out,) = response.json()["outputs"]
    assert out["name"] == "embedding" and out["datatype"] == "FP32"
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


# ---------------------------------------------------------------- the real model


def test_v1_predict_matches_embedder(real_server, embedder):
    r = v1(real_server, {"instances": TEXTS})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.asarray(r.json()["predictions"]), embedder.encode(TEXTS), atol=ATOL)


def test_v1_text_objects_and_is_query(real_server, embedder):
    r = v1(real_server, {"instances": [{"text": t} for t in TEXTS], "is_query": True})
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["predictions"])
    np.testing.assert_allclose(got, embedder.encode(TEXTS, is_query=True), atol=ATOL)
    # Queries are cut at query_max_len (32 tokens), so the long text differs from its passage
    # form (slightly: the random tiny BERT's CLS vector barely depends on later tokens).
    assert np.abs(got[1] - embedder.encode(TEXTS)[1]).max() > 10 * ATOL


def test_v2_infer_matches_embedder_and_sets_an_id(real_server, embedder):
    r = v2(real_server, v2_body(TEXTS))
    assert r.status_code == 200, r.text
    assert r.json()["id"]  # kserve needs one; the request sent none
    assert r.json()["model_name"] == real_server.name
    got = v2_vectors(r)
    assert got.shape == (len(TEXTS), embedder.model.config.hidden_size)
    np.testing.assert_allclose(got, embedder.encode(TEXTS), atol=ATOL)


def test_v2_keeps_the_request_id_and_is_query(real_server, embedder):
    r = v2(real_server, v2_body(TEXTS, id="req-42", parameters={"is_query": True}))
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "req-42"
    np.testing.assert_allclose(v2_vectors(r), embedder.encode(TEXTS, is_query=True), atol=ATOL)


def test_openai_float_and_base64_match_embedder(real_server, embedder):
    expected = embedder.encode(TEXTS)
    r = openai(real_server, input=TEXTS)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == real_server.name
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    assert all(d["object"] == "embedding" for d in body["data"])
    np.testing.assert_allclose(np.asarray([d["embedding"] for d in body["data"]]), expected, atol=ATOL)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0

    r = openai(real_server, input=TEXTS, encoding_format="base64")
    assert r.status_code == 200, r.text
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r.json()["data"]])
    np.testing.assert_allclose(decoded, expected, atol=ATOL)


def test_openai_dimensions_truncate_and_renormalise(real_server, embedder):
    r = openai(real_server, input=TEXTS, dimensions=16)
    assert r.status_code == 200, r.text
    got = np.asarray([d["embedding"] for d in r.json()["data"]])
    assert got.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=ATOL)
    prefix = embedder.encode(TEXTS)[:, :16]
    np.testing.assert_allclose(got, prefix / np.linalg.norm(prefix, axis=1, keepdims=True), atol=ATOL)


def test_openai_single_string_and_query_input_type(real_server, embedder):
    r = openai(real_server, input=TEXTS[1], input_type="query")
    assert r.status_code == 200, r.text
    (item,) = r.json()["data"]
    np.testing.assert_allclose(item["embedding"], embedder.encode([TEXTS[1]], is_query=True)[0], atol=ATOL)


def test_concurrent_requests_each_get_their_own_vectors(real_server, embedder):
    expected = embedder.encode(TEXTS)
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda i: v1(real_server, {"instances": [TEXTS[i % 4]]}), range(8)))
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["predictions"][0], expected[i % 4], atol=ATOL)


def test_listens_on_loopback_by_default(real_server):
    port = int(real_server.url.rsplit(":", 1)[1])
    proc = psutil.Process(real_server.proc.pid)
    connections = getattr(proc, "net_connections", proc.connections)  # renamed in psutil 6
    listening = [c.laddr.ip for c in connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening == ["127.0.0.1"]


# ---------------------------------------------------------------- bad input: 400, never 500

BAD_TEXTS = {
    "empty": ([], "empty input"),
    "non_string": (["fine", 7], "is int, expected a string"),
    "too_many": (["t"] * (MAX_TEXTS + 1), "max_texts"),
    "too_long": (["fine", "x" * (MAX_CHARS + 1)], "max_chars"),
}


@pytest.mark.parametrize("case", list(BAD_TEXTS))
@pytest.mark.parametrize("protocol", ["v1", "v2", "openai"])
def test_bad_input_is_a_400_naming_the_problem(any_server, protocol, case):
    texts, problem = BAD_TEXTS[case]
    if protocol == "v1":
        r = v1(any_server, {"instances": texts})
        message = r.json()["error"]
    elif protocol == "v2":
        r = v2(any_server, v2_body(texts))
        message = r.json()["error"]
    else:
        r = openai(any_server, input=texts)
        assert r.json()["error"]["type"] == "invalid_request_error"
        message = r.json()["error"]["message"]
    assert r.status_code == 400, r.text
    assert problem in message


@pytest.mark.parametrize(
    ("path", "body", "problem"),
    [
        ("v1", {"instances": "one text"}, "list"),
        ("v1", {"texts": ["a"]}, "'texts'"),
        ("v1", {"instances": ["a"], "is_query": "yes"}, "is_query"),
        ("v1", {"instances": [{"text": "a", "extra": 1}]}, "is dict, expected a string"),
        ("v2", v2_body(["a"], parameters={"is_query": 1}), "is_query"),
        ("v2", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, "BYTES"),
        ("v2", {"inputs": v2_body(["a"])["inputs"] * 2}, "exactly one"),
        ("v2", {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]}, "shape"),
        ("v2", v2_body(["a"], outputs=[{"name": "nope"}]), "nope"),
        ("v2", {"inpts": []}, "inputs"),
        ("openai", {"input": "a", "encoding_format": "int8"}, "encoding_format"),
        ("openai", {"input": "a", "dimensions": 0}, "dimensions"),
        ("openai", {"input": "a", "dimensions": 9}, "exceeds"),  # the dummy's vectors have 8
        ("openai", {"input": "a", "colour": "red"}, "colour"),
        ("openai", {"input": 3}, "list of strings"),
    ],
)
def test_malformed_requests_are_400(dummy_server, path, body, problem):
    if path == "openai":
        r = openai(dummy_server, **body)
        message = r.json()["error"]["message"]
    else:
        r = v1(dummy_server, body) if path == "v1" else v2(dummy_server, body)
        message = r.json()["error"]
    assert r.status_code == 400, r.text
    assert problem in message


def test_openai_unknown_model_is_404(any_server):
    r = post(any_server, "/v1/embeddings", {"model": "no-such-model", "input": ["a"]})
    assert r.status_code == 404, r.text
    assert "no-such-model" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_openai_non_json_body_is_400(dummy_server):
    r = httpx.post(dummy_server.url + "/v1/embeddings", content=b"not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert "JSON" in r.json()["error"]["message"]


# ---------------------------------------------------------------- the dummy model


def test_dummy_vectors_are_deterministic_unit_vectors(dummy_server):
    a = np.asarray(v1(dummy_server, {"instances": ["x y", "z"]}).json()["predictions"])
    b = np.asarray(v1(dummy_server, {"instances": ["z", "x y"]}).json()["predictions"])
    assert a.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=ATOL)
    np.testing.assert_allclose(a, b[::-1])
    q = np.asarray(v1(dummy_server, {"instances": ["z"], "is_query": True}).json()["predictions"])
    assert not np.allclose(q[0], a[1])


def test_dummy_usage_counts_words(dummy_server):
    r = openai(dummy_server, input=["two words", "and three more"])
    assert r.status_code == 200, r.text
    assert r.json()["usage"] == {"prompt_tokens": 5, "total_tokens": 5}


def test_v2_metadata_describes_the_tensors(dummy_server):
    r = httpx.get(f"{dummy_server.url}/v2/models/{dummy_server.name}")
    assert r.status_code == 200, r.text
    assert r.json()["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert r.json()["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 8]}]
    assert r.json()["backend"] == r.json()["platform"] == "dummy"


def test_sigterm_stops_the_server_cleanly(tmp_path):
    server = start_server(tmp_path / "server.log", "short-lived", "--dummy", "--host", "127.0.0.1")
    assert v1(server, {"instances": ["a"]}).status_code == 200
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0, server.log.read_text()[-4000:]


def test_without_a_model_or_a_workspace_it_names_the_fix(tmp_path):
    # No --model: the demo profile's champion, from runs/demo/mlflow.db, which is not there.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    r = subprocess.run(serve_command("--port", "0"), capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "no MLflow store at" in line and "flagops demo --profile demo" in line and "--model" in line
    assert list(tmp_path.iterdir()) == []  # no store or workspace created on the way


def test_real_model_metadata_names_its_fp32_backend(real_server):
    meta = httpx.get(f"{real_server.url}/v2/models/{real_server.name}").json()
    assert meta["backend"] == "torch-fp32" and "quantization_check" not in meta  # tiny-bert carries no int8 check


def test_kserve_timing_middleware_is_removed():
    """kserve adds timing_asgi's TimingMiddleware (two CPU-time reads and two log lines per request:
    80% of the event loop at concurrency 32 under py-spy); finish_app takes it out, keeps ours."""
    from fastapi import FastAPI
    from kserve.protocol.rest import server as kserve_server

    from flagops.config import ServeConfig
    from flagops.serving.app import finish_app

    app = FastAPI()
    app.add_middleware(kserve_server.TimingMiddleware, client=None)  # as RESTServer._add_middlewares does
    names = [m.cls.__name__ for m in finish_app(app, [], ServeConfig()).user_middleware]
    assert "TimingMiddleware" not in names and "LatencyMiddleware" in names
