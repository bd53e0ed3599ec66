"""Tracking: nested step runs under a parent passed by id (DVC) or by key (Airflow, KFP)."""

import mlflow
import pytest

from flagops.config import load_config
from flagops.registry import tracking


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    monkeypatch.delenv(tracking.PIPELINE_KEY_ENV, raising=False)
    yield load_config("tiny", [f"registry.tracking_uri=sqlite:///{tmp_path}/mlflow.db"])
    mlflow.set_tracking_uri(None)


def _steps(cfg):
    exp = mlflow.get_experiment_by_name(cfg.registry.experiment)
    return mlflow.MlflowClient().search_runs([exp.experiment_id])


def test_pipeline_key_groups_steps_under_one_parent(cfg, monkeypatch):
    monkeypatch.setenv(tracking.PIPELINE_KEY_ENV, "airflow:retrain:run-1")
    for name in ("build_corpus", "evaluate"):
        with tracking.step_run(cfg, name, ("corpus",)):
            pass
    runs = _steps(cfg)
    parents = [r for r in runs if r.data.tags.get("flagops.kind") == "pipeline"]
    assert len(parents) == 1 and parents[0].data.tags["flagops.pipeline_key"] == "airflow:retrain:run-1"
    children = [r for r in runs if "flagops.step" in r.data.tags]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}


def test_in_process_pipeline_run_nests_steps(cfg):
    with tracking.pipeline_run(cfg, "p") as parent, tracking.step_run(cfg, "evaluate", ("evaluate",)) as run:
        assert run.data.tags["mlflow.parentRunId"] == parent


def test_without_parent_steps_are_top_level(cfg):
    with tracking.step_run(cfg, "evaluate", ("evaluate",)):
        pass
    (run,) = _steps(cfg)
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.data.params["evaluate.bm25"] == "True"


def test_metric_names_are_mlflow_safe():
    assert tracking.mlflow_key("candidate/ndcg@10") == "candidate/ndcg_at_10"
