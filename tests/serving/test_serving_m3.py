"""BGE-M3 served: kind detection, loading, and V1, V2 and OpenAI routes on a tiny real model and the dummy.

The tiny real M3 (``tiny_m3_dir``) must give over HTTP exactly what ``M3Embedder.encode_m3``
gives in-process; the dummy (hashed words) covers the request surface and its errors.
"""

from __future__ import annotations

import asyncio
import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from kserve.errors import InvalidInput
from serving_helpers import bytes_input, post, v1, v2

from flagops.config import ServeConfig
from flagops.models.m3 import MODES, M3Embedder, lexical_weights
from flagops.serving import m3_model
from flagops.serving.kinds import ModelKind, detect_kind
from flagops.serving.m3_model import M3Model

httpclient = pytest.importorskip("tritonclient.http")

TEXTS = ["what is dense retrieval?", "BM25 weighs rare terms more, rare terms", "short", "ünïcode and 中文 text"]
LONG = "a passage that runs well past the sixteen tokens a tiny query may hold, so queries cut it short"
ATOL = 1e-5
ALL_MODES = {"return_dense": True, "return_sparse": True, "return_colbert": True}


@pytest.fixture(scope="module")
def m3(tiny_m3_dir) -> M3Embedder:
    return M3Embedder.load(tiny_m3_dir)


def triton(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=60.0)


def v2_outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]}


def split(offsets: np.ndarray, values) -> list:
    """CSR-style outputs back to one slice per text."""
    return [values[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def assert_sparse_matches(indices, values, tokens, row, tokenizer):
    """One text's served sparse entries equal the library's lexical weights, heaviest first."""
    expected = lexical_weights(row)
    assert sorted(map(str, indices)) == sorted(expected)
    np.testing.assert_allclose(values, [expected[str(i)] for i in indices], atol=ATOL)
    assert list(values) == sorted(values, reverse=True)
    assert list(tokens) == tokenizer.convert_ids_to_tokens([int(i) for i in indices])


# ---------------------------------------------------------------- kinds and loading


def test_an_m3_directory_is_the_m3_kind_in_either_layout(tiny_m3_dir, tmp_path):
    assert detect_kind(tiny_m3_dir) is ModelKind.M3  # before its flagops_embedder.json says embedder
    flag_embedding = tmp_path / "flag-embedding-m3"
    shutil.copytree(tiny_m3_dir, flag_embedding)
    for name in ("flagops_m3.json", "flagops_embedder.json", "colbert_linear.safetensors", "sparse_linear.safetensors"):
        (flag_embedding / name).unlink()
    assert detect_kind(flag_embedding) is ModelKind.M3  # FlagEmbedding writes the .pt heads alone


def test_kind_choices_and_modes_agree_with_their_sources():
    assert set(ServeConfig.model_fields["kind"].annotation.__args__) == {"auto", *ModelKind}
    assert ServeConfig(kind="m3").kind == "m3"
    assert m3_model.MODES == MODES  # m3_model spells them out so as not to import torch


def predict(model: M3Model, *bodies: dict) -> list:
    """Each V1 body's response (or the ``InvalidInput`` it raised), in one event loop; stops ``model``."""

    async def run():
        out = []
        for body in bodies:
            try:
                out.append(await model.predict(body))
            except InvalidInput as exc:
                out.append(exc)
        return out

    try:
        return asyncio.run(run())
    finally:
        model.stop()


def test_flag_embedding_layout_loads_its_heads(tiny_m3_dir, tmp_path, m3):
    layout = tmp_path / "fe"
    shutil.copytree(tiny_m3_dir, layout)
    for name in ("flagops_m3.json", "colbert_linear.safetensors", "sparse_linear.safetensors"):
        (layout / name).unlink()
    model = M3Model("fe", str(layout))
    model.load()
    ((row,),) = [r["predictions"] for r in predict(model, {"instances": [TEXTS[1]], **ALL_MODES})]
    expected = m3.encode_m3([TEXTS[1]])
    np.testing.assert_allclose(row["colbert"], expected.colbert[0], atol=ATOL)
    sparse = row["sparse"]
    assert_sparse_matches(sparse["indices"], sparse["values"], sparse["tokens"], expected.sparse[0], m3.tokenizer)


def test_a_dense_only_checkpoint_serves_dense_and_names_what_it_lacks(tmp_path):
    dense_only = tmp_path / "dense-only"
    M3Embedder.load("tiny-bert", heads=False).save(dense_only)  # flagops_m3.json with no colbert_dim
    assert detect_kind(dense_only) is ModelKind.M3
    model = M3Model("dense", str(dense_only))
    model.load()  # no fresh random heads: dense only
    assert model.backend.modes == ("dense",)
    assert [o["name"] for o in model.get_output_types()] == ["dense"]
    dense, sparse = predict(model, {"instances": ["a"]}, {"instances": ["a"], "return_sparse": True})
    assert list(dense["predictions"][0]) == ["dense"]
    assert isinstance(sparse, InvalidInput) and "no sparse output" in str(sparse)


# ---------------------------------------------------------------- the tiny real model, served


@pytest.mark.parametrize("is_query", [False, True], ids=["passage", "query"])
def test_v1_outputs_equal_the_library(m3_server, m3, is_query):
    texts = [*TEXTS, LONG]
    r = v1(m3_server, {"instances": texts, "is_query": is_query, **ALL_MODES})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    expected = m3.encode_m3(texts, is_query=is_query)
    np.testing.assert_allclose([p["dense"] for p in predictions], expected.dense, atol=ATOL)
    assert all(p["sparse"]["indices"] for p in predictions)  # the seeded heads weigh some token of each
    for i, p in enumerate(predictions):
        assert set(p) == {"dense", "sparse", "colbert"}
        sparse = p["sparse"]
        assert_sparse_matches(sparse["indices"], sparse["values"], sparse["tokens"], expected.sparse[i], m3.tokenizer)
        np.testing.assert_allclose(np.asarray(p["colbert"]).reshape(-1, 16), expected.colbert[i], atol=ATOL)


def test_v2_csr_outputs_equal_the_library(m3_server, m3):
    body = {"inputs": [bytes_input("text", TEXTS)], "parameters": {"is_query": True, **ALL_MODES}}
    out = v2_outputs(v2(m3_server, body))
    expected = m3.encode_m3(TEXTS, is_query=True)
    np.testing.assert_allclose(out["dense"], expected.dense, atol=ATOL)
    tokens = split(out["sparse_offsets"], out["sparse_tokens"])
    values = split(out["sparse_offsets"], out["sparse_values"])
    for i, indices in enumerate(split(out["sparse_offsets"], out["sparse_indices"])):
        assert_sparse_matches(indices, values[i], tokens[i], expected.sparse[i], m3.tokenizer)
    for got, want in zip(split(out["colbert_offsets"], out["colbert"]), expected.colbert, strict=True):
        np.testing.assert_allclose(got, want, atol=ATOL)


def test_tritonclient_asks_for_outputs_by_name(m3_server, m3):
    client = triton(m3_server)
    meta = client.get_model_metadata(m3_server.name)
    assert [o["name"] for o in meta["outputs"]] == [name for mode in MODES for name, _ in m3_model.V2_OUTPUTS[mode]]
    assert meta["outputs"][-1] == {"name": "colbert", "datatype": "FP32", "shape": [-1, 16]}

    text = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode("utf-8") for t in TEXTS], dtype=np.object_))
    # No return_* parameters: the named outputs choose the modes (here sparse alone), in binary.
    names = ["sparse_offsets", "sparse_indices", "sparse_values", "sparse_tokens"]
    result = client.infer(m3_server.name, [text], outputs=[httpclient.InferRequestedOutput(n) for n in names])
    assert result.as_numpy("dense") is None and result.as_numpy("colbert") is None
    offsets = result.as_numpy("sparse_offsets")
    assert offsets.dtype == np.int64 and offsets.shape == (len(TEXTS) + 1,)
    expected = m3.encode_m3(TEXTS, modes=("sparse",)).sparse
    tokens = [t.decode("utf-8") for t in result.as_numpy("sparse_tokens")]
    values = split(offsets, result.as_numpy("sparse_values"))
    for i, indices in enumerate(split(offsets, result.as_numpy("sparse_indices"))):
        assert_sparse_matches(indices, values[i], tokens[offsets[i] : offsets[i + 1]], expected[i], m3.tokenizer)


def test_openai_embeddings_are_the_dense_vectors(m3_server, m3):
    r = post(m3_server, "/v1/embeddings", {"model": m3_server.name, "input": TEXTS, "input_type": "query"})
    assert r.status_code == 200, r.text
    got = [d["embedding"] for d in r.json()["data"]]
    np.testing.assert_allclose(got, m3.encode_m3(TEXTS, is_query=True, modes=("dense",)).dense, atol=ATOL)


# ---------------------------------------------------------------- the API, on the dummy


@pytest.mark.parametrize("mode", MODES)
def test_dummy_v1_returns_only_the_mode_asked_for(dummy_m3_server, mode):
    flags = {f"return_{m}": m == mode for m in MODES}
    r = v1(dummy_m3_server, {"instances": ["Red apple, red PIE", ""], **flags})
    assert r.status_code == 200, r.text
    full, empty = r.json()["predictions"]
    assert set(full) == set(empty) == {mode}
    if mode == "dense":
        np.testing.assert_allclose(np.linalg.norm([full["dense"], empty["dense"]], axis=1), 1.0, atol=ATOL)
    elif mode == "sparse":
        assert sorted(full["sparse"]["tokens"]) == ["apple,", "pie", "red"]  # lower-cased words, once each
        assert full["sparse"]["values"] == sorted(full["sparse"]["values"], reverse=True)
        assert empty["sparse"] == {"indices": [], "values": [], "tokens": []}
    else:
        vectors = np.asarray(full["colbert"])
        assert vectors.shape == (4, 4) and empty["colbert"] == []  # a unit vector per word
        np.testing.assert_allclose(vectors[0], vectors[2])  # "red" twice


def test_dummy_v1_default_is_dense_and_equals_openai(dummy_m3_server):
    r = v1(dummy_m3_server, {"instances": TEXTS, "is_query": True})
    assert r.status_code == 200, r.text
    assert all(set(p) == {"dense"} for p in r.json()["predictions"])
    body = {"model": dummy_m3_server.name, "input": TEXTS, "input_type": "query"}
    openai = post(dummy_m3_server, "/v1/embeddings", body).json()
    assert [d["embedding"] for d in openai["data"]] == [p["dense"] for p in r.json()["predictions"]]
    assert openai["usage"]["prompt_tokens"] == sum(len(t.split()) for t in TEXTS)


def test_dummy_concurrent_mode_sets_each_get_their_own(dummy_m3_server):
    # Texts batch only with texts asking for the same modes (the batching key), so mixed
    # concurrent requests each get exactly their own outputs.
    flag_sets = [{f"return_{m}": m in modes for m in MODES} for modes in (("dense",), ("sparse",), MODES, ("colbert",))]
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda i: v1(dummy_m3_server, {"instances": ["x y"], **flag_sets[i % 4]}), range(8)))
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        assert set(r.json()["predictions"][0]) == {m for m in MODES if flag_sets[i % 4][f"return_{m}"]}


def test_dummy_v2_csr_outputs(dummy_m3_server):
    texts = ["b a b", "", "c"]
    flags = {"return_dense": False, "return_sparse": True, "return_colbert": True}
    body = {"inputs": [bytes_input("text", texts)], "parameters": flags}
    out = v2_outputs(v2(dummy_m3_server, body))
    sparse_names = ["sparse_offsets", "sparse_indices", "sparse_values", "sparse_tokens"]
    assert list(out) == [*sparse_names, "colbert_offsets", "colbert"]  # the API's names, in this order
    assert out["sparse_offsets"].tolist() == [0, 2, 2, 3]
    assert sorted(out["sparse_tokens"][:2]) == ["a", "b"] and out["sparse_tokens"][2] == "c"
    assert out["colbert_offsets"].tolist() == [0, 3, 3, 4] and out["colbert"].shape == (4, 4)


def test_dummy_v2_through_tritonclient(dummy_m3_server):
    text = httpclient.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"x y", b"z"], dtype=np.object_), binary_data=False)
    result = triton(dummy_m3_server).infer(dummy_m3_server.name, [text], parameters={"return_colbert": True})
    assert result.as_numpy("dense").shape == (2, 8)
    assert result.as_numpy("colbert_offsets").tolist() == [0, 2, 3]
    assert result.as_numpy("colbert").shape == (3, 4) and result.as_numpy("sparse_indices") is None


def test_dummy_metadata_lists_every_output(dummy_m3_server):
    r = httpx.get(f"{dummy_m3_server.url}/v2/models/{dummy_m3_server.name}")
    assert r.status_code == 200, r.text
    assert r.json()["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert r.json()["outputs"][:2] == [
        {"name": "dense", "datatype": "FP32", "shape": [-1, 8]},
        {"name": "sparse_offsets", "datatype": "INT64", "shape": [-1]},
    ]


@pytest.mark.parametrize(
    ("protocol", "body", "problem"),
    [
        ("v1", {"instances": ["a"], "return_dense": False}, "no output requested"),
        ("v1", {"instances": ["a"], "return_colbert_vecs": True}, "'return_colbert_vecs'"),
        ("v1", {"instances": ["a"], "return_sparse": "yes"}, "return_sparse must be true or false"),
        ("v1", {"instances": [], "return_sparse": True}, "empty input"),
        ("v2", {"inputs": [bytes_input("t", ["a"])], "parameters": {"return_dense": False}}, "no output requested"),
        ("v2", {"inputs": [bytes_input("t", ["a"])], "parameters": {"return_colbert": 1}}, "return_colbert"),
        ("v2", {"inputs": [bytes_input("t", ["a"])], "parameters": {"return_lexical": True}}, "return_lexical"),
        ("v2", {"inputs": [bytes_input("t", ["a"])], "outputs": [{"name": "nope"}]}, "no output requested"),
        ("v2", {"inputs": [bytes_input("t", ["a"])], "outputs": [{"name": "colbert"}, {"name": "nope"}]}, "nope"),
    ],
)
def test_dummy_bad_input_is_a_400_naming_it(dummy_m3_server, protocol, body, problem):
    r = v1(dummy_m3_server, body) if protocol == "v1" else v2(dummy_m3_server, body)
    assert r.status_code == 400, r.text
    assert problem in r.json()["error"]


def test_dummy_unknown_model_is_a_404(dummy_m3_server):
    r = post(dummy_m3_server, "/v1/models/no-such-model:predict", {"instances": ["a"], **ALL_MODES})
    assert r.status_code == 404 and "no-such-model" in r.text
    r = post(dummy_m3_server, "/v1/embeddings", {"model": "no-such-model", "input": ["a"]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert post(dummy_m3_server, "/v1/rerank", {"model": dummy_m3_server.name}).status_code == 404  # no rerank route
