"""The long-context champion as a KServe InferenceService on the Hugging Face LLM runtime.

flagops' own server embeds and reranks; a causal LM is served by KServe's ``huggingface``
model format (the runtime picks vLLM for text generation, with OpenAI-compatible endpoints
under ``/openai/v1``). The predictor names the format, the version's ``model/merged``
directory as ``storageUri``, one GPU, and the runtime arguments: ``--model_name`` (the
endpoint's model), ``--backend=vllm`` and ``--max_model_len`` = the extended window, so
vLLM sizes its KV cache for the new context instead of refusing prompts past the base's.

    flagops step deploy_long_context --params params.yaml --in longctx_registration=... --out ...
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flagops.deploy.inference_service import API_VERSION, GPU, check_fetchable

MODEL_FORMAT = "huggingface"
ANNOTATION = "flagops"


def storage_uri(source: str, artifacts_destination: str | None) -> str:
    """What KServe downloads: the version's ``merged/`` directory; a proxied ``mlflow-artifacts:/`` URI
    maps to ``deploy.artifacts_destination`` (the bucket behind the MLflow server)."""
    uri = f"{source.rstrip('/')}/merged"
    parts = urlsplit(uri)
    if parts.scheme == "mlflow-artifacts" and artifacts_destination:
        return f"{artifacts_destination.rstrip('/')}/{parts.path.lstrip('/')}"
    return uri


def runtime_args(service_name: str, max_model_len: int) -> list[str]:
    return [f"--model_name={service_name}", "--backend=vllm", f"--max_model_len={max_model_len}"]


def render(cfg, version: dict[str, Any], uri: str, *, cluster: bool = False) -> dict[str, Any]:
    """The InferenceService of registered ``version`` (name, version, max_model_len, lineage tags) at ``uri``.
    ``cluster``: refuse a URI KServe cannot download."""
    if cluster:
        check_fetchable(uri)
    lc, deploy = cfg.longctx, cfg.deploy
    resources = {"cpu": deploy.cpu, "memory": lc.runtime_memory, GPU: "1"}
    labels = {"app.kubernetes.io/name": lc.service_name, "app.kubernetes.io/part-of": "flagops", "app.kubernetes.io/component": "predictor"}
    tags = version.get("tags", {})
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": {
            "name": lc.service_name,
            "namespace": deploy.namespace,
            "labels": labels,
            "annotations": {
                "serving.kserve.io/deploymentMode": deploy.deployment_mode,
                f"{ANNOTATION}/mlflow-model": version["name"],
                f"{ANNOTATION}/mlflow-version": str(version["version"]),
                f"{ANNOTATION}/max-model-len": str(version["max_model_len"]),
                **{f"{ANNOTATION}/{k.replace('.', '-').replace('_', '-')}": tags[k] for k in sorted(tags)},
            },
        },
        "spec": {
            "predictor": {
                "serviceAccountName": deploy.service_account,
                "minReplicas": 1,  # a GPU LLM that scales to zero reloads 16 GB on the next request
                "maxReplicas": deploy.max_replicas,
                "model": {
                    "modelFormat": {"name": MODEL_FORMAT},
                    "storageUri": uri,
                    "args": runtime_args(lc.service_name, int(version["max_model_len"])),
                    "resources": {"requests": dict(resources), "limits": dict(resources)},
                },
                # GPU nodes are usually tainted so that only GPU work lands there
                "tolerations": [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}],
            }
        },
    }
