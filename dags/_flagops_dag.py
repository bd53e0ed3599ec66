"""The retraining DAG, built from flagops.catalog: one task per step, edges from its artifacts.

Each task runs the command the DVC stages run (flagops.dvc.stage_cmd) in a workspace holding
params.yaml. FLAGOPS_AIRFLOW_MODE=local (default): the main venv's `flagops` in a BashOperator;
=kubernetes: the flagops image in a KubernetesPodOperator (_flagops_pod.py). Env vars: README.md.
"""

from __future__ import annotations

import os
import shlex
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.sdk import DAG, Asset

from flagops import catalog
from flagops.dvc import stage_cmd

REPO = Path(__file__).resolve().parents[1]
MODE = os.environ.get("FLAGOPS_AIRFLOW_MODE", "local")
# The model kind of the workspace's params.yaml (model.kind): picks train_embedder or train_m3.
KIND = os.environ.get("FLAGOPS_MODEL_KIND", "bge")
if MODE not in ("local", "kubernetes"):
    raise ValueError(f"FLAGOPS_AIRFLOW_MODE={MODE!r}: expected 'local' or 'kubernetes'")
# kubernetes: where the workspace PVC is mounted in each pod; local: a folder here, made
# absolute because it is the tasks' cwd and holds the default sqlite MLflow store.
if MODE == "kubernetes":
    WORKDIR = os.environ.get("FLAGOPS_WORKDIR", "/workspace")
else:
    WORKDIR = str(Path(os.environ.get("FLAGOPS_WORKDIR", REPO / "runs" / "airflow")).resolve())
# What build_corpus writes, for DAGs downstream of it (e.g. one that refreshes a search index).
CORPUS = Asset(name="flagops_corpus", uri=f"file://{WORKDIR}/{catalog.ARTIFACTS['corpus'].path}")
# A step overwrites its outputs atomically, so retrying it is safe; waits grow 2x from 5 min.
# Groups each run's step runs under one MLflow parent run (templated per DAG run).
PIPELINE_KEY = {"FLAGOPS_PIPELINE_KEY": "airflow:{{ dag.dag_id }}:{{ run_id }}"}
DEFAULT_ARGS = {"owner": "flagops", "retries": 2, "retry_delay": timedelta(minutes=5), "retry_exponential_backoff": 2}


def bash_task(step: catalog.Step, argv: list[str], *, workdir: str, **kw):
    from airflow.providers.standard.operators.bash import BashOperator

    flagops = os.environ.get("FLAGOPS_BIN", str(REPO / ".venv" / "bin" / "flagops"))
    uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/mlflow.db")  # 4 slashes
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true", **PIPELINE_KEY}
    command = shlex.join([flagops, *argv[1:]])
    return BashOperator(task_id=step.name, bash_command=command, cwd=workdir, env=env, append_env=True, **kw)


def dag_kwargs(**overrides) -> dict:
    """Settings the flagops DAGs share."""
    shared = {"start_date": datetime(2025, 1, 1, tzinfo=timezone.utc), "catchup": False, "default_args": DEFAULT_ARGS}
    return shared | {"max_active_runs": 1, "tags": ["flagops", "retraining", MODE, KIND]} | overrides


def retrain_dag(dag_id: str, doc_md: str) -> DAG:
    """One task per catalog step, wired by catalog.edges(); build_corpus updates CORPUS.

    FLAGOPS_SCHEDULE: a cron expression or preset (default @weekly), or `none` (manual only).
    """
    schedule = os.environ.get("FLAGOPS_SCHEDULE", "@weekly")
    if MODE == "local":
        task = bash_task
    else:
        from _flagops_pod import pod_task as task
    # max_active_runs=1: runs share one workspace, so a second run waits in the queue.
    with DAG(dag_id, doc_md=doc_md, **dag_kwargs(schedule=None if schedule.lower() == "none" else schedule)) as dag:
        tasks = {
            s.name: task(s, shlex.split(stage_cmd(s)), workdir=WORKDIR, outlets=[CORPUS] if s.name == "build_corpus" else [])
            for s in catalog.pipeline(KIND)
        }
        for upstream, downstream in sorted(catalog.edges(KIND)):
            tasks[upstream] >> tasks[downstream]
    return dag
