"""The registry aliases: ``@champion`` for the version that serves, ``@challenger`` for the runner-up:
the last version that lost the gate, or the champion a better version dethroned (the rollback target).
Either way two pipelines that finish together end the same: the better one champion, the other challenger.

``promote`` applies the gate (``promotion.decide``) to a registered version and moves the
aliases; the decision is recorded on the version (``flagops.promotion`` tag) and on the
active run. It holds the model's promotion lock (``registry.lock``) from reading
``@champion`` to the last write, so two pipelines that finish together are promoted one
after the other, never both against the same old champion.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow import MlflowClient

from flagops.registry import tracking
from flagops.registry.lineage import version_metrics
from flagops.registry.lock import promotion_lock, retry_busy
from flagops.registry.promotion import decide
from flagops.registry.tracking import TEXT_LIMIT

CHAMPION, CHALLENGER = "champion", "challenger"
PROMOTION_TAG = "flagops.promotion"


def alias_version(client: MlflowClient, name: str, alias: str):
    """The version ``alias`` points at, or None (read from the model, not from an error message)."""
    version = client.get_registered_model(name).aliases.get(alias)
    return None if version is None else client.get_model_version(name, str(version))


def promote(registry_cfg, name: str, version: int | str, prefix: str = "candidate/") -> dict[str, Any]:
    """Apply the gate to ``name`` v``version`` on its ``<prefix><metric>`` keys and move the
    aliases; log the decision to the active run."""
    tracking.configure_env()
    client = MlflowClient()
    with promotion_lock(client, name):
        record = _promote_locked(client, registry_cfg, name, str(version), prefix)
    _log_promotion(record)
    verdict = "champion" if record["promoted"] else "challenger"
    print(f"promote_model: {name} v{record['version']} -> @{verdict}\n  " + "\n  ".join(record["reasons"]))
    return record


def _promote_locked(client: MlflowClient, registry_cfg, name: str, version: str, prefix: str) -> dict[str, Any]:
    """Read the champion, decide, move the aliases: the caller holds the promotion lock."""
    cand = client.get_model_version(name, version)
    champion = alias_version(client, name, CHAMPION)
    if champion is not None and champion.version == cand.version:
        # A re-run: keep the record of the promotion that made it champion.
        previous = json.loads(cand.tags.get(PROMOTION_TAG, "{}")).get("previous_champion")
        reasons = [f"already champion: v{cand.version} holds @champion; nothing changed"]
        record = _promotion(cand, True, previous, reasons, changed=False)
    else:
        decision = decide(
            version_metrics(cand),
            version_metrics(champion) if champion is not None else None,
            registry_cfg.primary_metric,
            registry_cfg.min_delta,
            list(registry_cfg.guard_metrics),
            registry_cfg.tolerance,
            prefix,
        )
        previous = int(champion.version) if champion is not None else None
        if decision.promote:
            retry_busy(client.set_registered_model_alias, name, CHAMPION, cand.version)
            if champion is not None:  # the dethroned champion is the runner-up now, and the rollback target
                retry_busy(client.set_registered_model_alias, name, CHALLENGER, champion.version)
            elif CHALLENGER in cand.aliases:
                retry_busy(client.delete_registered_model_alias, name, CHALLENGER)
        else:
            retry_busy(client.set_registered_model_alias, name, CHALLENGER, cand.version)
        record = _promotion(cand, decision.promote, previous, decision.reasons, changed=True)
        retry_busy(client.set_model_version_tag, name, cand.version, PROMOTION_TAG, json.dumps(record)[:TEXT_LIMIT])
    return record


def _promotion(cand, promoted: bool, previous: int | None, reasons: list[str], *, changed: bool) -> dict[str, Any]:
    return {
        "name": cand.name,
        "version": int(cand.version),
        "promoted": promoted,
        "alias": CHAMPION if promoted else CHALLENGER,
        "previous_champion": previous,
        "reasons": list(reasons),
        "changed": changed,
    }


def _log_promotion(record: Mapping[str, Any]) -> None:
    if mlflow.active_run() is None:
        return
    mlflow.set_tags(
        {
            "flagops.candidate_version": str(record["version"]),
            "flagops.promoted": str(record["promoted"]).lower(),
            "flagops.alias": record["alias"],
            "flagops.previous_champion": str(record["previous_champion"]),
            "flagops.reasons": "\n".join(record["reasons"])[:TEXT_LIMIT],
        }
    )
    mlflow.log_dict(dict(record), "promotion.json")
