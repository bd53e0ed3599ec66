"""The server behind `flagops serve`: one model in a KServe ModelServer, on 127.0.0.1 unless told otherwise.

Routes: KServe V1 (``/v1/models/NAME:predict``), V2 / Open Inference Protocol
(``/v2/models/NAME/infer``, ``/v2/health/ready``), ``/metrics`` (Prometheus),
``/openapi.json``, and per kind ``POST /v1/embeddings`` (OpenAI; embedder and M3) or
``POST /v1/rerank`` (reranker).

    flagops serve --model DIR|pkg:PACKAGE|tiny-bert|tiny-reranker|models:/NAME@alias | --dummy \
        [--kind auto|embedder|reranker|m3|visual] [--host 127.0.0.1] [--port 8080] [--name embedder] \
        [--profile P] [serve.max_texts=N serve.truncation=reject ...]

The command line is ``flagops.cli``'s; this module only builds the model and runs the server.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import Any

import kserve
from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING

from flagops.config import ServeConfig
from flagops.serving.app import FlagopsRESTServer
from flagops.serving.kinds import ModelKind, build_model, detect_kind
from flagops.serving.process import tune_process

log = logging.getLogger(__name__)


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


def configure_logging() -> None:
    """kserve's log handler and format for flagops' loggers too (kserve configures only its own and uvicorn's)."""
    kserve.logging.configure_logging()  # what ModelServer does; it skips it once configured
    ours = logging.getLogger("flagops")
    ours.handlers = list(logging.getLogger("kserve").handlers)
    ours.setLevel(logging.INFO)


def local_source(source: str) -> str:
    """A local directory for any model source (registry URIs are fetched, tiny models built)."""
    from flagops.models.reranker import resolve_reranker_source
    from flagops.serving.base import resolve_source

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
    configure_logging()
    given = {"host": host, "port": port, "model_name": name, "kind": kind}
    serve_cfg = serve_cfg.model_copy(update={k: v for k, v in given.items() if v is not None})
    settings = tune_process()  # before model.load() imports torch
    log.info("process settings: %s", " ".join(f"{k}={v}" for k, v in settings.items()))
    log.info("serve settings: %s", serve_cfg.model_dump_json())  # what the profile and the command line made of them
    if dummy:
        model_kind = ModelKind.EMBEDDER if serve_cfg.kind == "auto" else ModelKind(serve_cfg.kind)
    else:
        source = local_source(source)
        model_kind = detect_kind(source) if serve_cfg.kind == "auto" else ModelKind(serve_cfg.kind)
    model = build_model(model_kind, serve_cfg.model_name, source, serve_cfg, dummy=dummy)
    model.load()
    run_server([model], host=serve_cfg.host, port=serve_cfg.port, serve_cfg=serve_cfg)
