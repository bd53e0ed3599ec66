"""kserve's FastAPI app, finished for flagops: JSON routes per kind, body cap, metrics, errors.

kserve adds its routes, middleware and exception handlers when its REST server starts
(``RESTServer.create_application``); ``FlagopsRESTServer`` adds ours after that, so ours
win where both handle the same thing:

* each served kind's JSON routes (``kinds.ROUTES``), with their request schemas in
  ``/openapi.json`` (the schema FastAPI serves; kserve turns only the docs page off);
* a cap on request bodies (``serve.max_body_bytes``: 413);
* a cap on the time to a response (``serve.request_timeout_s``: 504);
* V2 infer bodies without a Content-Type read as JSON (tritonclient sends none);
* request latency into ``flagops_request_duration_seconds``;
* ``GET /v2/models/NAME``: kserve's V2 model metadata, plus the inference backend that serves
  (``"backend": "torch-fp32"``, ``"torch-int8-dynamic"``...; also as V2's ``platform``) and
  the model's int8 accuracy check when it carries one;
* no kserve ``TimingMiddleware``: per request it read the whole process's CPU time
  (``getrusage``, slow while torch's threads run) and logged two ``kserve.trace`` lines. Under
  32 concurrent single-text clients that was 80% of the event loop's busy samples (py-spy,
  benchmarks/README.md); ``flagops_request_duration_seconds`` keeps the latency;
* a client that hangs up mid-upload is a 499 in the metrics (nginx's "client closed request"),
  not two tracebacks in the log per hang-up (kserve's catch-all handler, then uvicorn's);
* errors as ``{"error": ...}`` everywhere (FastAPI's own say ``{"detail": ...}``);
* 400, not 422 / 501, for bodies FastAPI rejects and for what kserve leaves unimplemented
  (model versions, explain): both are requests this server cannot serve, not its faults.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import kserve
import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from kserve.errors import InvalidInput, ModelNotFound
from kserve.model_server import app as kserve_app  # the app RESTServer serves
from kserve.protocol.rest.server import RESTServer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flagops.config import ServeConfig
from flagops.serving.kinds import ROUTES, V1_SCHEMAS, JsonRoute, model_kind
from flagops.serving.metrics import LatencyMiddleware
from flagops.serving.protocol import openai_error, validate_body

V1_PREDICT = "/v1/models/{model_name}:predict"
V2_METADATA = "/v2/models/{model_name}"
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that hung up before the answer


async def request_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI answers a malformed body with 422; every other bad input here is a 400.
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return JSONResponse(status_code=400, content={"error": f"invalid request: {where}: {first['msg']}"})


async def not_implemented(_: Request, exc: NotImplementedError) -> JSONResponse:
    return JSONResponse(status_code=400, content={"error": f"not supported by this server: {exc}"})


async def client_gone(_: Request, exc: ClientDisconnect) -> Response:
    # Nobody reads this answer; the status marks the request in flagops_request_duration_seconds.
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    # FastAPI's own errors (unknown path, wrong method, unparsable V2 body) in kserve's shape.
    return JSONResponse(status_code=exc.status_code, content={"error": exc.detail}, headers=exc.headers)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the cap. An ``HTTPException``, so
    FastAPI's body parsing re-raises it rather than calling it a parse error."""

    def __init__(self, max_bytes: int):
        super().__init__(413, f"request body too large: the limit (max_body_bytes) is {max_bytes} bytes")


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, by Content-Length or as they stream."""

    def __init__(self, app: ASGIApp, max_bytes: int, openai_paths: frozenset[str] = frozenset()):
        self.app = app
        self.max_bytes = max_bytes
        self.openai_paths = openai_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self.refuse(scope, send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def noting_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, noting_send)
        except BodyTooLarge as exc:  # where no exception handler turned it into a response
            if started:
                raise
            await too_large(exc, scope["path"] in self.openai_paths)(scope, _no_body, send)

    async def refuse(self, scope: Scope, send: Send) -> None:
        response = too_large(BodyTooLarge(self.max_bytes), scope["path"] in self.openai_paths)
        await response(scope, _no_body, send)


def too_large(exc: BodyTooLarge, openai: bool) -> JSONResponse:
    content = openai_error(exc.detail) if openai else {"error": exc.detail}
    return JSONResponse(content, status_code=exc.status_code)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


class TimeoutMiddleware:
    """Answer 504 when a request's response has not started within ``seconds``.

    The request's task is cancelled, so its texts leave the batch queue (``Batcher.submit``);
    a response already under way is left to finish.
    """

    def __init__(self, app: ASGIApp, seconds: float, openai_paths: frozenset[str] = frozenset()):
        self.app = app
        self.seconds = seconds
        self.openai_paths = openai_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def noting_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        deadline = asyncio.timeout(self.seconds)
        try:
            async with deadline:
                await self.app(scope, receive, noting_send)
        except TimeoutError:
            if started or not deadline.expired():
                raise
            message = f"request timed out: no answer within {self.seconds:g} s (serve.request_timeout_s); send fewer or shorter texts"
            content = openai_error(message) if scope["path"] in self.openai_paths else {"error": message}
            await JSONResponse(content, status_code=504)(scope, _no_body, send)


class V2JsonByDefault:
    """Read a V2 infer body without Content-Type as JSON, as Triton does.

    tritonclient sends JSON-only requests with no Content-Type, and FastAPI then hands
    kserve raw bytes, which it refuses without the binary extension's length header.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/infer"):
            names = {name.lower() for name, _ in scope["headers"]}
            if b"content-type" not in names and b"inference-header-content-length" not in names:
                # In place, not a copy: the router's matched route must reach LatencyMiddleware.
                scope["headers"] = [*scope["headers"], (b"content-type", b"application/json")]
        await self.app(scope, receive, send)


class FastJSONResponse(JSONResponse):
    """JSON through orjson (a kserve dependency): 16 x 384 floats take 0.1 ms, not the 2.4 ms
    of the standard library's encoder, which starlette's JSONResponse uses."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def json_endpoint(route: JsonRoute, models: Mapping[str, kserve.Model], cfg: ServeConfig):
    """The FastAPI endpoint for ``route`` over the served ``models`` of its kind."""

    async def endpoint(request: Request) -> JSONResponse:
        status, content = 200, None
        try:
            body = await request.json()
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than Python's stack
            message = f"the body is not valid JSON ({exc}); send Content-Type: application/json"
            return JSONResponse(openai_error(message), status_code=400)
        try:
            req = validate_body(route.request, body, strict=cfg.strict)
            model = models.get(req.model)
            if model is None:
                served = ", ".join(sorted(models)) or "none"
                status, content = 404, openai_error(f"model {req.model!r} not found; {route.path} serves: {served}", "model_not_found")
            elif not model.ready:
                status, content = 503, openai_error(f"model {req.model!r} is not ready yet")
            else:
                content = await route.answer(model, req)
        except InvalidInput as exc:
            status, content = 400, openai_error(str(exc))
        return FastJSONResponse(content, status_code=status)

    return endpoint


def metadata_endpoint(models: Mapping[str, kserve.Model]):
    """V2 model metadata (name, platform, tensors) with the serving backend added."""

    async def endpoint(model_name: str) -> dict[str, Any]:
        model = models.get(model_name)
        if model is None:
            raise ModelNotFound(model_name)  # kserve's handler: 404
        info = model.backend_metadata()
        return {
            "name": model.name,
            "platform": info["backend"],
            "inputs": model.get_input_types(),
            "outputs": model.get_output_types(),
            **info,
        }

    return endpoint


def request_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def finish_app(app: FastAPI, models: Sequence[kserve.Model], cfg: ServeConfig) -> FastAPI:
    """Add flagops' routes, middleware and handlers to kserve's ``app``."""
    kinds = list(dict.fromkeys(model_kind(m) for m in models))
    for api_route in app.routes:  # document the V1 bodies kserve's route takes as raw bytes
        if getattr(api_route, "path", None) == V1_PREDICT:
            api_route.openapi_extra = request_body({"anyOf": [V1_SCHEMAS[kind] for kind in kinds]})
    openai_paths = set()
    for kind in kinds:
        served = {m.name: m for m in models if model_kind(m) is kind}
        for route in ROUTES[kind]:
            openai_paths.add(route.path)
            app.add_api_route(
                route.path,
                json_endpoint(route, served, cfg),
                methods=["POST"],
                summary=route.summary,
                openapi_extra=request_body(route.request.model_json_schema()),
            )
    # Ahead of kserve's own metadata route (the first matching route answers), which drops unknown fields.
    app.add_api_route(V2_METADATA, metadata_endpoint({m.name: m for m in models}), methods=["GET"], summary="Model metadata and backend")
    app.router.routes.insert(0, app.router.routes.pop())
    app.add_exception_handler(RequestValidationError, request_validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)

    async def body_too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return too_large(exc, request.url.path in openai_paths)

    app.add_exception_handler(BodyTooLarge, body_too_large)
    app.add_exception_handler(NotImplementedError, not_implemented)
    app.add_exception_handler(ClientDisconnect, client_gone)
    # kserve's per-request TimingMiddleware (timing_asgi) read the process CPU time twice and logged two
    # lines per request: 80% of the event loop at concurrency 32 (py-spy). Latency is in our metrics.
    app.user_middleware = [m for m in app.user_middleware if m.cls.__name__ != "TimingMiddleware"]  # the stack builds at start-up
    app.add_middleware(V2JsonByDefault)
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.max_body_bytes, openai_paths=frozenset(openai_paths))
    if cfg.request_timeout_s is not None:
        app.add_middleware(TimeoutMiddleware, seconds=cfg.request_timeout_s, openai_paths=frozenset(openai_paths))
    app.add_middleware(LatencyMiddleware)  # outermost: times refusals too
    return app


class FlagopsRESTServer(RESTServer):
    """kserve's REST server with ``finish_app`` applied after kserve's own setup."""

    def __init__(self, *args, models: Sequence[kserve.Model], serve_cfg: ServeConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.models = models
        self.serve_cfg = serve_cfg

    def create_application(self) -> None:
        super().create_application()
        finish_app(kserve_app, self.models, self.serve_cfg)
