"""The cross-encoder reranker: the library, kind detection, and the served V1, V2 and /v1/rerank."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from serving_helpers import MAX_TEXTS, RERANKER_MAX_TOKENS, bytes_input, post, serve_command, v1, v2

from flagops.models.pair_scoring import sigmoid
from flagops.models.reranker import CrossEncoderReranker, ensure_tiny_reranker
from flagops.models.sources import resolve_model_source
from flagops.serving.kinds import KindError, ModelKind, detect_kind

QUERY = "how does bm25 rank documents"
PASSAGES = [
    "BM25 ranks documents by term frequency and inverse document frequency, with length normalisation.",
    "cats sleep most of the day",
    "dense retrieval encodes queries and documents into vectors",
    "bm25",
]
ATOL = 1e-5


@pytest.fixture(scope="module")
def reranker() -> CrossEncoderReranker:
    return CrossEncoderReranker.load("tiny-reranker")


# ---------------------------------------------------------------- the library


def test_score_is_the_logit_of_each_pair_and_normalize_is_its_sigmoid(reranker):
    raw = reranker.score(QUERY, PASSAGES)
    assert raw.shape == (len(PASSAGES),) and raw.dtype == np.float32
    with torch.inference_mode():
        enc = reranker.tokenizer([QUERY], [PASSAGES[0]], return_tensors="pt")
        logit = reranker.model(**enc).logits[0, 0].item()
    assert raw[0] == pytest.approx(logit, abs=ATOL)
    np.testing.assert_allclose(reranker.score(QUERY, PASSAGES, normalize=True), 1 / (1 + np.exp(-raw)), atol=1e-6)


def test_batching_and_order_do_not_change_scores(reranker):
    whole = reranker.score(QUERY, PASSAGES, batch_size=32)
    np.testing.assert_allclose(reranker.score(QUERY, PASSAGES, batch_size=1), whole, atol=ATOL)
    np.testing.assert_allclose(reranker.score(QUERY, PASSAGES[::-1], batch_size=3), whole[::-1], atol=ATOL)


def test_max_length_truncates_the_passage_as_flagreranker_does(reranker):
    long = "word " * 300
    assert reranker.token_lengths([(QUERY, long)])[0] > 300
    cut = reranker.score(QUERY, [long], max_length=16)
    with torch.inference_mode():  # the whole query (7 tokens, under 3/4 of 16), the passage cut to fit
        enc = reranker.tokenizer([QUERY], [long], truncation="only_second", max_length=16, return_tensors="pt")
        assert enc["input_ids"][0].tolist().index(reranker.tokenizer.sep_token_id) == 1 + 7
        assert enc["input_ids"].shape[1] == 16
        assert cut[0] == pytest.approx(reranker.model(**enc).logits[0, 0].item(), abs=ATOL)
    # A query over 3/4 of max_length is cut to 3/4 first, so the passage keeps a quarter.
    enc = reranker.tokenize([(long, long)], max_length=16)
    assert enc["token_type_ids"][0].tolist() == [0] * (1 + 12 + 1) + [1] * 2


def test_score_rejects_a_single_string(reranker):
    with pytest.raises(TypeError, match="list of passages"):
        reranker.score(QUERY, "one passage")


def test_save_and_load_round_trip(reranker, tmp_path):
    reranker.save(tmp_path / "rr")
    again = CrossEncoderReranker.load(tmp_path / "rr")
    np.testing.assert_allclose(again.score(QUERY, PASSAGES), reranker.score(QUERY, PASSAGES), atol=ATOL)


# ---------------------------------------------------------------- kind detection


def test_kind_is_read_from_the_model_directory(tmp_path):
    assert detect_kind(ensure_tiny_reranker()) is ModelKind.RERANKER  # BertForSequenceClassification
    assert detect_kind(resolve_model_source("tiny-bert")) is ModelKind.EMBEDDER  # BertModel

    marked = tmp_path / "marked"
    shutil.copytree(ensure_tiny_reranker(), marked)
    (marked / "flagops_embedder.json").write_text("{}")  # a flagops embedder says so first
    assert detect_kind(marked) is ModelKind.EMBEDDER

    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"architectures": ["BertForTokenClassification"]}))
    with pytest.raises(KindError, match="--kind"):
        detect_kind(odd)
    with pytest.raises(KindError, match="--kind"):
        detect_kind(tmp_path / "missing")


def test_entry_point_names_a_kind_it_cannot_tell(tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"architectures": ["BertForTokenClassification"]}))
    (odd / "vocab.txt").write_text("[PAD]\n[UNK]\n")  # a tokenizer: what is unknown here is the kind alone
    r = subprocess.run(
        serve_command("--model", str(odd), "--port", "0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "cannot tell the kind" in r.stderr and "--kind {embedder, reranker, m3, visual}" in r.stderr


# ---------------------------------------------------------------- the real model, served


def test_v1_scores_match_the_library(reranker_server, reranker):
    body = {"instances": [{"query": QUERY, "passages": PASSAGES[:3]}, {"query": "cats", "passages": PASSAGES[1:]}]}
    r = v1(reranker_server, body)
    assert r.status_code == 200, r.text
    first, second = r.json()["predictions"]
    np.testing.assert_allclose(first, reranker.score(QUERY, PASSAGES[:3]), atol=ATOL)
    np.testing.assert_allclose(second, reranker.score("cats", PASSAGES[1:]), atol=ATOL)

    r = v1(reranker_server, {**body, "normalize": True})
    expected = reranker.score(QUERY, PASSAGES[:3], normalize=True)
    np.testing.assert_allclose(r.json()["predictions"][0], expected, atol=ATOL)


def test_v2_scores_match_the_library(reranker_server, reranker):
    body = {"inputs": [bytes_input("query", [QUERY]), bytes_input("passages", PASSAGES)]}
    r = v2(reranker_server, body)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["name"] == "score" and out["datatype"] == "FP32" and out["shape"] == [len(PASSAGES)]
    np.testing.assert_allclose(out["data"], reranker.score(QUERY, PASSAGES), atol=ATOL)

    # One query per passage, sigmoid scores.
    queries = [QUERY, "cats", QUERY, "bm25"]
    inputs = [bytes_input("query", queries), bytes_input("passages", PASSAGES)]
    body = {"inputs": inputs, "parameters": {"normalize": True}}
    r = v2(reranker_server, body)
    assert r.status_code == 200, r.text
    expected = [reranker.score(q, [p], normalize=True)[0] for q, p in zip(queries, PASSAGES, strict=True)]
    np.testing.assert_allclose(r.json()["outputs"][0]["data"], expected, atol=ATOL)


def test_rerank_route_sorts_by_sigmoid_score(reranker_server, reranker):
    r = post(reranker_server, "/v1/rerank", {"model": reranker_server.name, "query": QUERY, "documents": PASSAGES})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = reranker.score(QUERY, PASSAGES, normalize=True)
    assert [x["index"] for x in body["results"]] == np.argsort(-expected, kind="stable").tolist()
    for x in body["results"]:
        assert x["relevance_score"] == pytest.approx(expected[x["index"]], abs=ATOL)
        assert "document" not in x
    assert body["model"] == reranker_server.name
    tokens = sum(reranker.token_lengths([(QUERY, p) for p in PASSAGES]))
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_reject_policy_names_the_token_limit(reranker_server, reranker):
    long = "a b " * 40  # one token a word: the pair passes 64 tokens, not 400 characters
    assert reranker.token_lengths([(QUERY, long)])[0] > RERANKER_MAX_TOKENS and len(long) <= 400
    for r in (
        post(reranker_server, "/v1/rerank", {"model": reranker_server.name, "query": QUERY, "documents": ["a", long]}),
        v1(reranker_server, {"instances": [{"query": QUERY, "passages": ["a", long]}]}),
    ):
        assert r.status_code == 400, r.text
        message = r.text
        assert "documents[1]" in message or "passages[1]" in message
        assert f"the limit (max_tokens) is {RERANKER_MAX_TOKENS} tokens" in message


# ---------------------------------------------------------------- the API, on the dummy


def rerank(server, **body):
    return post(server, "/v1/rerank", {"model": server.name, **body})


def test_dummy_rerank_top_n_and_documents(dummy_reranker_server):
    docs = ["red apple pie", "green apple", "blue sky", "apple pie with red apples"]
    r = rerank(dummy_reranker_server, query="red apple pie", documents=docs, top_n=2, return_documents=True)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(x["index"], x["document"]) for x in results] == [(0, docs[0]), (3, docs[3])]  # overlaps 3, 3 > 1, 0
    assert results[0]["relevance_score"] == pytest.approx(float(sigmoid(np.float32(3))))

    r = rerank(dummy_reranker_server, query="red apple pie", documents=docs, raw_scores=True)
    assert [x["relevance_score"] for x in r.json()["results"]] == [3.0, 3.0, 1.0, 0.0]
    assert r.json()["usage"]["prompt_tokens"] == sum(3 + len(d.split()) for d in docs)


def test_dummy_reranker_is_lenient_about_unknown_fields(dummy_reranker_server):
    # This server runs with serve.strict=false: unknown keys are ignored, not a 400.
    r = rerank(dummy_reranker_server, query="a b", documents=["a"], truncate=True)
    assert r.status_code == 200, r.text
    r = v1(dummy_reranker_server, {"instances": [{"query": "a", "passages": ["a"], "id": 7}], "trace": 1})
    assert r.status_code == 200 and r.json()["predictions"] == [[1.0]], r.text
    body = {"inputs": [bytes_input("query", ["a"]), bytes_input("passages", ["a b"])], "parameters": {"extra": 1}}
    assert v2(dummy_reranker_server, body).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "problem"),
    [
        ({"query": "a", "documents": []}, 400, "empty input"),
        ({"query": "a", "documents": ["d"] * (MAX_TEXTS + 1)}, 400, "max_texts"),
        ({"query": "a", "documents": ["x" * 401]}, 400, "max_chars"),
        ({"query": "x" * 401, "documents": ["d"]}, 400, "max_chars"),
        ({"query": "a", "documents": "d"}, 400, "list of strings"),
        ({"query": "a", "documents": ["d", 3]}, 400, "is int, expected a string"),
        ({"query": 3, "documents": ["d"]}, 400, "query"),
        ({"query": "a", "documents": ["d"], "top_n": 0}, 400, "top_n"),
        ({"query": "a", "documents": ["d"], "top_n": "2"}, 400, "top_n"),
        ({"query": "a", "documents": ["d"], "return_documents": "yes"}, 400, "return_documents"),
        ({"documents": ["d"]}, 400, "query"),
        ({"query": "a", "documents": ["d"], "model": "nope"}, 404, "nope"),
    ],
)
def test_dummy_rerank_bad_input(dummy_reranker_server, body, status, problem):
    r = rerank(dummy_reranker_server, **body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert problem in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("protocol", "body", "problem"),
    [
        ("v1", {"instances": []}, "non-empty list"),
        ("v1", {"instances": [{"query": "a"}]}, "needs both query and passages"),
        ("v1", {"instances": ["a"]}, "instances[0] is str"),
        ("v1", {"instances": [{"query": "a", "passages": ["p"] * 4}] * 2}, "max_texts"),  # 8 pairs in all
        ("v1", {"instances": [{"query": "a", "passages": ["p"]}], "normalize": "no"}, "normalize"),
        ("v2", {"inputs": [bytes_input("passages", ["p"])]}, "'query' and 'passages'"),
        ("v2", {"inputs": [bytes_input("query", ["a", "b"]), bytes_input("passages", ["p"] * 3)]}, "one per passage"),
        ("v2", {"inputs": [bytes_input("query", ["a"]), bytes_input("passages", [])]}, "empty input"),
    ],
)
def test_dummy_reranker_v1_v2_bad_input(dummy_reranker_server, protocol, body, problem):
    r = v1(dummy_reranker_server, body) if protocol == "v1" else v2(dummy_reranker_server, body)
    assert r.status_code == 400, r.text
    assert problem in r.json()["error"]


def test_embedder_routes_are_not_on_a_reranker(dummy_reranker_server):
    r = post(dummy_reranker_server, "/v1/embeddings", {"model": dummy_reranker_server.name, "input": ["a"]})
    assert r.status_code == 404


# ---------------------------------------------------------------- an LLM reranker, served the same way


def test_a_layerwise_llm_reranker_serves_through_the_same_rerank_route(tmp_path):
    """train_reranker's layerwise output (merged weights, heads, flagops_reranker.json) is a
    reranker to the server: detected as one, scored with the configured cutoff layer."""
    from serving_helpers import start_server, stop_server

    from flagops.config import RerankerConfig
    from flagops.models import llm_reranker
    from flagops.models.reranker import load_reranker

    torch.manual_seed(0)
    cfg = RerankerConfig(
        kind="layerwise", base="tiny-decoder", start_layer=2, lora_rank=4, lora_alpha=8, query_max_len=16, passage_max_len=48
    )
    llm_reranker.build(cfg).save(tmp_path / "layerwise")
    assert detect_kind(tmp_path / "layerwise") is ModelKind.RERANKER
    local = load_reranker(tmp_path / "layerwise")
    server = start_server(tmp_path / "server.log", "tiny-layerwise", "--model", str(tmp_path / "layerwise"))
    try:
        r = post(server, "/v1/rerank", {"model": server.name, "query": QUERY, "documents": PASSAGES})
        assert r.status_code == 200, r.text
        expected = local.score(QUERY, PASSAGES, normalize=True)
        got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        np.testing.assert_allclose([got[i] for i in range(len(PASSAGES))], expected, atol=ATOL)
        tokens = sum(local.token_lengths([(QUERY, p) for p in PASSAGES]))
        assert r.json()["usage"]["prompt_tokens"] == tokens
    finally:
        stop_server(server)
