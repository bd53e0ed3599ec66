"""Prometheus metrics at /metrics move with traffic; concurrent requests share micro-batches."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
from serving_helpers import metrics, post

from flagops.models.embedder import Embedder

TEXTS = [f"passage {i} about sparse and dense retrieval" for i in range(16)]


def delta(after: dict, before: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in after, f"{key} not in /metrics"
    return after[key] - before.get(key, 0.0)


def test_metrics_appear_and_move(dummy_server):
    before = metrics(dummy_server)
    for _ in range(3):
        r = post(dummy_server, "/v1/embeddings", {"model": dummy_server.name, "input": ["one two three", "four"]})
        assert r.status_code == 200, r.text
    assert post(dummy_server, "/v1/embeddings", {"model": dummy_server.name, "input": []}).status_code == 400
    after = metrics(dummy_server)

    route = {"route": "/v1/embeddings", "method": "POST"}
    assert delta(after, before, "flagops_request_duration_seconds_count", code="200", **route) == 3
    assert delta(after, before, "flagops_request_duration_seconds_count", code="400", **route) == 1
    assert delta(after, before, "flagops_request_duration_seconds_sum", code="200", **route) > 0
    model = {"model": dummy_server.name}
    assert delta(after, before, "flagops_batch_size_sum", **model) == 6  # texts
    assert 1 <= delta(after, before, "flagops_batch_size_count", **model) <= 3  # batches
    assert delta(after, before, "flagops_tokens_total", **model) == 3 * 4  # the dummy counts words
    assert after[("flagops_tokens_per_second", tuple(model.items()))] > 0
    assert after[("flagops_queue_depth", tuple(model.items()))] == 0  # nothing left waiting
    # One registry, one route: the process metrics kserve's /metrics always had are still there.
    assert any(name == "process_cpu_seconds_total" for name, _ in after)


def test_concurrent_requests_merge_into_batches_and_get_their_own_vectors(real_server):
    embedder = Embedder.load("tiny-bert")
    before = metrics(real_server)

    async def send_all():
        async with httpx.AsyncClient(base_url=real_server.url, timeout=60) as client:
            calls = [
                client.post("/v1/embeddings", json={"model": real_server.name, "input": [t], "input_type": kind})
                for t in TEXTS
                for kind in ("query", "passage")
            ]
            return await asyncio.gather(*calls)

    responses = asyncio.run(send_all())
    after = metrics(real_server)
    queries, passages = embedder.encode(TEXTS, is_query=True), embedder.encode(TEXTS)
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        expected = (queries if i % 2 == 0 else passages)[i // 2]
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], expected, atol=1e-5)

    model = {"model": real_server.name}
    texts = delta(after, before, "flagops_batch_size_sum", **model)
    batches = delta(after, before, "flagops_batch_size_count", **model)
    assert texts == 2 * len(TEXTS)
    assert batches < texts, f"{texts:.0f} single-text requests ran in {batches:.0f} batches: nothing merged"
    assert delta(after, before, "flagops_tokens_total", **model) > 0
