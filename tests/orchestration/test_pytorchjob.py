"""Multi-node training: the committed PyTorchJob equals its render from the config, it has
the fields the training operator needs, and its core objects pass kubernetes-validate.

PyTorchJob is a CRD, so its own fields are checked here by hand; the ConfigMap and each
replica's pod template (wrapped in a Pod) are checked against the Kubernetes schemas.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

from flagops import catalog, kube
from flagops.config import ConfigError, load_config, validate
from flagops.training import pytorchjob

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "manifests" / "training" / "pytorchjob-train-embedder.yaml"
# The example's command line; the file's header repeats it.
EXAMPLE = ["--profile", "demo", "--workers", "1", "--gpus-per-worker", "4", "train.cross_device_negatives=true"]
K8S_VERSION = "1.33"


def run_cli(*argv: str) -> str:
    """`flagops train submit-pytorchjob ...` through ``add_training_commands``, stdout captured."""
    parser = argparse.ArgumentParser(prog="flagops")
    pytorchjob.add_training_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", "submit-pytorchjob", *argv])
    out = io.StringIO()
    with redirect_stdout(out):
        assert args.func(args) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return list(yaml.safe_load_all(COMMITTED.read_text()))


def test_committed_manifest_is_the_render(docs):
    fresh = run_cli("--dry-run", *EXAMPLE)
    assert COMMITTED.read_text() == fresh, (
        f"{COMMITTED.relative_to(REPO)} is stale; regenerate it with:\n"
        f"  flagops train submit-pytorchjob --dry-run {' '.join(EXAMPLE)} > {COMMITTED.relative_to(REPO)}"
    )


def test_params_configmap_is_the_same_config(docs):
    cm, job = docs
    assert cm["kind"] == "ConfigMap" and job["kind"] == "PyTorchJob"
    cfg = validate(yaml.safe_load(cm["data"]["params.yaml"]), "configmap")
    assert cfg == load_config("demo", ["train.cross_device_negatives=true"])
    assert job["metadata"]["annotations"]["flagops/params-sha256"] == pytorchjob.params_digest(cfg)


def _flag(command: list[str], name: str) -> str:
    return next(a.split("=", 1)[1] for a in command if a.startswith(f"--{name}="))


def test_pytorchjob_has_what_the_training_operator_needs(docs):
    cm, job = docs
    assert job["apiVersion"] == "kubeflow.org/v1"
    assert pytorchjob.DNS_1123.match(job["metadata"]["name"])
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master", "Worker"} and specs["Master"]["replicas"] == 1
    nodes = sum(s["replicas"] for s in specs.values())
    step = catalog.get("train_embedder")
    for spec in specs.values():
        assert spec["restartPolicy"] in ("Always", "OnFailure", "Never", "ExitCode")
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch"  # the operator injects its env into this container
        command = container["command"]
        # torchrun, then the same `flagops step` form every other face runs
        assert command[0] == "torchrun" and int(_flag(command, "nnodes")) == nodes
        nproc = _flag(command, "nproc-per-node")
        assert nproc == job["spec"]["nprocPerNode"] == container["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert _flag(command, "node-rank") == "$(RANK)"
        flagops_argv = command[command.index("-m") + 1 :]
        assert flagops_argv[:3] == ["flagops.cli", "step", "train_embedder"]
        expected_io = [f"train_data={catalog.ARTIFACTS['train_data'].path}", *(f"{a.name}={a.path}" for a in step.outputs)]
        assert [flagops_argv[i + 1] for i, a in enumerate(flagops_argv) if a in ("--in", "--out")] == expected_io
        # --params points into the mounted ConfigMap of this file; every mount has a volume
        params = Path(flagops_argv[flagops_argv.index("--params") + 1])
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert set(mounts.values()) <= set(volumes)
        assert volumes[mounts[str(params.parent)]]["configMap"]["name"] == cm["metadata"]["name"]
        assert params.name in cm["data"]
        assert volumes[mounts[container["workingDir"]]]["persistentVolumeClaim"]["claimName"]
        assert container["image"] == catalog.image()


def test_core_objects_pass_kubernetes_validate(docs):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    cm, job = docs
    kubernetes_validate.validate(cm, K8S_VERSION, strict=True)
    for role, spec in job["spec"]["pytorchReplicaSpecs"].items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{job['metadata']['name']}-{role.lower()}-0"}}
        pod["metadata"].update(copy.deepcopy(spec["template"].get("metadata", {})))
        pod["spec"] = {**copy.deepcopy(spec["template"]["spec"]), "restartPolicy": spec["restartPolicy"]}
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    broken = copy.deepcopy(cm)
    broken["data"] = {"params.yaml": 3}  # the validator does catch a wrong type
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_single_node_and_cpu_renders():
    cfg = load_config("tiny")
    job = pytorchjob.render_pytorchjob(cfg, name="tiny", workers=0, gpus_per_worker=0, image="example/flagops:1")
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master"}
    container = specs["Master"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"] and "--nproc-per-node=1" in container["command"]
    assert container["image"] == "example/flagops:1"


@pytest.mark.parametrize(("kwargs", "message"), [({"name": "Bad_Name"}, "lowercase"), ({"name": "ok", "workers": -1}, "0 or more")])
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        pytorchjob.render_pytorchjob(load_config("tiny"), **kwargs)


def test_cli_without_dry_run_needs_kubectl(monkeypatch):
    monkeypatch.setattr(kube.shutil, "which", lambda _: None)
    with pytest.raises(ConfigError, match="kubectl not found"):
        run_cli("--profile", "tiny")


# --------------------------------------------------------------------------- the profile's training step


def test_m3_profile_renders_train_m3():
    cfg = load_config("tiny_m3")
    assert pytorchjob.training_step_name(cfg) == "train_m3" and pytorchjob.training_step_name(load_config("tiny")) == "train_embedder"
    job = pytorchjob.render_pytorchjob(cfg, workers=1, gpus_per_worker=2)
    assert job["metadata"]["name"] == "flagops-train-m3" and job["metadata"]["labels"]["flagops/step"] == "train_m3"
    step = catalog.get("train_m3")
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        command = spec["template"]["spec"]["containers"][0]["command"]
        argv = command[command.index("-m") + 1 :]
        assert argv[:3] == ["flagops.cli", "step", "train_m3"]
        assert argv[argv.index("--out") + 1] == f"model={step.outputs[0].path}"


def test_the_job_trains_from_the_pretrained_base_when_the_pipeline_pretrains():
    """The torchrun command takes its inputs as the DAG wires them: with pretrain.enabled the
    trainer's optional base_model input is the RetroMAE output, and without it the input is absent."""
    for profile, expected in (
        ("tiny_pretrain", ["train_data=data/train.jsonl", "base_model=models/pretrained"]),
        ("tiny", ["train_data=data/train.jsonl"]),
    ):
        job = pytorchjob.render_pytorchjob(load_config(profile), workers=0, gpus_per_worker=1)
        command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
        assert [command[i + 1] for i, a in enumerate(command) if a == "--in"] == expected


# --------------------------------------------------------------------------- submitting with kubectl

# No cluster exists here: a fake `kubectl` on PATH stands in for it. It logs its argv and
# answers `get` with the job state in $FAKE_KUBECTL (absent, running, finished), or sleeps
# (hang) or fails (refuse) on every call.
FAKE_KUBECTL = """#!{python}
import json, os, sys, time
mode = os.environ["FAKE_KUBECTL"]
with open(os.environ["FAKE_KUBECTL_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
if mode == "hang":
    time.sleep(30)
if mode == "refuse":
    sys.exit("error: You must be logged in to the server (Unauthorized)")
if sys.argv[1] == "get" and mode != "absent":
    done = [{{"type": "Succeeded", "status": "True"}}] if mode == "finished" else [{{"type": "Running", "status": "True"}}]
    print(json.dumps({{"kind": "PyTorchJob", "metadata": {{"name": sys.argv[3]}}, "status": {{"conditions": done}}}}))
elif sys.argv[1] == "apply":
    sys.stdin.read()
    print("configmap/flagops-params configured\\npytorchjob.kubeflow.org/" + "flagops-train-embedder created")
"""


@pytest.fixture
def fake_kubectl(tmp_path, monkeypatch):
    """Put the fake kubectl first on PATH; returns (set_mode, read the calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "kubectl"
    script.write_text(FAKE_KUBECTL.format(python=sys.executable))
    script.chmod(0o755)
    log = tmp_path / "kubectl.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KUBECTL_LOG", str(log))

    def calls() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    return lambda mode: monkeypatch.setenv("FAKE_KUBECTL", mode), calls


def test_submit_applies_when_no_job_of_that_name_exists(fake_kubectl):
    set_mode, calls = fake_kubectl
    set_mode("absent")
    assert "pytorchjob.kubeflow.org/flagops-train-embedder created" in run_cli("--profile", "tiny", "--namespace", "ml")
    assert calls() == ["get pytorchjob flagops-train-embedder -n ml -o json --ignore-not-found", "apply -f -"]


def test_running_job_is_refused_without_replace_and_deleted_with_it(fake_kubectl):
    set_mode, calls = fake_kubectl
    set_mode("running")
    with pytest.raises(ConfigError, match=r"^PyTorchJob \(current namespace\)/flagops-train-embedder already exists .* pass --replace"):
        run_cli("--profile", "tiny")
    assert [c.split()[0] for c in calls()] == ["get"]  # nothing deleted, nothing applied
    run_cli("--profile", "tiny", "--replace")
    assert [c.split()[0] for c in calls()] == ["get", "get", "delete", "apply"]


def test_finished_job_is_replaced(fake_kubectl):
    set_mode, calls = fake_kubectl
    set_mode("finished")
    run_cli("--profile", "tiny")
    assert [c.split()[0] for c in calls()] == ["get", "delete", "apply"]


def test_hung_kubectl_is_a_one_line_timeout(fake_kubectl, monkeypatch):
    set_mode, _ = fake_kubectl
    set_mode("hang")
    monkeypatch.setattr(kube, "KUBECTL_TIMEOUT_S", 1)
    with pytest.raises(ConfigError) as err:
        run_cli("--profile", "tiny")
    message = str(err.value)
    assert message.startswith("train submit-pytorchjob: `kubectl get pytorchjob flagops-train-embedder") and "took over 1 s" in message
    assert "\n" not in message


def test_failing_kubectl_names_the_command_and_its_reason(fake_kubectl):
    set_mode, _ = fake_kubectl
    set_mode("refuse")
    with pytest.raises(ConfigError) as err:
        run_cli("--profile", "tiny_m3")
    assert str(err.value) == (
        "train submit-pytorchjob: `kubectl get pytorchjob flagops-train-m3 -o json --ignore-not-found` failed: "
        "error: You must be logged in to the server (Unauthorized)"
    )


# --------------------------------------------------------------------------- submitting in the cluster


class _FakeApi:
    """Stands in for the Kubernetes API server (none exists here): one PyTorchJob, running."""

    def __init__(self, log: list[str]):
        self.log = log

    def get_namespaced_custom_object(self, group, version, ns, plural, name, _request_timeout):
        self.log.append(f"get {name} timeout={_request_timeout}")
        return {"metadata": {"name": name}, "status": {"conditions": [{"type": "Running", "status": "True"}]}}

    def __getattr__(self, verb):
        return lambda *args, _request_timeout: self.log.append(verb.split("_")[0]) or {"kind": verb}  # the API answers with an object


def test_in_cluster_refuses_a_running_job_before_touching_its_configmap(monkeypatch):
    from kubernetes import client, config

    log: list[str] = []
    monkeypatch.setattr(config, "load_incluster_config", lambda: None)
    monkeypatch.setattr(client, "CoreV1Api", lambda: _FakeApi(log))
    monkeypatch.setattr(client, "CustomObjectsApi", lambda: _FakeApi(log))
    with pytest.raises(ConfigError, match=r"^PyTorchJob ml/flagops-train-embedder already exists .* --replace"):
        run_cli("--profile", "tiny", "--in-cluster", "--namespace", "ml")
    assert log == [f"get flagops-train-embedder timeout={kube.KUBECTL_TIMEOUT_S}"]
    log.clear()
    run_cli("--profile", "tiny", "--in-cluster", "--namespace", "ml", "--replace")
    assert log[1:] == ["delete", "replace", "create"]
