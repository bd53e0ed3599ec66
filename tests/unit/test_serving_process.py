"""The serving process defaults: OMP_WAIT_POLICY before torch loads, glibc's arena cap.

Each case runs in a fresh interpreter, since both settings are per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, os, sys
{before}
from flagops.serving.process import tune_process
applied = tune_process()
import torch  # libgomp reads OMP_WAIT_POLICY here
print(json.dumps({{"applied": applied, "env": os.environ.get("OMP_WAIT_POLICY")}}))
"""


def probe(env_extra: dict[str, str], before: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "MALLOC_ARENA_MAX")}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before)],
        env={**env, **env_extra},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "stderr": proc.stderr}


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt is Linux-only")
def test_defaults_apply_when_unset():
    out = probe({})
    assert out["env"] == "PASSIVE"
    assert out["applied"] == {"OMP_WAIT_POLICY": "PASSIVE", "MALLOC_ARENA_MAX": "2"}


def test_the_environment_wins():
    out = probe({"OMP_WAIT_POLICY": "ACTIVE", "MALLOC_ARENA_MAX": "4"})
    assert out["env"] == "ACTIVE"
    assert out["applied"] == {"OMP_WAIT_POLICY": "ACTIVE", "MALLOC_ARENA_MAX": "4"}


def test_too_late_after_torch_says_so():
    out = probe({}, before="import torch")
    assert out["env"] is None  # not set: it could no longer take effect
    assert "comes too late" in out["stderr"]
