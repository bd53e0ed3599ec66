"""The champion as a KServe InferenceService (serving.kserve.io/v1beta1), rendered from the config.

The predictor is a custom container on the flagops serve image running ``flagops serve``,
with the ``serve`` section's limits, batching and padding as ``serve.KEY=VALUE`` arguments.
KServe's storage initializer downloads the ``STORAGE_URI`` of the container (the
custom-container form of ``storageUri``) into ``/mnt/models`` before the server starts; a
registered version is an MLflow pyfunc, so ``--model`` points at the embedder directory
inside it (``Champion.model_path``, read from the version's MLmodel).

    flagops deploy render --profile demo            # the champion of the current MLflow store
    flagops deploy render --params manifests/overlays/prod-gpu/flagops.yaml --offline --model-version 1 \
        deploy.storage_uri=s3://flagops-mlflow/artifacts/1/models/m-example/artifacts
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml

from flagops.config import ConfigError, DeployConfig, ServeConfig

API_VERSION = "serving.kserve.io/v1beta1"
CONTAINER = "kserve-container"  # the name KServe's storage initializer looks for
COMMAND = ["flagops", "serve"]  # both images install the flagops command on PATH
MODEL_MOUNT = "/mnt/models"  # where the storage initializer puts storageUri
PORT = 8080  # KServe routes traffic to 8080
READY_PATH, LIVE_PATH = "/v2/health/ready", "/v2/health/live"  # Open Inference Protocol health
RUN_AS = 1000  # the serve and flagops images' user (images/*/Dockerfile)
GPU = "nvidia.com/gpu"
# URI schemes KServe's storage initializer downloads from (Azure Blob comes as https://).
FETCHABLE = ("s3", "gs", "https", "http", "pvc", "hdfs", "webhdfs", "hf", "oci")
ANNOTATION = "flagops"  # prefix of our annotations, as on the PyTorchJob


@dataclass(frozen=True)
class Champion:
    """The registered version to serve, and where its files are."""

    name: str  # registered model
    version: int
    storage_uri: str  # what KServe downloads into /mnt/models
    model_path: str  # the model directory inside storage_uri, e.g. artifacts/candidate
    git_commit: str = "unknown"
    data_md5: str = "unknown"
    model_sha256: str = "unknown"


def kserve_storage_uri(uri: str, cfg: DeployConfig) -> str:
    """The URI KServe reads for an artifact location MLflow reports (``deploy.storage_uri`` wins).

    A server that proxies artifacts (``mlflow server --artifacts-destination``) reports
    ``mlflow-artifacts:/PATH``, which only MLflow clients read: with
    ``deploy.artifacts_destination`` set it maps to ``<destination>/PATH``, the same object.
    """
    if cfg.storage_uri:
        return cfg.storage_uri
    parts = urlsplit(uri)
    if parts.scheme == "mlflow-artifacts" and cfg.artifacts_destination:
        return f"{cfg.artifacts_destination.rstrip('/')}/{parts.path.lstrip('/')}"
    return uri


def check_fetchable(uri: str) -> None:
    """Raise unless KServe's storage initializer can download ``uri`` inside a cluster."""
    scheme = urlsplit(uri).scheme
    if scheme in FETCHABLE:
        return
    if scheme == "mlflow-artifacts":
        fix = "set deploy.artifacts_destination to the MLflow server's --artifacts-destination (e.g. s3://bucket/path)"
    else:
        fix = "register models on an MLflow server with an S3/GCS artifact store, or set deploy.storage_uri"
    raise ConfigError(f"storageUri {uri!r}: KServe cannot download {scheme or 'a local path'} URIs; {fix}")


def _threads(cpu_limit: str) -> str:
    """Cores in a CPU quantity, at least 1: torch otherwise starts one thread per node core and is throttled."""
    m = re.fullmatch(r"([0-9.]+)(m?)", cpu_limit)
    cores = float(m.group(1)) / (1000 if m.group(2) else 1) if m else 1.0
    return str(max(1, math.floor(cores)))


def _container(cfg: DeployConfig, serve_cfg: ServeConfig, champion: Champion) -> dict[str, Any]:
    from flagops.serving.process import MALLOC_ARENAS, OMP_WAIT_POLICY  # here: flagops.serving loads kserve (1 s)

    requests = {"cpu": cfg.cpu, "memory": cfg.memory}
    limits = {"cpu": cfg.cpu_limit, "memory": cfg.memory}
    if cfg.gpus:
        requests[GPU] = limits[GPU] = str(cfg.gpus)

    def probe(path: str, **extra) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": PORT}, "periodSeconds": cfg.probe_period_s, "timeoutSeconds": 5, **extra}

    return {
        "name": CONTAINER,
        "image": cfg.image,
        # The command is explicit so the CUDA flagops image (another entrypoint) runs the same server.
        "command": COMMAND,
        "args": [
            "--model",
            f"{MODEL_MOUNT}/{champion.model_path}",
            "--host",
            "0.0.0.0",  # in the pod: the queue-proxy / kubelet connect from outside the container
            "--port",
            str(PORT),
            "--name",
            cfg.service_name,
            # The serve section (limits, batching, padding), every field: the image's default profile does not decide.
            *serve_cfg.overrides(),
        ],
        "env": [
            {"name": "STORAGE_URI", "value": champion.storage_uri},
            # The root filesystem is read-only: caches and temp files go to the /tmp emptyDir.
            {"name": "HOME", "value": "/tmp"},
            {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
            {"name": "HF_HOME", "value": "/tmp/.cache/huggingface"},
            {"name": "OMP_NUM_THREADS", "value": _threads(cfg.cpu_limit)},
            # Idle OpenMP threads sleep, glibc keeps 2 malloc arenas (flagops.serving.process).
            {"name": "OMP_WAIT_POLICY", "value": OMP_WAIT_POLICY},
            {"name": "MALLOC_ARENA_MAX", "value": str(MALLOC_ARENAS)},
        ],
        "ports": [{"name": "http1", "containerPort": PORT, "protocol": "TCP"}],  # http1: Knative's name for HTTP/1
        "resources": {"requests": requests, "limits": limits},
        # Liveness and readiness wait for the startup probe: loading a large model takes minutes.
        "startupProbe": probe(LIVE_PATH, failureThreshold=math.ceil(cfg.startup_timeout_s / cfg.probe_period_s)),
        "readinessProbe": probe(READY_PATH, failureThreshold=3),
        "livenessProbe": probe(LIVE_PATH, failureThreshold=3),
        # The Kubernetes "restricted" Pod Security profile, on the container (Knative limits pod-level fields).
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def annotations(champion: Champion, cfg: DeployConfig) -> dict[str, str]:
    """Where the served model comes from: the MLflow version and its lineage tags."""
    return {
        "serving.kserve.io/deploymentMode": cfg.deployment_mode,
        f"{ANNOTATION}/mlflow-model": champion.name,
        f"{ANNOTATION}/mlflow-version": str(champion.version),
        f"{ANNOTATION}/git-commit": champion.git_commit,
        f"{ANNOTATION}/data-md5": champion.data_md5,
        f"{ANNOTATION}/model-sha256": champion.model_sha256,
    }


def render_inference_service(
    cfg: DeployConfig, serve_cfg: ServeConfig, champion: Champion, *, canary_traffic_percent: int | None = None
) -> dict[str, Any]:
    """The InferenceService serving ``champion``.

    Args:
        cfg: the deploy section (image, resources, autoscaling, names).
        serve_cfg: the serve section: request limits, micro-batching and padding, passed to
            `flagops serve` in the container's arguments.
        champion: the version to serve and its storage URI.
        canary_traffic_percent: set only while the previous champion still serves the rest
            of the traffic (KServe keeps the last ready revision for it); None: all traffic.
    """
    if canary_traffic_percent is not None and not 0 < canary_traffic_percent < 100:
        raise ConfigError(f"canary_traffic_percent={canary_traffic_percent}: must be between 1 and 99, or None")
    labels = {
        "app.kubernetes.io/name": cfg.service_name,
        "app.kubernetes.io/part-of": "flagops",
        "app.kubernetes.io/component": "predictor",
    }
    predictor: dict[str, Any] = {
        "serviceAccountName": cfg.service_account,
        "labels": dict(labels),  # on the pods: the NetworkPolicy and dashboards select them
        "minReplicas": cfg.min_replicas,
        "maxReplicas": cfg.max_replicas,
        "scaleMetric": cfg.scale_metric,
        "scaleTarget": cfg.scale_target,
        "containers": [_container(cfg, serve_cfg, champion)],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
    }
    if canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = canary_traffic_percent
    if cfg.gpus:  # GPU nodes are usually tainted so that only GPU work lands there
        predictor["tolerations"] = [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": {
            "name": cfg.service_name,
            "namespace": cfg.namespace,
            "labels": labels,
            "annotations": annotations(champion, cfg),
        },
        "spec": {"predictor": predictor},
    }


def render_text(doc: dict[str, Any], regenerate: str) -> str:
    """The InferenceService as YAML, with a header naming the command that made it."""
    header = f"# Rendered by `{regenerate}`; do not edit by hand.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, width=120)


def canary_patch(doc: dict[str, Any], percent: int | None) -> str:
    """The ``kubectl patch`` that moves ``doc``'s canary to ``percent`` (None: 100%, the field removed)."""
    meta = doc["metadata"]
    path = "/spec/predictor/canaryTrafficPercent"
    op = f'{{"op": "remove", "path": "{path}"}}' if percent is None else f'{{"op": "add", "path": "{path}", "value": {percent}}}'
    return f"kubectl patch inferenceservice {meta['name']} -n {meta['namespace']} --type json -p '[{op}]'"


def check_with_sdk(doc: dict[str, Any]) -> None:
    """Raise ConfigError unless ``doc`` survives a round trip through the kserve SDK's model of the
    CRD (``V1beta1InferenceService``): a misspelt or misplaced field is dropped on the way in, a
    missing required one is rejected. ``flagops deploy render`` and the tests run it; the step does
    not (it imports no kserve)."""
    import json

    import kserve
    import kubernetes.client

    class Client(kserve.ApiClient):
        # The SDK names Kubernetes' own types (V1Container, ...) but looks only in kserve.models.
        def _ApiClient__deserialize(self, data, klass):
            if isinstance(klass, str) and klass not in self.NATIVE_TYPES_MAPPING and not klass.startswith(("list[", "dict(")):
                klass = getattr(kserve.models, klass, None) or getattr(kubernetes.client.models, klass)
            return super()._ApiClient__deserialize(data, klass)

    class Response:  # what ApiClient.deserialize reads
        def __init__(self, data: str):
            self.data = data

    client = Client()
    try:
        model = client.deserialize(Response(json.dumps(doc)), "V1beta1InferenceService")
    except ValueError as exc:
        raise ConfigError(f"InferenceService {doc.get('metadata', {}).get('name')!r}: the kserve SDK rejects it: {exc}") from None
    lost = _differences(doc, client.sanitize_for_serialization(model))
    if lost:
        name = doc["metadata"]["name"]
        raise ConfigError(f"InferenceService {name!r}: fields the kserve SDK does not know or changes: {', '.join(lost)}")


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where ``b`` lacks or changes what ``a`` holds."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k, v in a.items() for p in (_differences(v, b[k], f"{path}.{k}") if k in b else [f"{path}.{k}"])]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b, strict=True)) for p in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [path or "."]
