"""The retraining DAG, built from flagops.catalog: one task per step, edges from its artifacts.

The DAG is the one FLAGOPS_PROFILE selects (catalog.pipeline). Each task runs the command the
DVC stages run (flagops.dvc.stage_cmd) in a workspace holding params.yaml.
FLAGOPS_AIRFLOW_MODE=local (default): the main venv's `flagops` in a BashOperator;
=kubernetes: the flagops image in a KubernetesPodOperator (_flagops_pod.py). Env vars: README.md.
"""

from __future__ import annotations

import os
import shlex
from datetime import UTC, datetime, timedelta

from _flagops_settings import MODE, PIPELINE_KEY, PROFILE, REPO, WORKDIR
from airflow.sdk import DAG, Asset

from flagops import catalog
from flagops.config import load_config
from flagops.dvc import stage_cmd

# What build_corpus writes, for DAGs downstream of it (e.g. one that refreshes a search index).
CORPUS = Asset(name="flagops_corpus", uri=f"file://{WORKDIR}/{catalog.ARTIFACTS['corpus'].path}")
# A step overwrites its outputs atomically, so retrying it is safe; waits grow 2x from 5 min.
DEFAULT_ARGS = {"owner": "flagops", "retries": 2, "retry_delay": timedelta(minutes=5), "retry_exponential_backoff": 2}


def bash_task(task_id: str, argv: list[str], *, workdir: str, **kw):
    """argv (a `flagops ...` command) in a BashOperator, with the main venv's flagops and MLflow settings."""
    from airflow.providers.standard.operators.bash import BashOperator

    flagops = os.environ.get("FLAGOPS_BIN", str(REPO / ".venv" / "bin" / "flagops"))
    uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/mlflow.db")  # 4 slashes
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true", **PIPELINE_KEY}
    command = shlex.join([flagops, *argv[1:]])
    return BashOperator(task_id=task_id, bash_command=command, cwd=workdir, env=env, append_env=True, **kw)


def dag_kwargs(**overrides) -> dict:
    """Settings the flagops DAGs share."""
    shared = {"start_date": datetime(2025, 1, 1, tzinfo=UTC), "catchup": False, "default_args": DEFAULT_ARGS}
    tags = ["flagops", "retraining", MODE, load_config(PROFILE).profile]
    return shared | {"max_active_runs": 1, "tags": tags} | overrides


def step_task(task: catalog.Task, **kw):
    """The Airflow task running one pipeline task: the DVC stage's command, here or in a pod."""
    if MODE == "local":
        return bash_task(task.name, shlex.split(stage_cmd(task)), workdir=WORKDIR, **kw)
    from _flagops_pod import pod_task

    return pod_task(task, shlex.split(stage_cmd(task)), workdir=WORKDIR, **kw)


def add_tasks(pipe: catalog.Pipeline, make=step_task) -> dict:
    """One Airflow task per pipeline task (``make(task)``), wired by the pipeline's edges."""
    tasks = {t.name: make(t, outlets=[CORPUS] if t.name == "build_corpus" else []) for t in pipe.tasks}
    for upstream, downstream in sorted(pipe.edges()):
        tasks[upstream] >> tasks[downstream]
    return tasks


def retrain_dag(dag_id: str, doc_md: str, pipe: catalog.Pipeline | None = None) -> DAG:
    """One task per task of the profile's DAG (FLAGOPS_PROFILE), wired by its artifact edges;
    build_corpus updates CORPUS.

    FLAGOPS_SCHEDULE: a cron expression or preset (default @weekly), or `none` (manual only).
    """
    schedule = os.environ.get("FLAGOPS_SCHEDULE", "@weekly")
    pipe = pipe or catalog.pipeline(load_config(PROFILE))
    # max_active_runs=1: runs share one workspace, so a second run waits in the queue.
    with DAG(dag_id, doc_md=doc_md, **dag_kwargs(schedule=None if schedule.lower() == "none" else schedule)) as dag:
        add_tasks(pipe)
    return dag
