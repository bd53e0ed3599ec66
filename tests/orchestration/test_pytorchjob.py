"""Multi-node training: the committed PyTorchJob equals its render from the config, it has
the fields the training operator needs, and its core objects pass kubernetes-validate.

PyTorchJob is a CRD, so its own fields are checked here by hand; the ConfigMap and each
replica's pod template (wrapped in a Pod) are checked against the Kubernetes schemas.
"""

from __future__ import annotations

import argparse
import copy
import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

from flagops import catalog
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
        expected_io = [f"train_data={catalog.ARTIFACTS['train_data'].path}", f"model={step.outputs[0].path}"]
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
    monkeypatch.setattr(pytorchjob.shutil, "which", lambda _: None)
    with pytest.raises(ConfigError, match="kubectl not found"):
        run_cli("--profile", "tiny")
