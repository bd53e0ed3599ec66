"""`flagops serve`: one model in a KServe ModelServer, on 127.0.0.1 unless told otherwise.

Routes: KServe V1 (``/v1/models/NAME:predict``), V2 / Open Inference Protocol
(``/v2/models/NAME/infer``, ``/v2/health/ready``), ``/metrics`` (Prometheus),
``/openapi.json``, and per kind ``POST /v1/embeddings`` (OpenAI; embedder and M3) or
``POST /v1/rerank`` (reranker).

    python -m flagops.serving.server --model DIR|pkg:PACKAGE|tiny-bert|tiny-reranker|models:/NAME@alias \
        [--kind auto|embedder|reranker|m3] [--host 127.0.0.1] [--port 8080] [--name embedder] [--dummy] \
        [--max-texts N] [--max-chars N] [--max-tokens N] [--truncation truncate|reject] [--[no-]strict] \
        [--max-body-bytes N] [--batch-size N] [--max-batch-tokens N] [--max-wait-ms MS]
        [--pad-to-multiple-of N] [--device auto|cpu|cuda|cuda:N] [--dtype auto|float32|float16|bfloat16]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import Any

import kserve
from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from pydantic import ValidationError

from flagops.config import ConfigError, ServeConfig
from flagops.serving.app import FlagopsRESTServer
from flagops.serving.kinds import KindError, ModelKind, build_model, detect_kind
from flagops.serving.process import tune_process

log = logging.getLogger(__name__)

# ServeConfig fields the command line sets, with their argument types.
CONFIG_FLAGS = {
    "max_texts": int,
    "max_chars": int,
    "max_tokens": int,
    "max_body_bytes": int,
    "batch_size": int,
    "max_batch_tokens": int,
    "max_wait_ms": float,
    "pad_to_multiple_of": int,
    "device": str,
    "dtype": str,
}


def run_server(models: Sequence[kserve.Model], *, host: str, port: int, serve_cfg: ServeConfig = ServeConfig()) -> None:
    """Serve loaded ``models`` over REST until SIGINT or SIGTERM; gRPC stays off."""
    server = ModelServer(http_port=port, enable_grpc=False)  # sets up logging, registry, dataplane
    for model in models:
        server.register_model(model)
    rest = FlagopsRESTServer(
        FASTAPI_APP_IMPORT_STRING,
        server.dataplane,
        server.model_repository_extension,
        port,
        models=models,
        serve_cfg=serve_cfg,
    )
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


def local_source(source: str) -> str:
    """A local directory for any model source (registry URIs are fetched, tiny models built)."""
    from flagops.models.reranker import resolve_reranker_source
    from flagops.serving.embedder_model import resolve_source

    return str(resolve_reranker_source(resolve_source(source)))


def serve(
    source: str,
    *,
    host: str | None = None,
    port: int | None = None,
    name: str | None = None,
    serve_cfg: ServeConfig = ServeConfig(),
    dummy: bool = False,
    kind: str | None = None,
) -> None:
    """Load the model at ``source`` and serve it (blocking) until SIGINT or SIGTERM.

    Args:
        source: a model directory, ``pkg:PACKAGE``, ``tiny-bert``, ``tiny-reranker`` or
            ``models:/NAME@alias``.
        host, port, name, kind: override ``serve_cfg.host``, ``.port``, ``.model_name``, ``.kind``.
        serve_cfg: request limits, batching and strictness.
        dummy: serve fake outputs instead of a model (API tests only); kind "auto" is an embedder.
    """
    settings = tune_process()  # before model.load() imports torch
    log.info("process settings: %s", " ".join(f"{k}={v}" for k, v in settings.items()))
    kind = kind or serve_cfg.kind
    if dummy:
        model_kind = ModelKind.EMBEDDER if kind == "auto" else ModelKind(kind)
    else:
        source = local_source(source)
        model_kind = detect_kind(source) if kind == "auto" else ModelKind(kind)
    model = build_model(model_kind, name or serve_cfg.model_name, source, serve_cfg, dummy=dummy)
    model.load()
    run_server(
        [model],
        host=serve_cfg.host if host is None else host,
        port=serve_cfg.port if port is None else port,
        serve_cfg=serve_cfg,
    )


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace, ServeConfig]:
    parser = argparse.ArgumentParser(
        prog="python -m flagops.serving.server", description=__doc__.split("\n")[0], allow_abbrev=False
    )
    defaults = ServeConfig()
    parser.add_argument("--model", help="model directory, pkg:PACKAGE, tiny-bert, tiny-reranker or models:/NAME@alias")
    parser.add_argument("--kind", choices=["auto", *(k.value for k in ModelKind)], help="default: read the model")
    parser.add_argument("--dummy", action="store_true", help="serve fake outputs (API tests): 8-dim hash vectors")
    parser.add_argument("--host", help=f"bind address (default {defaults.host})")
    parser.add_argument("--port", type=int, help=f"HTTP port (default {defaults.port})")
    parser.add_argument("--name", help=f"model name in the routes (default {defaults.model_name})")
    for field, kind in CONFIG_FLAGS.items():
        flag, default = f"--{field.replace('_', '-')}", getattr(defaults, field)
        parser.add_argument(flag, type=kind, help=f"serve.{field} (default {default})")
    parser.add_argument("--truncation", choices=["truncate", "reject"], help="texts over the token limit")
    parser.add_argument("--strict", action=argparse.BooleanOptionalAction, help="reject unknown request fields")
    args = parser.parse_args(argv)
    if not args.model and not args.dummy:
        parser.error("--model is required (or --dummy for fake outputs)")
    settings = {field: getattr(args, field) for field in [*CONFIG_FLAGS, "truncation", "strict", "kind"]}
    try:
        cfg = ServeConfig(**{k: v for k, v in settings.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        parser.error(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}")
    return parser, args, cfg


def main(argv: Sequence[str] | None = None) -> None:
    from flagops.models.sources import ModelSourceError

    parser, args, cfg = parse_args(argv)
    try:
        serve(args.model or "dummy", host=args.host, port=args.port, name=args.name, serve_cfg=cfg, dummy=args.dummy)
    except (KindError, ModelSourceError, ConfigError) as exc:  # a source or device we cannot serve: say why, exit 2
        parser.error(str(exc))


if __name__ == "__main__":
    main()
