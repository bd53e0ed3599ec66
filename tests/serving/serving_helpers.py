"""Helpers for the serving tests: start and stop a server subprocess, call its routes."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flagops.serving.smoke import free_port, wait_ready

MAX_TEXTS = 6
MAX_CHARS = 400
LIMITS = [f"serve.max_texts={MAX_TEXTS}", f"serve.max_chars={MAX_CHARS}"]
DUMMY_MAX_TOKENS = 50  # words, for the dummy models
RERANKER_MAX_TOKENS = 64
MAX_BODY_BYTES = 65536
STARTUP_S = 180  # the tiny model loads in ~10 s alone; the 2 shared cores can be busy


@dataclass
class Server:
    url: str
    name: str
    proc: subprocess.Popen
    log: Path


def serve_command(*args: str) -> list[str]:
    """`flagops serve ARGS` with this interpreter."""
    return [sys.executable, "-m", "flagops.cli", "serve", *args]


def start_server(log: Path, name: str, *args: str) -> Server:
    """`flagops serve --port FREE --name NAME ARGS`, once it answers ready."""
    port = free_port()
    return launch(log, name, port, serve_command("--port", str(port), "--name", name, *args))


def launch(log: Path, name: str, port: int, argv: list[str]) -> Server:
    """Run ``argv`` (a server of model ``name`` on loopback ``port``), logging to ``log``, until it is ready."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", name, proc, log)
    try:
        wait_ready(f"{server.url}/v2/health/ready", proc, timeout=STARTUP_S)
    except RuntimeError as exc:
        stop_server(server)
        pytest.fail(f"{exc}:\n{log.read_text()[-4000:]}")
    return server


def stop_server(server: Server) -> int:
    server.proc.terminate()
    try:
        return server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        return server.proc.wait(timeout=10)


def post(server: Server, path: str, body) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers={"Content-Type": "application/json"}, timeout=60)


def v1(server: Server, body) -> httpx.Response:
    return post(server, f"/v1/models/{server.name}:predict", body)


def v2(server: Server, body) -> httpx.Response:
    return post(server, f"/v2/models/{server.name}/infer", body)


def bytes_input(name: str, texts) -> dict:
    return {"name": name, "shape": [len(texts)], "datatype": "BYTES", "data": texts}


def metrics(server: Server) -> dict[tuple[str, tuple], float]:
    """Every sample at ``/metrics``: ``{(name, sorted labels): value}``."""
    r = httpx.get(server.url + "/metrics", timeout=30)
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(r.text) for s in family.samples}
