"""`flagops serve`: one embedder in a KServe ModelServer, on 127.0.0.1 unless told otherwise.

Routes: KServe V1 (``/v1/models/NAME:predict``), V2 / Open Inference Protocol
(``/v2/models/NAME/infer``, ``/v2/health/ready``), and an OpenAI-compatible
``POST /v1/embeddings`` (kserve's own ``/openai/v1/embeddings`` needs vllm).

    python -m flagops.serving.server --model DIR|pkg:PACKAGE|tiny-bert|models:/NAME@alias \
        [--host 127.0.0.1] [--port 8080] [--name embedder] [--max-texts N] [--max-chars N] [--dummy]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.model_server import app as kserve_app  # the app RESTServer serves
from kserve.protocol.rest.server import RESTServer
from pydantic import ValidationError

from flagops.config import ServeConfig
from flagops.serving.dummy import DummyEmbedderModel
from flagops.serving.embedder_model import EmbedderModel, openai_embeddings, openai_error


async def request_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI answers a malformed body with 422; every other bad input here is a 400.
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return JSONResponse(status_code=400, content={"error": f"invalid request: {where}: {first['msg']}"})


def build_app(models: Sequence[EmbedderModel]) -> FastAPI:
    """kserve's FastAPI app with the OpenAI route added. Call once per process, before serving."""
    by_name = {m.name: m for m in models}

    async def embeddings(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError as exc:
            message = f"the body is not valid JSON ({exc}); send Content-Type: application/json"
            return JSONResponse(openai_error(message), status_code=400)
        status, content = await openai_embeddings(body, by_name)
        return JSONResponse(content, status_code=status)

    kserve_app.add_api_route("/v1/embeddings", embeddings, methods=["POST"], summary="OpenAI-compatible embeddings")
    kserve_app.add_exception_handler(RequestValidationError, request_validation_error)
    return kserve_app


def run_server(models: Sequence[EmbedderModel], *, host: str, port: int) -> None:
    """Serve loaded ``models`` over REST until SIGINT or SIGTERM; gRPC stays off."""
    server = ModelServer(http_port=port, enable_grpc=False)  # sets up logging, registry, dataplane
    for model in models:
        server.register_model(model)
    build_app(models)
    rest = RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, port)
    rest.config.host = host  # RESTServer hard-codes 0.0.0.0

    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the
    # handler found before it started: ours turns it into a clean return.
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        asyncio.run(rest.start())
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for model in models:
            model.stop()


def serve(
    source: str,
    *,
    host: str | None = None,
    port: int | None = None,
    name: str | None = None,
    serve_cfg: ServeConfig = ServeConfig(),
    dummy: bool = False,
) -> None:
    """Load the embedder at ``source`` and serve it (blocking) until SIGINT or SIGTERM.

    Args:
        source: a model directory, ``pkg:PACKAGE``, ``tiny-bert`` or ``models:/NAME@alias``.
        host, port, name: override ``serve_cfg.host``, ``.port`` and ``.model_name``.
        serve_cfg: request limits and batch size.
        dummy: serve ``HashEncoder`` vectors instead of a model (API tests only).
    """
    name = name or serve_cfg.model_name
    model = DummyEmbedderModel(name, serve_cfg) if dummy else EmbedderModel(name, source, serve_cfg)
    model.load()
    run_server(
        [model],
        host=serve_cfg.host if host is None else host,
        port=serve_cfg.port if port is None else port,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flagops.serving.server", description=__doc__.split("\n")[0], allow_abbrev=False
    )
    parser.add_argument("--model", help="model directory, pkg:PACKAGE, tiny-bert or models:/NAME@alias")
    parser.add_argument("--dummy", action="store_true", help="serve fake 8-dim hash vectors (API tests)")
    parser.add_argument("--host", help=f"bind address (default {ServeConfig().host})")
    parser.add_argument("--port", type=int, help=f"HTTP port (default {ServeConfig().port})")
    parser.add_argument("--name", help=f"model name in the routes (default {ServeConfig().model_name})")
    parser.add_argument("--max-texts", type=int, help="texts per request")
    parser.add_argument("--max-chars", type=int, help="characters per text")
    parser.add_argument("--batch-size", type=int, help="encoding batch size")
    args = parser.parse_args(argv)
    if not args.model and not args.dummy:
        parser.error("--model is required (or --dummy for fake vectors)")
    limits = {"max_texts": args.max_texts, "max_chars": args.max_chars, "batch_size": args.batch_size}
    try:
        cfg = ServeConfig(**{k: v for k, v in limits.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        parser.error(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}")
    serve(args.model or "dummy", host=args.host, port=args.port, name=args.name, serve_cfg=cfg, dummy=args.dummy)


if __name__ == "__main__":
    main()
