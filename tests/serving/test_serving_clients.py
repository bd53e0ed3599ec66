"""Third-party clients against the real tiny models: Triton's V2 HTTP client and OpenAI's SDK."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from flagops.models.embedder import Embedder
from flagops.models.reranker import CrossEncoderReranker

httpclient = pytest.importorskip("tritonclient.http")
openai = pytest.importorskip("openai")

TEXTS = ["what is dense retrieval?", "BM25 weighs rare terms more", "short", "ünïcode and 中文 text"]
ATOL = 1e-5


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load("tiny-bert")


def triton(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=60.0)


def bytes_tensor(name: str, texts: list[str], binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode("utf-8") for t in texts], dtype=np.object_), binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_v2_embeddings(real_server, embedder, binary):
    client = triton(real_server)
    assert client.is_server_ready() and client.is_model_ready(real_server.name)
    meta = client.get_model_metadata(real_server.name)
    assert meta["inputs"][0]["datatype"] == "BYTES" and meta["outputs"][0]["datatype"] == "FP32"

    outputs = None if binary else [httpclient.InferRequestedOutput("embedding", binary_data=False)]
    result = client.infer(real_server.name, [bytes_tensor("text", TEXTS, binary)], outputs=outputs, parameters={"is_query": True})
    got = result.as_numpy("embedding")
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), embedder.model.config.hidden_size)
    np.testing.assert_allclose(got, embedder.encode(TEXTS, is_query=True), atol=ATOL)


def test_tritonclient_v2_rerank(reranker_server):
    reranker = CrossEncoderReranker.load("tiny-reranker")
    passages = TEXTS[1:]
    inputs = [bytes_tensor("query", [TEXTS[0]], True), bytes_tensor("passages", passages, True)]
    result = triton(reranker_server).infer(reranker_server.name, inputs)
    np.testing.assert_allclose(result.as_numpy("score"), reranker.score(TEXTS[0], passages), atol=ATOL)


def test_openai_sdk_embeddings(real_server, embedder):
    client = openai.OpenAI(base_url=f"{real_server.url}/v1", api_key="x", max_retries=0)
    expected = embedder.encode(TEXTS)

    # No encoding_format: the SDK asks for base64 itself and decodes it to floats.
    response = client.embeddings.create(model=real_server.name, input=TEXTS)
    assert response.model == real_server.name and response.usage.prompt_tokens > 0
    np.testing.assert_allclose([d.embedding for d in response.data], expected, atol=ATOL)

    response = client.embeddings.create(model=real_server.name, input=TEXTS, encoding_format="float")
    np.testing.assert_allclose([d.embedding for d in response.data], expected, atol=ATOL)

    response = client.embeddings.create(model=real_server.name, input=TEXTS, encoding_format="base64")
    decoded = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in response.data]
    np.testing.assert_allclose(decoded, expected, atol=ATOL)

    response = client.embeddings.create(model=real_server.name, input=TEXTS[0], dimensions=16)
    assert len(response.data[0].embedding) == 16


def test_openai_sdk_errors_are_typed(real_server):
    client = openai.OpenAI(base_url=f"{real_server.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="no-such-model"):
        client.embeddings.create(model="no-such-model", input=["a"])
    with pytest.raises(openai.BadRequestError, match="empty input"):
        client.embeddings.create(model=real_server.name, input=[])
