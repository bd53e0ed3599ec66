"""Register an embedder in the MLflow model registry, or fetch a registered one back.

``register`` logs the candidate as a pyfunc (``registry.pyfunc``), registers it with its
lineage tags (``registry.lineage``) and writes its model card (``registry.card``). A version
whose content (``model_sha256``) is already registered is reused, so a re-run adds nothing.
Aliases and the champion gate are in ``registry.aliases``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from flagops.data.formats import DataError, read_json
from flagops.models import layout
from flagops.models.layout import RERANKER_FILE, SETTINGS_FILE, artifact_subdir
from flagops.models.quantize import QUANT_CHECK_FILE, QuantCheck
from flagops.models.sources import ModelSourceError
from flagops.registry import pyfunc, tracking
from flagops.registry.card import CardFacts, render_card, render_reranker_card
from flagops.registry.lineage import dir_sha256, lineage_tags, version_metrics
from flagops.registry.lock import name_taken
from flagops.registry.tracking import TEXT_LIMIT

# Versions registered before registry/pyfunc.py existed pickled their python_model by
# reference as flagops.registry.models.EmbedderPyfunc; this name keeps them loadable.
EmbedderPyfunc = pyfunc.EmbedderPyfunc


def read_metrics(path: str | Path) -> dict[str, float]:
    """The evaluator's flat metrics JSON; nested dicts are joined with ``/``, non-numbers skipped."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object of metrics, got {type(data).__name__}")
    out: dict[str, float] = {}

    def walk(obj: Mapping[str, Any], prefix: str) -> None:
        for key, value in obj.items():
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}/")
            elif isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{prefix}{key}"] = float(value)

    walk(data, "")
    if not out:
        raise DataError(f"{path}: no numeric metrics; expected keys like 'candidate/ndcg@10'")
    return out


def find_version(client: MlflowClient, name: str, sha: str):
    """The oldest version of ``name`` whose ``model_sha256`` tag is ``sha``, or None."""
    quoted = name.replace("'", "\\'")
    found = client.search_model_versions(f"name = '{quoted}' and tags.model_sha256 = '{sha}'")
    return min(found, key=lambda mv: int(mv.version), default=None)


def register(
    cfg,
    model_dir: str | Path,
    metrics: Mapping[str, float],
    train_data: str | Path,
    family: str = "embedder",
    quant: Sequence[QuantCheck] = (),
) -> dict[str, Any]:
    """Log ``model_dir`` as a pyfunc and register it, or reuse the version with the same content.

    ``cfg`` is the family's projection (``families.project``). Needs an active run (see
    ``tracking.ensure_run``); metrics go to that run in either case. ``quant``, evaluate's int8
    and OpenVINO bf16 checks of this model, are logged beside the weights (``QUANT_CHECK_FILE``) and as a tag; the
    content hash stays that of the weights alone.
    """
    tracking.configure_env()
    model_dir, train_data = Path(model_dir), Path(train_data)
    if not (model_dir / "config.json").is_file():
        trainer = "train_reranker" if family == "reranker" else "train_embedder"
        raise DataError(f"{model_dir}: not a model directory (no config.json); pass the {trainer} output")
    name = cfg.registry.model_name
    client = MlflowClient()
    sha = dir_sha256(model_dir)
    tracking.log_metrics(metrics)
    existing = find_version(client, name, sha)
    if existing is not None:
        mlflow.set_tag("flagops.reused_version", existing.version)
        print(f"register_model: {name} v{existing.version} already holds this model (sha256 {sha[:12]}); reusing it")
        return _record(existing, version_metrics(existing), reused=True)

    if family == "reranker":
        info = pyfunc.log_reranker(model_dir)
    else:
        with with_quant_check(model_dir, quant) as logged:
            info = pyfunc.log_embedder(logged, dim=int(read_json(model_dir / "config.json")["hidden_size"]))
    # register_model (not log_model's registered_model_name) so the lineage tags, the
    # sha256 that makes re-runs idempotent among them, are written with the version itself.
    tags = lineage_tags(cfg, model_dir, metrics, train_data, sha, family=family)
    tags |= {"flagops.quantization": "; ".join(c.summary() for c in quant)[:TEXT_LIMIT]} if quant else {}
    mv = _register_version(info.model_uri, name, tags)
    facts = _card_facts(cfg, model_dir, mv.version, metrics, tags, info.flavors, family)
    card = render_reranker_card(facts) if family == "reranker" else render_card(facts)
    mlflow.log_text(card, "README.md")
    if len(card) > TEXT_LIMIT:
        card = card[: TEXT_LIMIT - 60] + "\n\n(truncated; the run's README.md has it all)\n"
    client.update_model_version(name, mv.version, description=card)
    print(f"register_model: registered {name} v{mv.version} (sha256 {sha[:12]}, run {mv.run_id})")
    return _record(client.get_model_version(name, mv.version), dict(metrics), reused=False)


def _register_version(model_uri: str, name: str, tags: dict[str, str], attempts: int = 3):
    """``mlflow.register_model``, again when another pipeline created the registered model at the
    same moment: on sqlite MLflow can let that race through as a raw UNIQUE-constraint error
    instead of "already exists" (tests/reliability/test_concurrent_registry.py hit it once in
    three clean runs); the next attempt finds the model and adds its version."""
    for attempt in range(attempts - 1):
        try:
            return mlflow.register_model(model_uri, name, tags=tags)
        except Exception as exc:  # noqa: BLE001  (sqlite's race surfaces as SQLAlchemy's IntegrityError)
            if not name_taken(exc):
                raise
            time.sleep(0.2 * (attempt + 1))
    return mlflow.register_model(model_uri, name, tags=tags)


@contextmanager
def with_quant_check(model_dir: Path, checks: Sequence[QuantCheck]) -> Iterator[Path]:
    """``model_dir`` itself, or (with checks) a staged copy of it plus the check records: the
    step's input directory, another step's output, stays as it was. Files are hard links where
    the filesystem allows (MLflow refuses symbolic links out of the logged directory), else copies."""
    if not checks:
        yield model_dir
        return
    with tempfile.TemporaryDirectory(prefix="flagops-register-") as tmp:
        staged = Path(tmp) / model_dir.name
        shutil.copytree(model_dir, staged, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(QUANT_CHECK_FILE))
        for check in checks:
            check.save(staged)
        yield staged


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def _card_facts(cfg, model_dir: Path, version: str, metrics, tags: Mapping[str, str], flavors, family: str) -> CardFacts:
    section = cfg.reranker if family == "reranker" else cfg.model
    saved = model_dir / (RERANKER_FILE if family == "reranker" else SETTINGS_FILE)
    settings = read_json(saved) if saved.is_file() else section.model_dump(mode="json")
    return CardFacts(
        name=cfg.registry.model_name,
        version=str(version),
        base_model=section.base,
        settings=settings,
        metrics=metrics,
        primary_metric=cfg.registry.primary_metric,
        data_md5=tags["data_md5"],
        git_commit=tags["git_commit"],
        model_sha256=tags["model_sha256"],
        embedder_subdir=artifact_subdir(flavors),
        profile=cfg.profile,
    )


def _record(mv, metrics: Mapping[str, float], *, reused: bool) -> dict[str, Any]:
    return {
        "name": mv.name,
        "version": int(mv.version),
        "run_id": mv.run_id,
        "model_uri": f"models:/{mv.name}/{mv.version}",
        "model_sha256": mv.tags.get("model_sha256"),
        "metrics": dict(metrics),
        "reused": reused,
    }


def fetch_model_dir(uri: str) -> Path:
    """Download ``models:/NAME@alias`` or ``models:/NAME/VERSION``; return the embedder directory.

    Uses the current MLflow tracking/registry URI (``tracking.setup`` or ``$MLFLOW_TRACKING_URI``).
    """
    tracking.configure_env()
    try:
        root = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    except (MlflowException, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(
            f"{uri}: {reason} (registry {mlflow.get_registry_uri()}); check the name and alias in that registry, or give a model directory"
        ) from None
    try:
        return layout.model_dir(root)
    except DataError:  # the version's artifacts are gone or never were a model: nothing to keep
        shutil.rmtree(root, ignore_errors=True)
        raise ModelSourceError(
            f"{uri}: its artifacts hold no MLflow model (deleted?); register the model again, or give a model directory"
        ) from None
