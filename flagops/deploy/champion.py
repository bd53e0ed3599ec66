"""What a deployment reads from and records in the MLflow registry.

* the champion's files and lineage: ``champion`` (storage URI, model path, tags);
* what each deployment target serves: a registered-model tag per target
  (``flagops.deployment.<mode>.<namespace>.<service>``) holding the version, the version it
  replaced and the canary share, so a re-run is a no-op and ``flagops deploy promote`` knows
  what is in flight, whichever orchestrator ran the step;
* ``rollback``: the ``champion`` alias back to the version the current one replaced.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import RestException
from mlflow.models import Model

from flagops.config import ConfigError, DeployConfig
from flagops.deploy.inference_service import Champion, kserve_storage_uri
from flagops.models.layout import ARTIFACTS, artifact_subdir
from flagops.registry import tracking
from flagops.registry.aliases import CHAMPION, PROMOTION_TAG, alias_version

STATE_TAG = "flagops.deployment"
ROLLBACK_TAG = "flagops.rolled_back"


@dataclass(frozen=True)
class Serving:
    """What a deployment target serves: ``version``, and while a canary runs, the version beside it."""

    version: int
    previous_version: int | None = None
    canary_traffic_percent: int | None = None


def open_registry(cfg) -> MlflowClient:
    """A client on the config's store (``registry.tracking_uri``, $MLFLOW_TRACKING_URI or ./mlflow.db)."""
    tracking.setup(cfg.registry)
    return MlflowClient()


def state_key(cfg: DeployConfig) -> str:
    return f"{STATE_TAG}.{cfg.mode}.{cfg.namespace}.{cfg.service_name}"


def serving(client: MlflowClient, name: str, cfg: DeployConfig) -> Serving | None:
    """What the target of ``cfg`` serves, as last recorded; None before its first deployment."""
    raw = client.get_registered_model(name).tags.get(state_key(cfg))
    return None if raw is None else Serving(**json.loads(raw))


def record_serving(client: MlflowClient, name: str, cfg: DeployConfig, state: Serving) -> None:
    client.set_registered_model_tag(name, state_key(cfg), json.dumps(asdict(state)))


def champion_version(client: MlflowClient, name: str) -> int | None:
    """The @champion's version; None when there is none, the registered model ``name`` included."""
    try:
        mv = alias_version(client, name, CHAMPION)
    except RestException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    return None if mv is None else int(mv.version)


def model_path(client: MlflowClient, name: str, version: int) -> str:
    """The embedder directory inside a registered pyfunc, relative to its root (e.g. artifacts/candidate)."""
    path = artifact_subdir(Model.load(f"models:/{name}/{version}").flavors)  # fetches the MLmodel file only
    if not path:
        raise ConfigError(
            f"models:/{name}/{version} is no flagops model (no {' or '.join(map(repr, ARTIFACTS))} pyfunc artifact); "
            "register it with register_model"
        )
    return path


def champion(client: MlflowClient, name: str, version: int, cfg: DeployConfig) -> Champion:
    """Version ``version`` of ``name`` with its KServe storage URI and lineage tags."""
    mv = client.get_model_version(name, str(version))
    location = client.get_model_version_download_uri(name, str(version))
    return Champion(
        name=name,
        version=int(version),
        storage_uri=kserve_storage_uri(location, cfg),
        model_path=model_path(client, name, version),
        git_commit=mv.tags.get("git_commit", "unknown"),
        data_md5=mv.tags.get("data_md5", "unknown"),
        model_sha256=mv.tags.get("model_sha256", "unknown"),
    )


def rollback(client: MlflowClient, name: str) -> tuple[int, int]:
    """Give ``champion`` back to the version the current champion replaced; return (from, to)."""
    current = alias_version(client, name, CHAMPION)
    if current is None:
        raise ConfigError(f"{name} has no @champion; nothing to roll back")
    promotion: dict[str, Any] = json.loads(current.tags.get(PROMOTION_TAG, "{}"))
    previous = promotion.get("previous_champion")
    if previous is None:
        raise ConfigError(
            f"{name} v{current.version} replaced no earlier champion (its {PROMOTION_TAG} tag names none); nothing to roll back to"
        )
    client.set_registered_model_alias(name, CHAMPION, str(previous))
    client.set_model_version_tag(name, current.version, ROLLBACK_TAG, json.dumps({"champion_now": int(previous)}))
    return int(current.version), int(previous)


def download(champ: Champion, dst: str | Path) -> Path:
    """The registered version's files into ``dst``, as KServe's storage initializer lays them out."""
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{champ.name}/{champ.version}", dst_path=str(dst)))


def log_deployment(manifest_text: str, record: dict[str, Any]) -> None:
    """The rendered YAML and the record, on the active run (the step's), if there is one."""
    import mlflow

    if mlflow.active_run() is None:
        return
    mlflow.log_text(manifest_text, "inferenceservice.yaml")
    mlflow.log_dict(record, "deployment.json")
    mlflow.set_tags({"flagops.deployed_version": str(record["version"]), "flagops.deploy_mode": record["mode"]})
