"""The multinode DAG submits its PyTorchJob, waits for it in a trigger, then evaluates, registers,
promotes and deploys; a failed job fails the wait with the job's reason.

No Kubernetes cluster can exist here, so a fake `kubectl` (fake_kubectl.py) first on PATH stands in
for the API server and the training operator: it stores what is applied, runs the PyTorchJob's
Master command (torchrun ... flagops step ...) in the workspace, and reports the job Running until
that command exits. The rest is real: `airflow dags test` runs the DAG (the deferred wait's trigger
runs in-process, as dag.test does), the steps run the main venv's flagops, MLflow is sqlite.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import pytest

from flagops import catalog
from flagops.config import load_config
from tests.orchestration.test_airflow import AIRFLOW_BIN, DAGS, FLAGOPS_BIN, _env, _multinode_ids, _require_airflow_venv, _run

FAKE_KUBECTL = Path(__file__).with_name("fake_kubectl.py")

# The wait task's two halves, outside a DAG run: the trigger polls the job through kubectl, and its
# event goes to the operator's execute_complete, as the triggerer and the resumed task would do.
WAIT = r"""
import asyncio, sys, time
from _flagops_pytorchjob import PyTorchJobTrigger, WaitForPyTorchJob
from airflow.sdk.exceptions import AirflowException

name, namespace = sys.argv[1:3]
event = asyncio.run(anext(PyTorchJobTrigger(name, namespace, "kubectl", time.time() + 300, poll_s=1).run()))
try:
    WaitForPyTorchJob(task_id="wait", job_name=name, namespace=namespace).execute_complete({}, event.payload)
except AirflowException as exc:  # AirflowFailException: failed for good, no retries
    print(f"TASK-FAILED {type(exc).__name__} {exc}")
"""


@pytest.fixture
def cluster(tmp_path) -> dict[str, str]:
    """The fake cluster's env: PATH with the fake kubectl first, its state folder, and the workspace
    (tmp_path/ws, holding the tiny profile's params.yaml) as the PyTorchJob's PVC."""
    _require_airflow_venv()
    bin_dir, state, workdir = tmp_path / "bin", tmp_path / "cluster", tmp_path / "ws"
    for folder in (bin_dir, state, workdir):
        folder.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(FAKE_KUBECTL))} "$@"\n')
    kubectl.chmod(0o755)
    _run([FLAGOPS_BIN, "params", "tiny", "-o", workdir / "params.yaml"], dict(os.environ))
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_KUBE_STATE": str(state), "FAKE_KUBE_PVC": str(workdir)}


def _wait_env(cluster: dict[str, str], tmp_path: Path) -> dict[str, str]:
    # The triggerer needs the dags folder on its PYTHONPATH to import the trigger (dags/README.md).
    pythonpath = os.pathsep.join(filter(None, (str(DAGS), os.environ.get("PYTHONPATH"))))
    return _env(tmp_path / "airflow-home", PYTHONPATH=pythonpath, **cluster)


def test_a_failed_pytorchjob_fails_the_wait_naming_the_job_and_its_reason(cluster, tmp_path):
    workdir, state = Path(cluster["FAKE_KUBE_PVC"]), Path(cluster["FAKE_KUBE_STATE"])
    # The workspace has no train_data, so the Master's training command exits non-zero: the job fails.
    submit = ["train", "submit-pytorchjob", "--params", "params.yaml", "--name", "flagops-train-embedder-x1", "--namespace", "ml"]
    _run([FLAGOPS_BIN, *submit, "--workers", "0", "--gpus-per-worker", "0"], dict(os.environ) | cluster, cwd=workdir)
    out = _run([AIRFLOW_BIN / "python", "-c", WAIT, "flagops-train-embedder-x1", "ml"], _wait_env(cluster, tmp_path))
    (failed,) = [line for line in out.splitlines() if line.startswith("TASK-FAILED ")]
    assert failed == (
        "TASK-FAILED AirflowFailException PyTorchJob ml/flagops-train-embedder-x1 Failed: PyTorchJobFailed: "
        "PyTorchJob ml/flagops-train-embedder-x1 is failed because 1 Master replica(s) failed."
    )
    assert "input 'train_data' of step train_embedder does not exist" in (state / "pods/ml/flagops-train-embedder-x1/log").read_text()


def test_an_unreadable_job_status_is_retried_then_fails_the_wait_for_a_retry(cluster, tmp_path):
    """No such job (e.g. deleted by hand): three failed reads in a row, then a retryable failure with kubectl's error."""
    out = _run([AIRFLOW_BIN / "python", "-c", WAIT, "flagops-train-embedder-gone", "ml"], _wait_env(cluster, tmp_path))
    (failed,) = [line for line in out.splitlines() if line.startswith("TASK-FAILED ")]
    assert failed == (
        "TASK-FAILED AirflowException PyTorchJob ml/flagops-train-embedder-gone error: "
        "`kubectl get pytorchjob flagops-train-embedder-gone` failed: "
        'Error from server (NotFound): pytorchjobs.kubeflow.org "flagops-train-embedder-gone" not found'
    )


@pytest.mark.slow
@pytest.mark.long  # a second whole-DAG Airflow run (~2.5 min): `make test-long`; the DAG's shape and the wait are tested above
def test_airflow_dags_test_multinode_waits_for_the_job_then_deploys(cluster, tmp_path):
    """`airflow dags test train_embedder_multinode` on tiny: data steps, the job (deferred wait), then a champion."""
    from mlflow.tracking import MlflowClient

    workdir, state, store = Path(cluster["FAKE_KUBE_PVC"]), Path(cluster["FAKE_KUBE_STATE"]), tmp_path / "mlflow.db"
    uri = f"sqlite:///{store}"  # four slashes: tmp_path is absolute
    env = _env(
        tmp_path / "airflow-home",
        FLAGOPS_AIRFLOW_MODE="local",
        FLAGOPS_WORKDIR=str(workdir),
        MLFLOW_TRACKING_URI=uri,
        FLAGOPS_PROFILE="tiny",
        FLAGOPS_K8S_NAMESPACE="ml",
        FLAGOPS_PTJ_WORKERS="0",
        FLAGOPS_PTJ_GPUS="0",
        FLAGOPS_PTJ_POLL_S="2",
        **cluster,
    )
    _run([AIRFLOW_BIN / "airflow", "db", "migrate"], env)
    started = time.perf_counter()
    out = _run([AIRFLOW_BIN / "airflow", "dags", "test", "train_embedder_multinode"], env, timeout=1200)
    print(f"\nairflow dags test train_embedder_multinode (tiny profile): {time.perf_counter() - started:.0f} s wall")

    # The wait task deferred, its trigger polled the job while it ran, and the task resumed on Succeeded.
    assert "[DAG TEST] running trigger in line" in out
    polls = [line.split() for line in (state / "get.log").read_text().splitlines()]
    (job,) = {job for job, _ in polls}
    assert re.fullmatch(r"ml/flagops-train-embedder-[0-9a-f]{10}", job)  # one name per DAG run
    states = [s for _, s in polls]
    assert states[0] == "Running" and states[-1] == "Succeeded" and states.count("Succeeded") == 1  # no poll after the end
    pod = state / "pods" / job
    argv = json.loads((pod / "pod.json").read_text())["argv"]
    assert Path(argv[0]).name == "torchrun" and argv[argv.index("step") + 1] == "train_embedder"
    assert "1 device(s)" in (pod / "log").read_text() and (pod / "exit_code").read_text() == "0"

    # What the job trained went on through evaluate, register_model, promote_model and deploy_model.
    pipe = catalog.pipeline(load_config("tiny"))
    train, _ = _multinode_ids(pipe)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    model = load_config(workdir / "params.yaml").registry.model_name
    assert str(client.get_model_version_by_alias(model, "champion").version) == "1"
    runs = client.search_runs([client.get_experiment_by_name("flagops").experiment_id])
    assert {r.data.tags.get("flagops.step") for r in runs} >= set(pipe.names)
    for artifact in ("metrics", "registration", "promotion", "inference_service"):
        assert (workdir / catalog.ARTIFACTS[artifact].path).is_file(), artifact
    (parent,) = [r for r in runs if r.data.tags.get("flagops.kind") == "pipeline"]
    assert parent.data.tags["flagops.pipeline_key"].startswith("airflow:train_embedder_multinode:")
    airflow_steps = [r for r in runs if r.data.tags.get("flagops.step") in set(pipe.names) - {train}]
    assert {r.data.tags.get("mlflow.parentRunId") for r in airflow_steps} == {parent.info.run_id}
