"""A smoke check of a served model: start `flagops serve` as a subprocess, send a request, stop.

``run_demo`` uses it on the champion, ``deploy.mode=local`` on the downloaded version, the
serving tests and benchmarks on their own servers (``free_port``, ``wait_ready``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from flagops.config import FlagopsConfig

SAMPLE_QUERIES = ["How do I parse a JSON document into a Python object?", "Run a coroutine until it completes."]
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port nobody listens on now, on loopback (a race with other processes is unlikely)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    """Poll ``url`` until it answers 200; RuntimeError if ``proc`` exits first or ``timeout`` s pass."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server was not ready at {url} after {timeout:.0f} s")


def serve_command(model_uri: str, cfg: FlagopsConfig, port: int) -> list[str]:
    """`flagops serve` for ``model_uri`` on loopback, with ``cfg.serve``'s limits and batching."""
    return [
        sys.executable,
        "-m",
        "flagops.cli",
        "serve",
        "--model",
        model_uri,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--name",
        cfg.serve.model_name,
        *cfg.serve.overrides(),
    ]


class SmokeResult(NamedTuple):
    vectors: list[list[float]]  # one dense vector per sample query, from /v1/embeddings
    lexical: list[tuple[str, float]] | None  # M3: the first query's heaviest tokens, from V1 return_sparse
    backend: str = "unknown"  # what served, from GET /v2/models/NAME: torch-fp32, torch-int8-dynamic...
    quantization_check: str | None = None  # the summary of the accuracy check of the lossy path it serves, when the model carries one


# A reranker's smoke request: the first sample query against passages, one of which answers it.
SAMPLE_PASSAGES = [
    "Run a coroutine and return its result; the event loop is created and closed around it.",
    "Deserialize a JSON document (a str, bytes or bytearray instance) to a Python object.",
    "Return the base name of a path: the second half of the pair split() returns.",
]


@contextmanager
def running_server(model_uri: str, cfg: FlagopsConfig, workdir: Path) -> Iterator[str]:
    """`flagops serve` on a free loopback port while the block runs; yields its base URL.

    A ``models:/`` URI is read from ``cfg.registry``'s tracking server (sqlite under
    ``workdir`` unless one is configured). On a failed request the server's log is printed.
    """
    import httpx

    from flagops.registry.tracking import tracking_uri

    port = free_port()
    env = dict(os.environ) | {"MLFLOW_TRACKING_URI": tracking_uri(cfg.registry, workdir)}
    url = f"http://{LOOPBACK}:{port}"
    # The log goes to a file, not a pipe: nobody reads a pipe while the server runs, and a full one stalls it.
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(serve_command(model_uri, cfg, port), env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(f"{url}/v2/health/ready", proc)
            yield url
        except (RuntimeError, httpx.HTTPError):
            stop(proc)
            log.seek(0)
            print(log.read()[-3000:], file=sys.stderr)
            raise
        finally:
            stop(proc)


def smoke_serve(model_uri: str, cfg: FlagopsConfig, workdir: Path) -> SmokeResult:
    """Serve ``model_uri``, embed SAMPLE_QUERIES via /v1/embeddings (and, for an M3 model, ask
    V1 for the first query's lexical weights), read which backend served from the V2 metadata, stop."""
    import httpx

    name = cfg.serve.model_name
    with running_server(model_uri, cfg, workdir) as url:
        r = httpx.post(f"{url}/v1/embeddings", json={"model": name, "input": SAMPLE_QUERIES}, timeout=60.0)
        r.raise_for_status()
        vectors = [row["embedding"] for row in r.json()["data"]]
        lexical = None
        if cfg.model.kind == "m3":
            body = {"instances": SAMPLE_QUERIES[:1], "is_query": True, "return_dense": False, "return_sparse": True}
            r = httpx.post(f"{url}/v1/models/{name}:predict", json=body, timeout=60.0)
            r.raise_for_status()
            sparse = r.json()["predictions"][0]["sparse"]
            lexical = list(zip(sparse["tokens"], sparse["values"], strict=True))[:5]  # heaviest first
        r = httpx.get(f"{url}/v2/models/{name}", timeout=60.0)
        r.raise_for_status()
        meta = r.json()
    check = meta.get("quantization_check")
    return SmokeResult(vectors, lexical, meta["backend"], check["summary"] if check else None)


def smoke_rerank(model_uri: str, cfg: FlagopsConfig, workdir: Path) -> list[tuple[int, float]]:
    """Serve a reranker, rank SAMPLE_PASSAGES for the first sample query via /v1/rerank, stop;
    returns (passage index, relevance score), best first."""
    import httpx

    body = {"model": cfg.serve.model_name, "query": SAMPLE_QUERIES[0], "documents": SAMPLE_PASSAGES}
    with running_server(model_uri, cfg, workdir) as url:
        r = httpx.post(f"{url}/v1/rerank", json=body, timeout=60.0)
        r.raise_for_status()
    return [(row["index"], row["relevance_score"]) for row in r.json()["results"]]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM ``proc`` (the server shuts down gracefully) and wait for it."""
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=30)
