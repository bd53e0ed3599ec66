"""Helpers for the serving tests: start and stop a server subprocess, call its routes."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

MAX_TEXTS = 6
MAX_CHARS = 400
LIMITS = ["--max-texts", str(MAX_TEXTS), "--max-chars", str(MAX_CHARS)]
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(log: Path, name: str, *args: str) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "flagops.serving.server", "--port", str(port), "--name", name, *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", name, proc, log)
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode} during startup:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/v2/health/ready", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    stop_server(server)
    pytest.fail(f"server not ready after {STARTUP_S} s:\n{log.read_text()[-4000:]}")


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
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
