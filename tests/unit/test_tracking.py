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


# --------------------------------------------------------------------------- MLflow defaults

# A fresh interpreter: mlflow decides on telemetry when first imported, so these checks need
# one where it was not imported yet. CI markers are removed because mlflow turns itself off
# under CI and pytest, which would hide a client that flagops failed to drop.
ENV_PROBE = """
import json, os, sys
before = dict(os.environ)
import flagops.registry.tracking as tracking
out = {"import_changed_env": dict(os.environ) != before, "mlflow_loaded": "mlflow" in sys.modules}
import mlflow  # as a module that imports it at the top does: mlflow makes its telemetry client now
from mlflow.telemetry import get_telemetry_client
out["client_before"] = get_telemetry_client() is not None
tracking.configure_env()
tracking.configure_env()  # again: changes nothing
out["client_after"] = get_telemetry_client() is not None
out["env"] = {k: os.environ.get(k) for k in tracking.MLFLOW_ENV_DEFAULTS}
print(json.dumps(out))
"""
CI_MARKERS = ("CI", "PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE", "TF_BUILD")


def _probe(tmp_path, **env):
    import json
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if k not in CI_MARKERS and k not in tracking.MLFLOW_ENV_DEFAULTS}
    clean |= {"XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path), **env}  # mlflow's installation id lands here
    done = subprocess.run([sys.executable, "-c", ENV_PROBE], env=clean, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_changes_no_environment_and_configure_env_turns_telemetry_off(tmp_path):
    out = _probe(tmp_path)
    assert out["import_changed_env"] is False and out["mlflow_loaded"] is False
    assert out["client_before"] is True  # mlflow was imported with telemetry on ...
    assert out["client_after"] is False  # ... and configure_env dropped its client
    assert out["env"] == {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def test_configure_env_keeps_values_already_set(tmp_path):
    out = _probe(tmp_path, MLFLOW_DISABLE_TELEMETRY="false", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="true")
    assert out["env"] == {"MLFLOW_DISABLE_TELEMETRY": "false", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "true"}
    assert out["client_after"] is True  # the user asked for telemetry; flagops leaves it on
