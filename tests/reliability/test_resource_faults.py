"""Resources and faults: the real `flagops` CLI in a subprocess, with the machine against it.

Each case checks the same contract: a non-zero exit, one line on stderr that starts
``flagops: error:`` and says what to do (no traceback), and no output, whole or partial,
where the step was to write one. Cases (issue 15, item 5):

* a disk that fills during a write: ``RLIMIT_FSIZE`` (``ulimit -f``) of 32 KiB with SIGXFSZ
  ignored, so the write fails with EFBIG while ``build_corpus`` writes its ~100 KiB corpus;
* permission denied on the workspace: the output's parent directory is ``chmod 500``. Tests
  may run as root, where modes do not bind: then the CLI runs under ``setpriv`` with
  CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER dropped from its bounding set, so
  root obeys the mode like any user. Also, for every user: a file where the output's
  directory should be (ENOTDIR);
* MLflow unreachable: nothing listening on the tracking URI; a server that answers 503 to
  everything; a real ``mlflow server`` that goes away mid-run (a proxy in front of it answers
  503 once the step's run exists). MLflow's retries are made small here
  (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=1``, no backoff) so each case ends in bounded time;
* a GPU asked for on a machine without one: ``model.device=cuda`` for ``evaluate`` and
  ``serve.device=cuda`` for ``flagops serve``.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from flagops.serving.smoke import free_port
from tests.reliability.mlflow_helpers import Serving, proxy_handler, start_mlflow_server

QUICK_MLFLOW = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
MLFLOW_BOUND_S = 60  # each unreachable-MLflow case ends within this (with QUICK_MLFLOW)
REPO = Path(__file__).resolve().parents[2]


def flagops(*args: str, env: dict | None = None, preexec_fn=None, prefix: list[str] = (), timeout: float = 300):
    """`flagops ARGS` with this interpreter (after ``prefix``, a wrapper command); the finished process."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "flagops.cli", *args],
        env=full_env,
        preexec_fn=preexec_fn,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The error line, after checking the contract: non-zero, no traceback, one line naming ``needles``."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("flagops: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def nothing_written(out_dir: Path, name: str) -> None:
    """Neither the output nor atomic_path's temporary directory (``.NAME.*``) is left."""
    left = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    assert not any(n == name or n.startswith(f".{name}.") for n in left), left


def build_corpus(out: Path, *extra: str, **kw):
    return flagops("step", "build_corpus", "--profile", "tiny", "--out", f"corpus={out}", *extra, **kw)


# ---------------------------------------------------------------- disk full


def file_size_limit(limit: int):
    def apply() -> None:  # in the child, before exec: EFBIG on the write, not death by SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_disk_that_fills_during_a_write(tmp_path):
    out = tmp_path / "out" / "corpus.jsonl"
    proc = build_corpus(out, "--no-track", preexec_fn=file_size_limit(32 * 1024))
    line = one_line_error(proc, str(out), "File too large", "ulimit -f")
    assert proc.returncode == 1, line
    nothing_written(out.parent, out.name)
    again = build_corpus(out, "--no-track")  # the same command with room to write: whole output
    assert again.returncode == 0, again.stderr[-2000:]
    assert out.stat().st_size > 32 * 1024


# ---------------------------------------------------------------- permissions


# Root ignores mode bits through these capabilities; without them a root-owned 0500 directory binds.
DAC_CAPS = "-dac_override,-dac_read_search,-fowner"


def test_permission_denied_on_the_workspace(tmp_path):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    workspace.chmod(0o500)
    out = workspace / "data" / "corpus.jsonl"
    prefix = []
    if os.geteuid() == 0:  # root: the capabilities that bypass modes dropped, or the mode would not bind
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv (util-linux): chmod cannot bind")
        prefix = ["setpriv", f"--bounding-set={DAC_CAPS}", "--"]
    try:
        proc = build_corpus(out, "--no-track", prefix=prefix)
        line = one_line_error(proc, str(workspace / "data"), "Permission denied", "permissions")
        assert proc.returncode == 1, line
        assert list(workspace.iterdir()) == []
    finally:
        workspace.chmod(0o700)


def test_a_file_where_the_workspace_directory_should_be(tmp_path):
    (tmp_path / "data").write_text("not a directory\n")
    out = tmp_path / "data" / "corpus.jsonl"
    proc = build_corpus(out, "--no-track")
    one_line_error(proc, str(tmp_path / "data"), "a file stands where a directory should be")
    assert (tmp_path / "data").read_text() == "not a directory\n"


# ---------------------------------------------------------------- MLflow unreachable


def answer_503(handler) -> int:
    return 503


def check_unreachable(tmp_path: Path, uri: str, reason: str) -> None:
    out = tmp_path / "corpus.jsonl"
    t0 = time.monotonic()
    proc = build_corpus(out, env={"MLFLOW_TRACKING_URI": uri, **QUICK_MLFLOW})
    seconds = time.monotonic() - t0
    shown = uri.replace(":pw-9Xq@", ":***@")
    one_line_error(proc, f"MLflow tracking server {shown}", reason, "MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    assert "pw-9Xq" not in proc.stderr + proc.stdout
    assert seconds < MLFLOW_BOUND_S, seconds
    nothing_written(tmp_path, out.name)


def test_mlflow_with_nothing_listening(tmp_path):
    with socket.socket() as s:  # a port bound but not listening: refused, and nobody else takes it meanwhile
        s.bind(("127.0.0.1", 0))
        check_unreachable(tmp_path, f"http://ops:pw-9Xq@127.0.0.1:{s.getsockname()[1]}", "connection refused")


def test_mlflow_answering_503(tmp_path):
    with Serving(proxy_handler("http://127.0.0.1:9", answer_503)) as dead:
        check_unreachable(tmp_path, dead.url.replace("://", "://ops:pw-9Xq@"), "HTTP 503 each time")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


def test_mlflow_that_goes_away_mid_run(tmp_path, mlflow_server):
    created = []  # the step's run exists upstream: from then on the front answers 503, as a dead server behind a balancer would

    def after_run_created(request) -> int | None:
        if created:
            return 503
        created.extend([True] if request.path.split("?")[0].endswith("/runs/create") else [])
        return None

    with Serving(proxy_handler(mlflow_server.url, after_run_created)) as front:
        check_unreachable(tmp_path, front.url, "HTTP 503 each time")
    assert created, "the step never created its run"
    found = httpx.post(f"{mlflow_server.url}/api/2.0/mlflow/runs/search", json={"experiment_ids": ["1"]}, timeout=30).json()
    assert [r["info"]["run_name"] for r in found.get("runs", [])] == ["build_corpus"]  # it got that far


# ---------------------------------------------------------------- no GPU


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory):
    """A tiny model directory and an eval set, made by the real steps."""
    from flagops.models.embedder import Embedder

    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU: asking for one is no fault here")
    root = tmp_path_factory.mktemp("eval-inputs")
    Embedder.load("tiny-bert").save(root / "model")
    assert build_corpus(root / "corpus.jsonl", "--no-track").returncode == 0
    proc = flagops(
        "step",
        "synthesize_queries",
        "--profile",
        "tiny",
        "--no-track",
        "--in",
        f"corpus={root / 'corpus.jsonl'}",
        "--out",
        f"train_pairs={root / 'train_pairs.jsonl'}",
        "--out",
        f"eval_set={root / 'eval'}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def test_a_profile_that_demands_a_gpu(tmp_path, eval_inputs):
    out = tmp_path / "metrics.json"
    args = ["--in", f"model={eval_inputs / 'model'}", "--in", f"eval_set={eval_inputs / 'eval'}", "--out", f"metrics={out}"]
    proc = flagops("step", "evaluate", "--profile", "tiny", "--no-track", "model.device=cuda", *args)
    one_line_error(proc, "model.device=cuda", "no CUDA device", "model.device=auto or cpu")
    nothing_written(tmp_path, out.name)


def test_serving_that_demands_a_gpu(eval_inputs):
    proc = flagops("serve", "--model", str(eval_inputs / "model"), "--port", str(free_port()), "serve.device=cuda", timeout=180)
    one_line_error(proc, "serve.device=cuda", "no CUDA device", "serve.device=auto or cpu")
