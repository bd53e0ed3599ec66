"""The Airflow DAGs agree with the catalog, in both modes, and really run the tiny pipeline.

Airflow 3 cannot share a venv with kfp and kserve, so Airflow code runs in `.venv-airflow`
(`make airflow-venv`) through subprocesses: a probe prints the parsed DAGs as JSON, and the
slow test runs `airflow db migrate` and `airflow dags test` there. Assertions run here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flagops import catalog
from flagops.config import load_config
from flagops.dvc import stage_cmd

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
AIRFLOW_BIN = REPO / ".venv-airflow" / "bin"
FLAGOPS_BIN = Path(sys.executable).parent / "flagops"  # the main venv's, as the local tasks call it
MODES = ("local", "kubernetes")
K8S = {
    "FLAGOPS_IMAGE": "registry.example/flagops:test",
    "FLAGOPS_K8S_NAMESPACE": "ml-retrain",
    "FLAGOPS_K8S_PVC": "retrain-workspace",
    "FLAGOPS_K8S_MLFLOW_SECRET": "mlflow-credentials",
    "FLAGOPS_WORKDIR": "/mnt/flagops",
    "FLAGOPS_SCHEDULE": "0 3 * * 1",
    "FLAGOPS_PROFILE": "demo_m3",  # the kubernetes probe builds the M3 profile's DAG (train_m3)
    # A credential in the scheduler's environment must not reach a pod spec.
    "MLFLOW_TRACKING_URI": "http://user:hunter2@mlflow.internal:5000",
}

LLM_KEY_ENV = "VLLM_API_KEY"  # synthesis.llm.api_key_env of the kubernetes probe's profile

# Prints what the tests compare with the catalog; the DagBag is what the dag processor builds.
PROBE = r"""
import json, sys
from pathlib import Path
from airflow.dag_processing.dagbag import BundleDagBag
from airflow.serialization.serialized_objects import DagSerialization
from airflow.sdk.exceptions import TaskDeferred
from kubernetes.client import ApiClient

dags = Path(sys.argv[1])
bag = BundleDagBag(dags, bundle_path=dags, bundle_name="dags-folder")
out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    DagSerialization.serialize_dag(dag)  # the dag processor stores this; it raises on a bad field
    tasks = {}
    for t in dag.tasks:
        info = {"type": type(t).__name__, "upstream": sorted(t.upstream_task_ids), "retries": t.retries,
                "retry_delay_s": t.retry_delay.total_seconds(), "outlets": [a.uri for a in t.outlets],
                "trigger_dag_id": getattr(t, "trigger_dag_id", None)}
        if info["type"] == "BashOperator":
            info |= {"bash_command": t.bash_command, "cwd": t.cwd, "env": t.env, "append_env": t.append_env}
        if info["type"] == "KubernetesPodOperator":
            pod = ApiClient().sanitize_for_serialization(t.build_pod_request_obj(dry_run=True))
            info |= {"pod": pod, "get_logs": t.get_logs, "on_finish_action": t.on_finish_action.value}
        if info["type"] == "WaitForPyTorchJob":  # deferrable: execute() must hand over to a trigger
            try:
                t.execute({})
            except TaskDeferred as deferred:
                info["defers_to"] = list(deferred.trigger.serialize())
        tasks[t.task_id] = info
    schedule = [a.uri for a in dag.schedule] if isinstance(dag.schedule, list) else dag.schedule
    out["dags"][dag_id] = {"tags": sorted(dag.tags), "catchup": dag.catchup, "max_active_runs": dag.max_active_runs,
                           "doc_md": dag.doc_md, "schedule": schedule, "tasks": tasks}
print("PROBE-JSON " + json.dumps(out))
"""


def _require_airflow_venv() -> None:
    if not (AIRFLOW_BIN / "airflow").exists():
        pytest.fail(f"{AIRFLOW_BIN.parent} is missing: run `make airflow-venv` (Airflow 3 lives in its own venv)")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLAGOPS_", "MLFLOW_TRACKING_URI", "AIRFLOW"))}
    env |= {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS)}
    return env | {"FLAGOPS_BIN": str(FLAGOPS_BIN), "MLFLOW_DISABLE_TELEMETRY": "true"} | extra


def _run(args: list, env: dict, cwd: Path = REPO, timeout: int = 300) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args[:3]} failed:\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    return done.stdout


def _probe(mode: str, home: Path) -> tuple[str, dict, dict]:
    # The local probe builds the reranker profile's DAG (two families, a fan-in at evaluate).
    local = {"FLAGOPS_WORKDIR": str(home / "ws"), "FLAGOPS_PROFILE": "demo_reranker"}
    extra = {"FLAGOPS_AIRFLOW_MODE": mode} | (K8S if mode == "kubernetes" else local)
    if mode == "kubernetes":  # M3, and LLM synthesis: its pod reads the endpoint's key from a Secret
        profile = home / "k8s-profile.yaml"
        profile.write_text(f"extends: {K8S['FLAGOPS_PROFILE']}\nsynthesis:\n  generator: llm\n  llm:\n    api_key_env: {LLM_KEY_ENV}\n")
        extra |= {"FLAGOPS_PROFILE": str(profile)}
    stdout = _run([AIRFLOW_BIN / "python", "-c", PROBE, DAGS], _env(home, **extra))
    line = next(line for line in stdout.splitlines() if line.startswith("PROBE-JSON "))
    return mode, extra, json.loads(line.removeprefix("PROBE-JSON "))


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[str, tuple[str, dict, dict]]:
    """Each mode's DagBag, parsed once: (mode, the env it was parsed with, the probe's JSON)."""
    _require_airflow_venv()
    return {mode: _probe(mode, tmp_path_factory.mktemp(f"airflow-{mode}")) for mode in MODES}


@pytest.fixture(params=MODES)
def parsed(request, bags):
    return bags[request.param]


def test_dagbag_has_both_dags_and_no_import_errors(parsed):
    _, _, bag = parsed
    assert bag["import_errors"] == {}
    assert set(bag["dags"]) == {"retrain_embedder", "retrain_embedder_on_new_data", "train_embedder_multinode"}


def test_dag_settings(parsed):
    mode, extra, bag = parsed
    for dag in bag["dags"].values():
        assert {"flagops", mode} <= set(dag["tags"])
        assert dag["catchup"] is False and dag["max_active_runs"] == 1
        assert dag["doc_md"].strip()
        for task in dag["tasks"].values():
            assert task["retries"] >= 2 and task["retry_delay_s"] > 0
    assert bag["dags"]["retrain_embedder"]["schedule"] == extra.get("FLAGOPS_SCHEDULE", "@weekly")


def _pipeline(extra: dict) -> catalog.Pipeline:
    return catalog.pipeline(load_config(extra.get("FLAGOPS_PROFILE", "demo")))


def test_tasks_and_dependencies_are_the_catalog(parsed):
    _, extra, bag = parsed
    tasks = bag["dags"]["retrain_embedder"]["tasks"]
    pipe = _pipeline(extra)
    assert list(tasks) == list(pipe.names)
    assert {(up, name) for name, t in tasks.items() for up in t["upstream"]} == pipe.edges()


def test_new_data_triggers_retraining_and_build_corpus_updates_the_corpus_asset(parsed):
    _, extra, bag = parsed
    retrain, on_new_data = bag["dags"]["retrain_embedder"], bag["dags"]["retrain_embedder_on_new_data"]
    corpus = f"file://{extra['FLAGOPS_WORKDIR']}/{catalog.ARTIFACTS['corpus'].path}"
    assert retrain["tasks"]["build_corpus"]["outlets"] == [corpus]
    assert all(not t["outlets"] for name, t in retrain["tasks"].items() if name != "build_corpus")
    # Scheduled on the landed data, not on what build_corpus writes: that would retrain in a loop.
    assert on_new_data["schedule"] == [f"file://{extra['FLAGOPS_WORKDIR']}/landing/corpus.jsonl"]
    assert [t["trigger_dag_id"] for t in on_new_data["tasks"].values()] == ["retrain_embedder"]


def test_local_tasks_run_the_dvc_stage_command(bags):
    _, extra, bag = bags["local"]
    for t in _pipeline(extra).tasks:
        task = bag["dags"]["retrain_embedder"]["tasks"][t.name]
        assert task["type"] == "BashOperator"
        assert task["bash_command"] == shlex.join([str(FLAGOPS_BIN), *shlex.split(stage_cmd(t))[1:]])
        assert task["cwd"] == extra["FLAGOPS_WORKDIR"] and task["append_env"]
        assert task["env"]["MLFLOW_TRACKING_URI"] == f"sqlite:///{extra['FLAGOPS_WORKDIR']}/mlflow.db"


def test_kubernetes_tasks_are_pods_with_the_catalog_image_command_and_resources(bags):
    _, extra, bag = bags["kubernetes"]
    for t in _pipeline(extra).tasks:
        step = t.step
        task = bag["dags"]["retrain_embedder"]["tasks"][step.name]
        assert task["type"] == "KubernetesPodOperator"
        assert task["get_logs"] and task["on_finish_action"] == "delete_pod"
        pod = task["pod"]
        assert pod["metadata"]["namespace"] == extra["FLAGOPS_K8S_NAMESPACE"]
        [container] = pod["spec"]["containers"]
        assert container["image"] == extra["FLAGOPS_IMAGE"]
        assert container["command"] + container["args"] == shlex.split(stage_cmd(t))
        assert container["workingDir"] == extra["FLAGOPS_WORKDIR"]
        r = step.resources
        assert container["resources"]["requests"] == {"cpu": r.cpu, "memory": r.memory}
        gpu = {"nvidia.com/gpu": str(r.gpus)} if r.gpus else {}
        assert container["resources"]["limits"] == {"cpu": r.cpu, "memory": r.memory} | gpu
        assert bool(pod["spec"].get("tolerations")) == bool(r.gpus)
        assert container["volumeMounts"] == [{"name": "workspace", "mountPath": extra["FLAGOPS_WORKDIR"]}]
        assert pod["spec"]["volumes"] == [{"name": "workspace", "persistentVolumeClaim": {"claimName": extra["FLAGOPS_K8S_PVC"]}}]
        # MLflow settings come from the Secret only; nothing from the scheduler's env is copied in.
        assert container["envFrom"] == [{"secretRef": {"name": extra["FLAGOPS_K8S_MLFLOW_SECRET"]}}]
        # The only plain env var is the (templated) pipeline key that groups the run's MLflow runs;
        # the LLM synthesis pod also reads the endpoint's key, from its Secret, optionally.
        env = container.get("env", [])
        assert env[0]["name"] == "FLAGOPS_PIPELINE_KEY" and "value" in env[0]
        if step.name == "synthesize_queries":
            ref = {"name": "flagops-llm", "key": "api-key", "optional": True}
            assert env[1:] == [{"name": LLM_KEY_ENV, "valueFrom": {"secretKeyRef": ref}}]
        else:
            assert len(env) == 1
        assert "hunter2" not in json.dumps(pod)
    assert any(s.resources.gpus for s in catalog.STEPS), "no GPU step left to check the GPU limit with"


def test_no_secret_literals_in_dag_files():
    secretish = re.compile(r"(password|passwd|secret_access_key|api_key|token)\s*[=:]\s*['\"][^'\"]+", re.I)
    for path in DAGS.glob("*.py"):
        text = path.read_text()
        assert not secretish.search(text), path
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), f"{path}: credentials in a URI"


# make test runs the reranker profile: two model families and a fan-in at evaluate, in half the
# time of tiny_all; kfp.local runs tiny_all (every branch) there, and the test-long target runs
# Airflow on tiny_all too. The steps are the same CLI in both faces, and test_dag_faces checks
# that every profile's Airflow DAG has the catalog's steps and edges.
@pytest.mark.slow
@pytest.mark.parametrize("profile", ["tiny_reranker", pytest.param("tiny_all", marks=pytest.mark.long)])
def test_airflow_dags_test_runs_the_tiny_pipeline_to_a_champion(tmp_path, profile):
    """`airflow dags test retrain_embedder` on a tiny profile ends with a champion for each model
    it registers: the embedder, and the reranker and the extended LM where the profile has them."""
    from mlflow.tracking import MlflowClient

    _require_airflow_venv()
    workdir, store = tmp_path / "ws", tmp_path / "mlflow.db"
    workdir.mkdir()
    _run([FLAGOPS_BIN, "params", profile, "-o", workdir / "params.yaml"], dict(os.environ))
    uri = f"sqlite:///{store}"  # four slashes: tmp_path is absolute
    env = _env(
        tmp_path / "airflow-home",
        FLAGOPS_AIRFLOW_MODE="local",
        FLAGOPS_WORKDIR=str(workdir),
        MLFLOW_TRACKING_URI=uri,
        FLAGOPS_PROFILE=profile,
    )
    _run([AIRFLOW_BIN / "airflow", "db", "migrate"], env)
    started = time.perf_counter()
    _run([AIRFLOW_BIN / "airflow", "dags", "test", "retrain_embedder"], env, timeout=900)
    print(f"\nairflow dags test retrain_embedder ({profile} profile): {time.perf_counter() - started:.0f} s wall")

    cfg = load_config(workdir / "params.yaml")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    models = [cfg.registry.model_name]
    models += [cfg.reranker.model_name] if cfg.reranker.enabled else []
    models += [cfg.longctx.model_name] if cfg.longctx.enabled else []
    assert len(models) == 1 + (profile == "tiny_reranker") + 2 * (profile == "tiny_all")
    for model in models:
        assert str(client.get_model_version_by_alias(model, "champion").version) == "1", model
    runs = client.search_runs([client.get_experiment_by_name("flagops").experiment_id])
    assert {r.data.tags.get("flagops.step") for r in runs} >= set(catalog.pipeline(load_config(profile)).names)
    metrics = json.loads((workdir / "metrics" / "eval.json").read_text())
    assert {"base/ndcg@10", "candidate/ndcg@10"} <= set(metrics)
    assert (workdir / "registry" / "promotion.json").is_file()
    if cfg.pretrain.enabled:
        assert "pretrained/ndcg@10" in metrics  # the RetroMAE encoder is scored too
    if cfg.reranker.enabled:
        assert "reranked/ndcg@10" in metrics, sorted(metrics)
    if cfg.longctx.enabled:
        longctx = json.loads((workdir / "metrics" / "longctx.json").read_text())
        assert {"base/needle_rouge_l", "extended/needle_rouge_l", "extended/short_ppl"} <= set(longctx)
        isvc = (workdir / "deploy" / "longctx-inferenceservice.yaml").read_text()
        assert f"--max_model_len={cfg.longctx.base_context * cfg.longctx.factor}" in isvc
    # One MLflow parent run for the DAG run (FLAGOPS_PIPELINE_KEY), every step run under it.
    (parent,) = [r for r in runs if r.data.tags.get("flagops.kind") == "pipeline"]
    assert parent.data.tags["flagops.pipeline_key"].startswith("airflow:retrain_embedder:")
    steps = [r for r in runs if "flagops.step" in r.data.tags]
    assert {r.data.tags.get("mlflow.parentRunId") for r in steps} == {parent.info.run_id}

    # New data: the asset-scheduled DAG queues one more retrain_embedder run (no scheduler here to start it).
    _run([AIRFLOW_BIN / "airflow", "dags", "test", "retrain_embedder_on_new_data"], env)
    out = _run([AIRFLOW_BIN / "airflow", "dags", "list-runs", "retrain_embedder", "-o", "json"], env)
    runs = json.loads(next(line for line in out.splitlines() if line.startswith("[")))  # warnings share stdout
    assert sorted(r["state"] for r in runs) == ["queued", "success"]


TRAINING = ("train_embedder", "train_m3")  # the steps the multinode DAG runs as a PyTorchJob


def _multinode_ids(pipe: catalog.Pipeline) -> tuple[str, dict[str, tuple[str, str]]]:
    """The training task's name, and each pipeline task's (first, last) Airflow task id there."""
    (train,) = set(TRAINING) & set(pipe.names)
    group = (f"{train}.submit_pytorchjob", f"{train}.wait_for_pytorchjob")
    return train, {name: group if name == train else (name, name) for name in pipe.names}


def test_multinode_dag_is_the_retrain_dag_with_training_submitted_then_awaited(parsed):
    _, extra, bag = parsed
    pipe = _pipeline(extra)
    train, ids = _multinode_ids(pipe)
    tasks = bag["dags"]["train_embedder_multinode"]["tasks"]
    assert list(tasks) == [i for name in pipe.names for i in dict.fromkeys(ids[name])]
    submit, wait = ids[train]
    edges = {(ids[up][1], ids[down][0]) for up, down in pipe.edges()} | {(submit, wait)}
    assert {(up, name) for name, t in tasks.items() for up in t["upstream"]} == edges
    assert ("evaluate" in pipe.names) and (wait, "evaluate") in edges  # evaluate reads what the job trained
    # Every other task is retrain_embedder's, command and all.
    retrain = bag["dags"]["retrain_embedder"]["tasks"]
    for name in set(pipe.names) - {train}:
        same = ("bash_command", "cwd", "env", "outlets", "type")
        assert {k: tasks[name].get(k) for k in same} == {k: retrain[name].get(k) for k in same}
        if "pod" in retrain[name]:
            assert tasks[name]["pod"]["spec"]["containers"] == retrain[name]["pod"]["spec"]["containers"]


def test_multinode_wait_defers_to_a_trigger_for_the_submitted_job(parsed):
    mode, extra, bag = parsed
    _, ids = _multinode_ids(_pipeline(extra))
    tasks = bag["dags"]["train_embedder_multinode"]["tasks"]
    submit, wait = (tasks[i] for i in next(v for v in ids.values() if v[0] != v[1]))
    classpath, kwargs = wait["defers_to"]  # execute() raised TaskDeferred: no worker slot held while it trains
    assert classpath == "_flagops_pytorchjob.PyTorchJobTrigger"
    assert kwargs["reader"] == ("kubectl" if mode == "local" else "incluster")
    assert kwargs["namespace"] == extra.get("FLAGOPS_K8S_NAMESPACE", "flagops") and kwargs["poll_s"] > 0
    assert kwargs["deadline"] > time.time()
    if mode == "local":
        assert submit["type"] == "BashOperator" and submit["cwd"] == extra["FLAGOPS_WORKDIR"]
        argv = shlex.split(submit["bash_command"])
        assert argv[0] == str(FLAGOPS_BIN)
    else:
        (container,) = submit["pod"]["spec"]["containers"]
        assert container["image"] == extra["FLAGOPS_IMAGE"]
        argv = container["command"] + container["args"]
        assert argv[0] == "flagops" and "--in-cluster" in argv
        assert submit["pod"]["spec"]["serviceAccountName"] == "flagops-pipeline"
    assert argv[1:5] == ["train", "submit-pytorchjob", "--params", "params.yaml"]
    # The waiter looks for the job the submit names (templated per DAG run), in the same namespace.
    assert argv[argv.index("--name") + 1] == kwargs["name"] and "{{" in kwargs["name"]
    assert argv[argv.index("--namespace") + 1] == kwargs["namespace"]
