"""The deploy modes: what happens to a rendered InferenceService.

* ``dry-run``: nothing beyond the written YAML (and, for a canary move, the patch printed);
* ``local``: the champion is downloaded as KServe's storage initializer would, served with
  the container's arguments on 127.0.0.1 and sent a smoke request (``serving.smoke.smoke_serve``);
* ``cluster``: ``kubectl apply -f`` to the current context, then wait for Ready.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from flagops import kube
from flagops.config import ConfigError, FlagopsConfig
from flagops.deploy.inference_service import Champion, check_fetchable

KUBECTL_TIMEOUT_S = kube.KUBECTL_TIMEOUT_S
NO_KUBECTL = "deploy.mode=cluster: kubectl not found on PATH; install it and point it at the cluster, or set deploy.mode=dry-run"


def preflight(cfg: FlagopsConfig, champion: Champion) -> None:
    """Fail before anything is written if the mode cannot work: cluster needs kubectl and a storage URI KServe reads."""
    if cfg.deploy.mode != "cluster":
        return
    check_fetchable(champion.storage_uri)
    if shutil.which("kubectl") is None:
        raise ConfigError(NO_KUBECTL)


def apply(cfg: FlagopsConfig, manifest: Path, doc: dict[str, Any], champion: Champion) -> dict[str, Any]:
    """Carry out ``cfg.deploy.mode`` for the InferenceService ``doc`` written at ``manifest``.

    Returns what the deployment record notes about it: ``applied`` and, in local mode, ``smoke``.
    """
    mode = cfg.deploy.mode
    if mode == "dry-run":
        print(f"deploy: dry-run: wrote {manifest}; apply it with `kubectl apply -f {manifest}`")
        return {"applied": False, "smoke": None}
    if mode == "local":
        return {"applied": True, "smoke": serve_locally(cfg, champion)}
    kubectl_apply(manifest)
    wait_ready(doc, cfg.deploy.ready_timeout_s)
    return {"applied": True, "smoke": None}


# --------------------------------------------------------------------------- local


def serve_locally(cfg: FlagopsConfig, champion: Champion) -> dict[str, Any]:
    """Download the version (as the storage initializer does), serve it as the container would, embed."""
    from flagops.deploy.champion import download
    from flagops.serving.smoke import SAMPLE_PASSAGES, SAMPLE_QUERIES, smoke_rerank, smoke_serve

    name = cfg.deploy.service_name
    with tempfile.TemporaryDirectory(prefix="flagops-deploy-") as mount:
        download(champion, mount)
        served = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"model_name": name})})
        if cfg.serve.kind == "reranker":  # the reranker family (registry.families)
            ranking = smoke_rerank(str(Path(mount) / champion.model_path), served, Path.cwd())
            print(f"deploy: local: served {champion.name} v{champion.version} as {name!r}: reranked {len(ranking)} passages")
            return {"query": SAMPLE_QUERIES[0], "passages": len(SAMPLE_PASSAGES), "ranking": [i for i, _ in ranking]}
        vectors = smoke_serve(str(Path(mount) / champion.model_path), served, Path.cwd()).vectors
    dims = len(vectors[0]) if vectors else 0
    print(f"deploy: local: served {champion.name} v{champion.version} as {name!r}: {len(vectors)} queries -> {dims}-dim vectors")
    return {"queries": len(SAMPLE_QUERIES), "dimensions": dims}


# --------------------------------------------------------------------------- cluster


def kubectl(*args: str, timeout: float = KUBECTL_TIMEOUT_S) -> str:
    """Run kubectl; a missing binary or a failure is one ConfigError line naming the fix."""
    return kube.kubectl(*args, context="deploy.mode=cluster", missing=NO_KUBECTL, timeout=timeout)


def kubectl_apply(manifest: Path) -> None:
    """Apply ``manifest`` after checking that a cluster answers and serves InferenceServices."""
    try:
        kinds = kubectl("api-resources", "--api-group=serving.kserve.io", "-o", "name", "--request-timeout=20s")
    except ConfigError as exc:
        raise ConfigError(f"{exc} (no reachable cluster? check `kubectl config current-context`)") from None
    if "inferenceservices.serving.kserve.io" not in kinds.split():
        raise ConfigError("deploy.mode=cluster: the cluster has no InferenceService kind; install KServe first (docs/deploy.md)")
    print(kubectl("apply", "-f", str(manifest)).strip())


def wait_ready(doc: dict[str, Any], timeout_s: int) -> None:
    if not timeout_s:
        return
    meta = doc["metadata"]
    target = f"inferenceservice/{meta['name']}"
    print(f"deploy: waiting up to {timeout_s} s for {target} to be Ready")
    kubectl("wait", "--for=condition=Ready", target, "-n", meta["namespace"], f"--timeout={timeout_s}s", timeout=timeout_s + 30)
