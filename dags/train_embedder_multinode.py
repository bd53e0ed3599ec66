"""Multi-node train_embedder as a Kubeflow PyTorchJob, submitted from Airflow (manual trigger).

The task runs `flagops train submit-pytorchjob` on the workspace's params.yaml: local mode
applies it with the worker's kubectl; kubernetes mode runs it in the flagops image and
applies it with the pod's service account (`--in-cluster`; RBAC: create pytorchjobs and
configmaps). FLAGOPS_PTJ_WORKERS / FLAGOPS_PTJ_GPUS set the Worker pods and GPUs per pod.
"""

from __future__ import annotations

import os
import shlex

from _flagops_dag import MODE, WORKDIR, dag_kwargs
from airflow.sdk import DAG

ARGV = [
    "flagops", "train", "submit-pytorchjob", "--params", "params.yaml",
    "--workers", os.environ.get("FLAGOPS_PTJ_WORKERS", "1"),
    "--gpus-per-worker", os.environ.get("FLAGOPS_PTJ_GPUS", "8"),
]  # fmt: skip

with DAG("train_embedder_multinode", doc_md=__doc__, **dag_kwargs(schedule=None)) as dag:
    if MODE == "local":
        from airflow.providers.standard.operators.bash import BashOperator

        flagops = os.environ.get("FLAGOPS_BIN", "flagops")
        BashOperator(task_id="submit_pytorchjob", bash_command=shlex.join([flagops, *ARGV[1:]]), cwd=WORKDIR)
    else:
        from _flagops_pod import pod

        from flagops import catalog

        argv = [*ARGV, "--in-cluster", "--pvc", os.environ.get("FLAGOPS_K8S_PVC", "flagops-workspace")]
        account = os.environ.get("FLAGOPS_K8S_SERVICE_ACCOUNT", "flagops-pipeline")
        pod("submit_pytorchjob", argv, catalog.Resources(cpu="500m", memory="512Mi"), workdir=WORKDIR, service_account_name=account)
