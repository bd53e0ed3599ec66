"""Prometheus metrics, in the default registry that kserve's ``GET /metrics`` exposes.

* ``flagops_request_duration_seconds{route,method,code}``: HTTP latency, every route.
* ``flagops_batch_size{model}``: items (texts or pairs) per micro-batch.
* ``flagops_tokens_total{model}``: tokens read by the model (after truncation).
* ``flagops_tokens_per_second{model}``: throughput of the last batch.
* ``flagops_queue_depth{model}``: items waiting for a batch.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_SECONDS = Histogram(
    "flagops_request_duration_seconds",
    "HTTP request latency, from the first byte in to the last byte out",
    ["route", "method", "code"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
BATCH_SIZE = Histogram(
    "flagops_batch_size",
    "Items (texts, or query-passage pairs) per micro-batch",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
TOKENS = Counter("flagops_tokens", "Tokens the model read, after truncation", ["model"])
TOKENS_PER_SECOND = Gauge("flagops_tokens_per_second", "Tokens per second in the last micro-batch", ["model"])
QUEUE_DEPTH = Gauge("flagops_queue_depth", "Items waiting for a micro-batch", ["model"])


class ModelMetrics:
    """One served model's batch metrics (a ``BatchObserver`` for ``MicroBatcher``)."""

    def __init__(self, model: str):
        self.batch_size = BATCH_SIZE.labels(model=model)
        self.tokens = TOKENS.labels(model=model)
        self.tokens_per_second = TOKENS_PER_SECOND.labels(model=model)
        self.depth = QUEUE_DEPTH.labels(model=model)

    def batch_done(self, size: int, tokens: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.tokens.inc(tokens)
        self.tokens_per_second.set(tokens / max(seconds, 1e-9))

    def queue_depth(self, waiting: int) -> None:
        self.depth.set(waiting)


class LatencyMiddleware:
    """Times every HTTP request into ``REQUEST_SECONDS``, labelled by route template.

    The template (``/v2/models/{model_name}/infer``), not the raw path, keeps the label set
    small whatever paths clients send; unmatched paths share the label ``unmatched``.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app raises before responding

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUEST_SECONDS.labels(route=route, method=scope["method"], code=str(status)).observe(time.perf_counter() - started)
