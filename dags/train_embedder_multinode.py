"""Retraining with multi-node training: the FLAGOPS_PROFILE DAG, its training step a Kubeflow PyTorchJob.

The same tasks and edges as `retrain_embedder`, except the training task (train_embedder or train_m3),
which becomes a task group of two:
- `submit_pytorchjob` runs `flagops train submit-pytorchjob` on the workspace's params.yaml. Local
  mode applies the job with the worker's kubectl; kubernetes mode runs it in the flagops image and
  applies it with the pod's service account (`--in-cluster`; RBAC: create pytorchjobs, configmaps).
- `wait_for_pytorchjob` defers to the triggerer, which polls the job until it succeeds or fails,
  so no worker slot is held while it trains (_flagops_pytorchjob.py).
evaluate, register_model, promote_model and deploy_model then read the model the job wrote to the
workspace PVC. FLAGOPS_PTJ_WORKERS / FLAGOPS_PTJ_GPUS set the Worker pods and GPUs per pod,
FLAGOPS_PTJ_POLL_S how often the triggerer reads the job's status (dags/README.md).
"""

from __future__ import annotations

import hashlib
import os

from _flagops_dag import MODE, WORKDIR, add_tasks, bash_task, dag_kwargs, step_task
from _flagops_pytorchjob import WaitForPyTorchJob
from _flagops_settings import PROFILE
from airflow.sdk import DAG, TaskGroup

from flagops import catalog
from flagops.config import load_config

PIPE = catalog.pipeline(load_config(PROFILE))
TRAIN = PIPE.producer()["model"]  # the profile's training task, as flagops.training.pytorchjob.training_step_name
NAMESPACE = os.environ.get("FLAGOPS_K8S_NAMESPACE", "flagops")
JOB = "{{ pytorchjob_name(run_id, dag_run.clear_number) }}"  # rendered per run, the same in both tasks
ARGV = [
    "flagops",
    "train",
    "submit-pytorchjob",
    "--params",
    "params.yaml",
    "--name",
    JOB,
    "--namespace",
    NAMESPACE,
    "--workers",
    os.environ.get("FLAGOPS_PTJ_WORKERS", "1"),
    "--gpus-per-worker",
    os.environ.get("FLAGOPS_PTJ_GPUS", "8"),
]  # fmt: skip (a flag and its value on one line)


def pytorchjob_name(run_id: str, clear_number: int | None) -> str:
    """One job per DAG run (and per clear of it): applying a finished job's name again would not
    train again, and the waiter would read the old job's status."""
    digest = hashlib.sha256(f"{run_id}/{clear_number or 0}".encode()).hexdigest()[:10]
    return f"flagops-{TRAIN.replace('_', '-')}-{digest}"


def submit():
    if MODE == "local":
        return bash_task("submit_pytorchjob", ARGV, workdir=WORKDIR)
    from _flagops_pod import pod

    argv = [*ARGV, "--in-cluster", "--pvc", os.environ.get("FLAGOPS_K8S_PVC", "flagops-workspace")]
    account = os.environ.get("FLAGOPS_K8S_SERVICE_ACCOUNT", "flagops-pipeline")
    return pod("submit_pytorchjob", argv, catalog.Resources(cpu="500m", memory="512Mi"), workdir=WORKDIR, service_account_name=account)


def multinode_task(task: catalog.Task, **kw):
    """The training task as submit >> wait (a task group named after it); any other task as a step."""
    if task.name != TRAIN:
        return step_task(task, **kw)
    reader = "kubectl" if MODE == "local" else "incluster"
    poll_s = float(os.environ.get("FLAGOPS_PTJ_POLL_S", "30"))
    with TaskGroup(task.name) as group:
        submit() >> WaitForPyTorchJob(task_id="wait_for_pytorchjob", job_name=JOB, namespace=NAMESPACE, reader=reader, poll_s=poll_s, **kw)
    return group


macros = {"pytorchjob_name": pytorchjob_name}
with DAG("train_embedder_multinode", doc_md=__doc__, **dag_kwargs(schedule=None, user_defined_macros=macros)) as dag:
    add_tasks(PIPE, make=multinode_task)
