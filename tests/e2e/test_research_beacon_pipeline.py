"""Activation Beacon as a DAG branch: `flagops pipeline --profile tiny_beacon` under `dvc repro`
trains the tiny base LM, its beacons, and scores both at 4x and 8x the base's window.

At this scale (a 64-token Llama trained for 60 steps, 30 beacon steps) the perplexity gap between
the beacon model and the truncated base is a few percent either way, so only what is robust is
asserted: the outputs, their keys, MLflow, and the KV cache each model keeps, which the windows fix.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.slow, pytest.mark.long]
FLAGOPS = [sys.executable, "-m", "flagops.cli"]


def test_beacon_pipeline_trains_beacons_and_scores_them_against_the_truncated_base(tmp_path_factory, repo_root):
    wd = tmp_path_factory.mktemp("e2e-beacon") / "ws"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    args = [*FLAGOPS, "pipeline", "--profile", "tiny_beacon", "--workdir", str(wd)]
    done = subprocess.run(args, cwd=repo_root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    ran = [line.split("'")[1] for line in (done.stdout + done.stderr).splitlines() if line.startswith("Running stage '")]
    assert ran[-3:] == ["train_base_lm", "train_beacon", "evaluate_beacon"]

    # only the beacon parameters were saved; the base stays as train_base_lm wrote it
    assert json.loads((wd / "models/beacon_lm/beacon.json").read_text()) == {"window": 16, "ratios": [2, 4, 8], "base_context": 64}
    assert (wd / "models/beacon_lm/beacon.safetensors").stat().st_size < (wd / "models/base_lm/model.safetensors").stat().st_size
    assert json.loads((wd / "plots/beacon_train_loss.json").read_text())[0].keys() == {"step", "loss"}
    assert (wd / "plots/beacon_perplexity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    metrics = json.loads((wd / "metrics/research_beacon.json").read_text())
    for model in ("base", "beacon"):
        for factor in (4, 8):
            assert 1.0 < metrics[f"{model}/ppl@{factor}x"] < 512  # better than uniform over the 512-token vocabulary
            assert math.isfinite(metrics[f"{model}/ppl@{factor}x"])
        assert 0.0 <= metrics[f"{model}/needle_exact_match"] <= metrics[f"{model}/needle_rouge_l"] <= 1.0
    assert 1.0 < metrics["base_beacon_window/ppl@8x"] < 512
    # at 512 tokens: the base keeps its 64-token window; beacons at ratio 8 (the adaptive pick) keep
    # 31 windows x 2 beacons plus the last window's 16 raw tokens
    assert metrics["base/kv_per_token@8x"] == 64 / 512
    assert metrics["beacon/kv_per_token@8x"] == (31 * 2 + 16) / 512

    uri = f"sqlite:///{wd / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    logged = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            logged |= run.data.metrics
    assert {"beacon/ppl_at_8x", "base/ppl_at_8x", "beacon/needle_rouge_l", "beacon/loss_end"} <= set(logged)
    assert logged["beacon/ppl_at_8x"] == pytest.approx(metrics["beacon/ppl@8x"])
