"""Profile tiny_visual_bge under `dvc repro`: the tiny loop plus the Visualized-BGE branch (drawn
shapes, stage-2 training under the frozen MiniLM, Recall@1/5 against two baselines), its metrics
in the metrics file and in MLflow.

What is asserted of the numbers is what holds at this scale: the caption-only search, through a
real text encoder, finds most held-out images by a new phrasing; the smoke run's few steps barely
move the ViT, so the trained model's recall is asserted to be a recall, not to beat its baseline
(docs/research.md has a longer run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from flagops.models.visual_bge import VisualBGE

pytestmark = [pytest.mark.slow, pytest.mark.long]
FLAGOPS = [sys.executable, "-m", "flagops.cli"]
STEPS = ["build_visual_bge_data", "train_visual_bge", "evaluate_visual_bge"]
KEYS = {
    "visual_bge/t2i_recall@1",
    "visual_bge/t2i_recall@5",
    "visual_bge/composed_recall@1",
    "visual_bge/composed_recall@5",
    "random_init/t2i_recall@1",
    "random_init/composed_recall@1",
    "caption_search/t2i_recall@1",
    "caption_search/composed_recall@1",
}


def test_visual_bge_pipeline_trains_the_vit_and_scores_it_against_both_baselines(tmp_path, repo_root):
    wd = tmp_path / "ws"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [*FLAGOPS, "pipeline", "--profile", "tiny_visual_bge", "--workdir", str(wd)],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    ran = [line.split("'")[1] for line in (done.stdout + done.stderr).splitlines() if line.startswith("Running stage '")]
    assert set(STEPS) <= set(ran)
    assert len(list((wd / "data/visual_bge/images").glob("*.png"))) == 360  # 120 combinations x (2 training + 1 held out)
    model = VisualBGE.load(wd / "models/visual_bge")
    assert model.settings.num_patches == 4 and model.dim == 384  # 32 px / 16 px patches, into MiniLM's width
    metrics = json.loads((wd / "metrics/research_visual_bge.json").read_text())
    assert set(metrics) == KEYS and all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["visual_bge/t2i_recall@5"] >= metrics["visual_bge/t2i_recall@1"]
    assert metrics["caption_search/t2i_recall@1"] > 0.5  # 120 candidates: chance is 0.008
    uri = f"sqlite:///{wd / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("flagops").experiment_id])
    evaluated = next(r for r in runs if r.data.tags.get("flagops.step") == "evaluate_visual_bge")
    assert {k.replace("@", "_at_") for k in KEYS} <= set(evaluated.data.metrics)
