"""What the flagops DAG files read from the environment when they are parsed (dags/README.md).

A leaf module: _flagops_dag.py and _flagops_pod.py both import it and not each other's settings.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODE = os.environ.get("FLAGOPS_AIRFLOW_MODE", "local")
if MODE not in ("local", "kubernetes"):
    raise ValueError(f"FLAGOPS_AIRFLOW_MODE={MODE!r}: expected 'local' or 'kubernetes'")
# The profile (a name or a params YAML the DAG processor can read) whose DAG the retraining
# DAG runs; the tasks run with the workspace's params.yaml, which should be the same profile's.
PROFILE = os.environ.get("FLAGOPS_PROFILE", "demo")
# kubernetes: where the workspace PVC is mounted in each pod; local: a folder here, made
# absolute because it is the tasks' cwd and holds the default sqlite MLflow store.
if MODE == "kubernetes":
    WORKDIR = os.environ.get("FLAGOPS_WORKDIR", "/workspace")
else:
    WORKDIR = str(Path(os.environ.get("FLAGOPS_WORKDIR", REPO / "runs" / "airflow")).resolve())
# Groups each run's step runs under one MLflow parent run (templated per DAG run).
PIPELINE_KEY = {"FLAGOPS_PIPELINE_KEY": "airflow:{{ dag.dag_id }}:{{ run_id }}"}
