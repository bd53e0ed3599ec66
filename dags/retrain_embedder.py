"""Airflow 3 DAGs for flagops retraining, built from flagops.catalog (see dags/README.md).

- `retrain_embedder`: every catalog step as a task, on a schedule (FLAGOPS_SCHEDULE).
- `retrain_embedder_on_new_data`: runs when a data-landing job updates the landed-corpus
  Asset, and queues a `retrain_embedder` run (one DAG runs the steps, one run at a time).
"""

from __future__ import annotations

import os

from _flagops_dag import CORPUS, MODE, WORKDIR, dag_kwargs, retrain_dag
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Asset

RETRAIN_DOC = f"""
### Retrain the BGE embedder ({MODE} mode)

One task per `flagops.catalog` step, wired by the catalog's artifact edges. Each task runs
`flagops step NAME --params params.yaml --in ... --out ...`, the command `dvc.yaml` runs,
in the workspace `{WORKDIR}` (put the profile's params.yaml there: `flagops params demo -o
params.yaml`). Every step logs to MLflow; `promote_model` gives the `champion` alias only
if the candidate beats the current champion. `build_corpus` updates the Asset `{CORPUS.uri}`.
"""

# The user's data-landing job updates this Asset after it writes new passages where the
# profile's `corpus.source` points. See dags/README.md for the three ways to do it.
LANDED = Asset(
    name="flagops_landed_corpus",
    uri=os.environ.get("FLAGOPS_LANDED_CORPUS_URI", f"file://{WORKDIR}/landing/corpus.jsonl"),
)

ON_NEW_DATA_DOC = f"""
### Retrain when new data lands

Scheduled on the Asset `{LANDED.uri}`. A data-landing job that writes new passages (where
`corpus.source` in the workspace's params.yaml points) then records an event for that Asset:
from an Airflow task with `outlets=[Asset("{LANDED.uri}")]`, or with
`POST /api/v2/assets/events`. This DAG then queues a `retrain_embedder` run; that DAG's
`max_active_runs=1` keeps runs from sharing the workspace at the same time.
It does not listen to `{CORPUS.uri}`: `build_corpus` updates that one, which would loop.
"""

retrain_embedder = retrain_dag("retrain_embedder", RETRAIN_DOC)

with DAG("retrain_embedder_on_new_data", doc_md=ON_NEW_DATA_DOC, **dag_kwargs(schedule=[LANDED])) as on_new_data:
    TriggerDagRunOperator(
        task_id="trigger_retrain_embedder",
        trigger_dag_id=retrain_embedder.dag_id,
        conf={"reason": "new data landed"},
        wait_for_completion=False,
    )
