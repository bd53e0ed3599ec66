"""The Kubernetes manifests: every overlay builds with kustomize, its core objects pass
kubernetes-validate, its InferenceService is the committed render of its flagops.yaml and
survives the kserve SDK's model of the CRD, and checkov finds nothing unskipped.

checkov runs from its own venv (`make checkov-venv`; `make test` builds it). Offline it
reports no severities, so every failed check blocks; a skip is an annotation
``checkov.io/skipN: CKV_...=reason`` and must be one of SKIPS below.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import shlex
import shutil
import subprocess
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

from flagops.config import ConfigError, load_config
from flagops.deploy import cli as deploy_cli
from flagops.deploy import inference_service as isvc

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p.name for p in (REPO / "manifests" / "overlays").iterdir() if p.is_dir())
K8S_VERSION = "1.33"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
# The checks a manifest may skip, and why (the annotation repeats the reason).
SKIPS = {"CKV_K8S_43": "image digests are pinned at release time, against the registry"}
EXPECTED_KINDS = {
    "Namespace": 1,
    "ServiceAccount": 4,
    "Role": 1,
    "RoleBinding": 1,
    "ConfigMap": 1,
    "Service": 2,
    "Deployment": 1,
    "StatefulSet": 1,
    "NetworkPolicy": 4,
    "InferenceService": 1,
}

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (it builds kustomize)")


def test_there_are_the_two_overlays():
    assert OVERLAYS == ["dev-cpu", "prod-gpu"]


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict]]:
    """`kubectl kustomize` of each overlay, parsed."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed (it builds kustomize)")
    out = {}
    for overlay in OVERLAYS:
        done = subprocess.run(["kubectl", "kustomize", str(REPO / "manifests" / "overlays" / overlay)], capture_output=True, text=True)
        assert done.returncode == 0, f"{overlay}: {done.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(done.stdout) if d]
    return out


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_every_object_in_one_namespace(built, overlay):
    docs = built[overlay]
    kinds = {k: len(by_kind(docs, k)) for k in {d["kind"] for d in docs}}
    assert kinds == EXPECTED_KINDS
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"flagops"}
    assert not by_kind(docs, "Secret"), "no Secret belongs in git: docs/deploy.md creates them"


# --------------------------------------------------------------------------- the InferenceService


def render_cli(argv: list[str]) -> str:
    """`flagops deploy ...` through ``add_deploy_commands``, stdout captured."""
    parser = argparse.ArgumentParser(prog="flagops")
    deploy_cli.add_deploy_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out = io.StringIO()
    with redirect_stdout(out):
        assert args.func(args) == 0
    return out.getvalue()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_committed_inference_service_is_its_render(overlay, monkeypatch):
    path = REPO / "manifests" / "overlays" / overlay / "inferenceservice.yaml"
    first = path.read_text().splitlines()[0]
    command = first.removeprefix("# Rendered by `").removesuffix("`; do not edit by hand.")
    argv = shlex.split(command)
    # Rendered offline (no MLflow) from the overlay's own settings.
    assert argv[:5] == ["flagops", "deploy", "render", "--params", f"manifests/overlays/{overlay}/flagops.yaml"]
    assert "--offline" in argv
    monkeypatch.chdir(REPO)
    assert path.read_text() == render_cli(argv[1:]), (
        f"{path.relative_to(REPO)} is stale; regenerate it with `make manifests` (runs: {command} -o {path.relative_to(REPO)})"
    )


def overlay_isvc(overlay: str) -> dict:
    return yaml.safe_load((REPO / "manifests" / "overlays" / overlay / "inferenceservice.yaml").read_text())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_inference_service_round_trips_the_kserve_sdk(overlay):
    doc = overlay_isvc(overlay)
    isvc.check_with_sdk(doc)  # raises on any field the SDK drops, changes or misses
    broken = copy.deepcopy(doc)
    broken["spec"]["predictor"]["canaryTrafficPercnt"] = 10  # the check does catch a misspelt field
    broken["spec"]["predictor"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    with pytest.raises(ConfigError, match=r"canaryTrafficPercnt.*|runAsNonroot"):
        isvc.check_with_sdk(broken)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_inference_service_runs_the_flagops_server_restricted(overlay):
    doc = overlay_isvc(overlay)
    predictor = doc["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container" and container["command"] == ["flagops", "serve"]
    args = container["args"]
    assert args[args.index("--model") + 1].startswith("/mnt/models/") and args[args.index("--port") + 1] == "8080"
    # Every serve setting the server reads is explicit: the image's default profile decides none.
    serve = load_config(REPO / "manifests" / "overlays" / overlay / "flagops.yaml").serve
    assert [a for a in args if a.startswith("serve.")] == serve.overrides()
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["STORAGE_URI"].startswith("s3://")  # what the storage initializer puts in /mnt/models
    # The serving process settings measured in benchmarks/README.md, explicit in the pod.
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["MALLOC_ARENA_MAX"] == "2"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] > 0 and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    res = container["resources"]
    gpus = overlay.endswith("gpu")
    assert ("nvidia.com/gpu" in res["limits"]) is gpus and ("nvidia.com/gpu" in res["requests"]) is gpus
    assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
    assert {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"} <= set(predictor)
    assert "canaryTrafficPercent" not in predictor  # a first deployment takes all traffic
    notes = doc["metadata"]["annotations"]
    assert {"flagops/mlflow-model", "flagops/mlflow-version", "flagops/git-commit", "flagops/data-md5"} <= set(notes)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_predictor_service_account_carries_the_s3_secret(built, overlay):
    docs = built[overlay]
    (doc,) = by_kind(docs, "InferenceService")
    accounts = {d["metadata"]["name"]: d for d in by_kind(docs, "ServiceAccount")}
    account = accounts[doc["spec"]["predictor"]["serviceAccountName"]]
    assert {"name": "flagops-s3"} in account["secrets"] and account["automountServiceAccountToken"] is False


# --------------------------------------------------------------------------- core objects


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_pass_kubernetes_validate(built, overlay):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    core = [d for d in built[overlay] if d["kind"] != "InferenceService"]  # a CRD: the kserve SDK checks it
    for doc in core:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    broken = copy.deepcopy(next(d for d in core if d["kind"] == "Deployment"))
    broken["spec"]["replicas"] = "two"  # the validator does catch a wrong type
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@needs_kubectl
def test_pipeline_account_may_deploy_inferenceservices_and_nothing_more(built):
    docs = built["prod-gpu"]
    (role,) = by_kind(docs, "Role")
    (binding,) = by_kind(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "flagops-pipeline", "namespace": "flagops"}]
    assert "flagops-pipeline" in {d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")}
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["serving.kserve.io"] and rule["resources"] == ["inferenceservices"]
    assert {"get", "create", "patch"} <= set(rule["verbs"]) and "delete" not in rule["verbs"]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_server_has_allowed_hosts_and_secrets_only_by_reference(built, overlay):
    docs = built[overlay]
    (mlflow,) = by_kind(docs, "Deployment")
    pod = mlflow["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    script = " ".join(container["command"] + container["args"])
    assert "mlflow server" in script and '--allowed-hosts="$MLFLOW_ALLOWED_HOSTS"' in script
    assert "--artifacts-destination" in script and "postgresql" in script
    (config,) = by_kind(docs, "ConfigMap")
    hosts = config["data"]["MLFLOW_ALLOWED_HOSTS"].split(",")
    assert "flagops-mlflow.flagops.svc.cluster.local:*" in hosts and "*" not in hosts
    # Credentials arrive as Secret volumes or secretKeyRefs, never as literal values.
    for workload in (mlflow, *by_kind(docs, "StatefulSet")):
        spec = workload["spec"]["template"]["spec"]
        for c in spec["containers"]:
            for e in c.get("env", []):
                if any(w in e["name"] for w in ("PASSWORD", "SECRET", "ACCESS_KEY")) and not e["name"].endswith("_FILE"):
                    assert "valueFrom" in e and "secretKeyRef" in e["valueFrom"], e
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"flagops-postgres", "flagops-s3"}


@needs_kubectl
def test_network_policies_deny_by_default_and_guard_postgres(built):
    policies = {d["metadata"]["name"]: d["spec"] for d in by_kind(built["prod-gpu"], "NetworkPolicy")}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    (rule,) = policies["postgres-from-mlflow"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}]
    assert rule["ports"] == [{"port": 5432, "protocol": "TCP"}]


# --------------------------------------------------------------------------- checkov


@pytest.mark.skipif(not CHECKOV.exists(), reason="checkov venv missing: `make checkov-venv` (make test builds it)")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkov_passes_every_check_it_does_not_skip_for_a_reason(built, overlay, tmp_path):
    (tmp_path / f"{overlay}.yaml").write_text(yaml.safe_dump_all(built[overlay], sort_keys=False))
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", LOG_LEVEL="ERROR")
    cmd = [str(CHECKOV), "-d", str(tmp_path), "--framework", "kubernetes", "-o", "json", "--skip-download"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    report = json.loads(done.stdout)
    results = report["results"]
    failed = [f"{r['check_id']} {r['check_name']} ({r['resource']})" for r in results["failed_checks"]]
    assert not failed, "checkov (offline, no severities: every failure blocks):\n" + "\n".join(failed)
    assert report["summary"]["passed"] > 50 and report["summary"]["parsing_errors"] == 0
    for skip in results["skipped_checks"]:
        assert skip["check_id"] in SKIPS, f"{skip['check_id']} is skipped without a reason listed in SKIPS"
        assert skip["check_result"].get("suppress_comment"), f"{skip['check_id']} skipped on {skip['resource']} without a reason"
