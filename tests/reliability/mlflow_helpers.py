"""A real `mlflow server` for the reliability tests, and HTTP fronts to put before it.

Imported by name, as tests/serving imports serving_helpers (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import http.client
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from flagops.serving.smoke import free_port

STARTUP_S = 180  # the 2 shared cores can be busy


@dataclass
class MlflowServer:
    url: str
    root: Path  # its sqlite store and, under artifacts/, the artifacts it serves
    proc: subprocess.Popen

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and its workers
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def start_mlflow_server(root: Path) -> MlflowServer:
    """`mlflow server` on sqlite under ``root`` with proxied artifacts, on a free loopback port, once healthy."""
    port = free_port()
    argv = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")]
    log = root / "server.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", root, proc)
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"mlflow server not healthy after {STARTUP_S} s:\n{log.read_text()[-3000:]}")


def answer(handler: http.server.BaseHTTPRequestHandler, status: int, headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def proxy_handler(upstream: str, refuse: Callable[[http.server.BaseHTTPRequestHandler], int | None]):
    """A handler that forwards each request to ``upstream``, unless ``refuse(request)`` gives a status to answer instead."""
    target = httpx.URL(upstream)

    class Proxy(http.server.BaseHTTPRequestHandler):
        def forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if (status := refuse(self)) is not None:
                answer(self, status, {"WWW-Authenticate": 'Basic realm="mlflow"'} if status == 401 else None)
                return
            conn = http.client.HTTPConnection(target.host, target.port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            self.send_response(r.status)
            for k, v in r.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = forward

        def log_message(self, *args) -> None:
            pass

    return Proxy


class Serving:
    """An HTTP server on a free loopback port, in a thread, for the length of a ``with``."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> Serving:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
