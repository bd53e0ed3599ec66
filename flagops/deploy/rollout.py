"""Roll a champion out, promote its canary, roll it back: each renders, applies and records.

A new champion on a target that already serves another version goes out as a canary
(``deploy.canary_traffic_percent`` of the traffic; KServe keeps the previous revision for
the rest) until ``promote_canary``; a first deployment, a re-run and a rollback take all
traffic at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flagops.config import FlagopsConfig
from flagops.data.formats import DataError, atomic_path
from flagops.deploy import champion as store
from flagops.deploy.apply import apply, preflight
from flagops.deploy.champion import Serving
from flagops.deploy.inference_service import canary_patch, render_inference_service, render_text


def next_serving(before: Serving | None, version: int, canary_percent: int) -> Serving:
    """What a target serves once ``version`` is deployed to it, given what it served ``before``."""
    if before is None:
        return Serving(version)
    if before.version == version:  # a re-run: keep what is in flight
        return before
    return Serving(version, before.version, canary_percent or None)


def champion_of(promotion: dict[str, Any], now: int | None) -> int:
    """The version promote_model left as champion, or the alias holder if it moved since (a rollback)."""
    version = promotion["version"] if promotion["promoted"] else promotion.get("previous_champion")
    if now is not None and now != version:
        print(f"deploy_model: @champion moved since promote_model (v{version} -> v{now}, e.g. a rollback); deploying v{now}")
        version = now
    if version is None:
        given = f"promote_model gave v{promotion['version']} @{promotion['alias']}"
        raise DataError(f"{promotion['name']} has no champion ({given}); nothing to deploy")
    return int(version)


def deploy(cfg: FlagopsConfig, promotion: dict[str, Any], manifest: Path) -> dict[str, Any]:
    """deploy_model: serve the champion ``promotion`` names; a canary if the target serves another version."""
    client = store.open_registry(cfg)
    name = promotion["name"]
    version = champion_of(promotion, store.champion_version(client, name))
    before = store.serving(client, name, cfg.deploy)
    state = next_serving(before, version, cfg.deploy.canary_traffic_percent)
    return roll_out(cfg, client, name, state, manifest, "deploy", "flagops step deploy_model")


def promote_canary(cfg: FlagopsConfig, manifest: Path) -> dict[str, Any]:
    """Send all traffic to the canary: the InferenceService without ``canaryTrafficPercent``."""
    client = store.open_registry(cfg)
    name = cfg.registry.model_name
    before = store.serving(client, name, cfg.deploy)
    if before is None:
        raise DataError(f"nothing deployed to {store.state_key(cfg.deploy)} yet; run deploy_model first")
    if before.canary_traffic_percent is None:
        print(f"flagops deploy promote: no canary in flight; v{before.version} already takes all traffic")
    record = roll_out(cfg, client, name, Serving(before.version), manifest, "promote", "flagops deploy promote")
    if cfg.deploy.mode == "dry-run" and before.canary_traffic_percent is not None:
        doc = {"metadata": {"name": cfg.deploy.service_name, "namespace": cfg.deploy.namespace}}
        print(f"flagops deploy promote: on the cluster, the same change as a patch:\n  {canary_patch(doc, None)}")
    return record


def rollback(cfg: FlagopsConfig, manifest: Path) -> dict[str, Any]:
    """Give @champion back to the previous champion and serve it with all traffic."""
    client = store.open_registry(cfg)
    name = cfg.registry.model_name
    old, new = store.rollback(client, name)
    print(f"flagops deploy rollback: {name} @champion v{old} -> v{new}")
    return roll_out(cfg, client, name, Serving(new), manifest, "rollback", "flagops deploy rollback")


def roll_out(cfg: FlagopsConfig, client, name: str, state: Serving, manifest: Path, action: str, regenerate: str) -> dict[str, Any]:
    """Render ``state`` for the target, write it to ``manifest``, apply it and record it."""
    champ = store.champion(client, name, state.version, cfg.deploy)
    preflight(cfg, champ)
    doc = render_inference_service(cfg.deploy, cfg.serve, champ, canary_traffic_percent=state.canary_traffic_percent)
    text = render_text(doc, regenerate)
    with atomic_path(manifest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    outcome = apply(cfg, manifest, doc, champ)
    store.record_serving(client, name, cfg.deploy, state)  # only once applied: a failed apply changes nothing
    record = {
        "action": action,
        "name": name,
        "version": state.version,
        "mode": cfg.deploy.mode,
        "namespace": cfg.deploy.namespace,
        "service": cfg.deploy.service_name,
        "storage_uri": champ.storage_uri,
        "model_path": champ.model_path,
        "canary_traffic_percent": state.canary_traffic_percent,
        "previous_version": state.previous_version,
        **outcome,
        "lineage": {"git_commit": champ.git_commit, "data_md5": champ.data_md5, "model_sha256": champ.model_sha256},
    }
    store.log_deployment(text, record)
    traffic = "all traffic"
    if state.canary_traffic_percent:
        traffic = f"{state.canary_traffic_percent}% canary beside v{state.previous_version}"
    print(f"{action}: {name} v{state.version} -> {cfg.deploy.service_name} in {cfg.deploy.namespace} ({cfg.deploy.mode}, {traffic})")
    return record
