"""The LLM-Embedder branch under `dvc repro`: `flagops pipeline --profile tiny_llm_embedder` trains the
tiny Llama, scores every mined key by its answer likelihood, distils the tiny encoder from those
rewards and compares both encoders' retrieval and the LM's answers. `make test-long` runs it.

What is asserted is what is robust at this scale: the outputs, their format, the metric keys in
the file and in MLflow, and the bounds every number must lie in. Not asserted: that LLM-Embedder
beats the base. The tiny LM reads its knowledge barely at all (gold passage vs none: 0.1 nat), so
its reward ranks the positive first for ~31% of queries (chance 25%) and the difference between
the two encoders is within noise (docs/research.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from flagops.registry.tracking import mlflow_key

pytestmark = [pytest.mark.slow, pytest.mark.long]
FLAGOPS = [sys.executable, "-m", "flagops.cli"]
STEPS = {"train_base_lm", "score_with_lm", "train_llm_embedder", "evaluate_llm_embedder"}
KEYS = {f"{s}/{m}" for s in ("base", "llm_embedder") for m in ("ndcg@10", "answer_nll", "answer_em")} | {
    "oracle/answer_nll",
    "no_retrieval/answer_nll",
}


def test_llm_embedder_pipeline_rewards_trains_and_scores_both(tmp_path_factory, repo_root):
    wd = tmp_path_factory.mktemp("e2e-llm-embedder") / "ws"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [*FLAGOPS, "pipeline", "--profile", "tiny_llm_embedder", "--workdir", str(wd)],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    ran = {line.split("'")[1] for line in (done.stdout + done.stderr).splitlines() if line.startswith("Running stage '")}
    assert STEPS <= ran

    rows = [json.loads(line) for line in (wd / "data/llm_embedder_train.jsonl").read_text().splitlines()]
    assert rows and all(r.keys() == {"query", "pos", "neg", "teacher_scores", "answers", "task"} for r in rows)
    assert all(len(r["teacher_scores"]) == len(r["pos"]) + len(r["neg"]) and r["task"] == "qa" for r in rows)
    assert all(r["answers"] == [r["pos"][0].split("\n")[0]] for r in rows)

    model = wd / "models/llm_embedder"
    assert json.loads((model / "flagops_embedder.json").read_text())["pooling"] == "cls"
    assert json.loads((wd / "plots/llm_embedder_train_loss.json").read_text())[0].keys() == {"step", "loss"}

    metrics = json.loads((wd / "metrics/research_llm_embedder.json").read_text())
    assert set(metrics) == KEYS
    for system in ("base", "llm_embedder"):
        assert 0.0 <= metrics[f"{system}/ndcg@10"] <= 1.0 and 0.0 <= metrics[f"{system}/answer_em"] <= 1.0
        assert metrics[f"{system}/answer_nll"] > 0.0

    uri = f"sqlite:///{wd / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("flagops").experiment_id])
    (evaluation,) = [r for r in runs if r.data.tags.get("flagops.step") == "evaluate_llm_embedder"]
    assert {mlflow_key(k) for k in KEYS} <= set(evaluation.data.metrics), sorted(evaluation.data.metrics)
    (scoring,) = [r for r in runs if r.data.tags.get("flagops.step") == "score_with_lm"]
    assert 0.0 <= scoring.data.metrics["teacher/pos_top1"] <= 1.0
