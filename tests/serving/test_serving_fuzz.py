"""A short schemathesis run against the server's own /openapi.json: no request may get a 5xx.

Bounded for the suite: 20 examples per operation, one worker, a fixed seed. The longer
run is in flagops/serving/README.md. The model repository's load/unload routes are left
out: they change the server under test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("schemathesis")

CONFIG = Path(__file__).with_name("schemathesis.toml")
TIMEOUT_S = 120


def schemathesis(server, tmp_path: Path, max_examples: int = 20) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(cli),
        "--config-file",
        str(CONFIG),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(max_examples),
        "--seed",
        "20240601",
        "--workers",
        "1",
        "--exclude-path-regex",
        "/repository/",
        "--generation-database",
        "none",
        "--no-color",
    ]
    env = {**os.environ, "FLAGOPS_MODEL_NAME": server.name}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.mark.parametrize("server", ["dummy_server", "dummy_reranker_server", "dummy_m3_server"])
def test_no_server_errors_under_fuzzing(request, server, tmp_path):
    served = request.getfixturevalue(server)
    result = schemathesis(served, tmp_path)
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert " passed" in result.stdout and "Server error" not in result.stdout, report
