"""Register embedders in the MLflow model registry, move the champion alias, fetch them back.

A registered version is an MLflow pyfunc whose one artifact, ``embedder``, is the
HF / sentence-transformers directory ``Embedder.save`` wrote. Its python_model is
``EmbedderPyfunc``, pickled by reference. flagops is not on PyPI, so rather than list it
in ``pip_requirements`` the version carries a copy of the flagops package (``code_paths``,
~0.3 MB): the pyfunc then loads anywhere the pinned torch/transformers/numpy/mlflow are
installed (``mlflow models serve``, a bare venv). MLflow puts that copy on ``sys.path`` at
load time; a process that has already imported flagops keeps its own, so the flagops
image and the project venv run their installed code. This needs ``flagops/__init__.py``:
in a namespace package the copy would merge with the installed one.

Lineage lives in model-version tags: ``git_commit``, ``data_md5``, ``model_sha256``,
``config``, ``flagops.profile``, ``metrics`` (the evaluator's flat dict as JSON, read by
the gate) and one tag per metric under its MLflow-safe name (``candidate/ndcg_at_10``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

# tracking first: it sets MLflow's environment defaults (telemetry off) before mlflow is imported.
from flagops.registry import tracking  # isort: skip

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec

from flagops.data.formats import DataError, read_json
from flagops.registry.card import CardFacts, render_card
from flagops.registry.promotion import decide

ARTIFACT = "embedder"  # pyfunc artifact key of the embedder directory
CHAMPION, CHALLENGER = "champion", "challenger"
SETTINGS_FILE = "flagops_embedder.json"  # as written by Embedder.save
TEXT_LIMIT = 5000  # chars; model-version descriptions and registry tags are VARCHAR(5000) on SQL stores
PROMOTION_TAG = "flagops.promotion"
INPUT_EXAMPLE = ["what does a bge embedder do?", "BGE maps a text to one dense vector for retrieval."]
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # flagops/, shipped with each version
RUNTIME_DISTS = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "mlflow")


# --------------------------------------------------------------------------- pyfunc

# The class is pickled by reference on purpose (flagops travels in code_paths): drop
# MLflow's generic notice about pickled python_model objects, and nothing else.


class _DropNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Passing a Python object as `python_model`" not in record.getMessage()


logging.getLogger("mlflow.pyfunc").addFilter(_DropNotice())


class EmbedderPyfunc(mlflow.pyfunc.PythonModel):
    """``predict(list[str], params={"is_query": bool}) -> float32 (n, dim)`` via ``Embedder.encode``."""

    def load_context(self, context) -> None:
        from flagops.models.device import inference_placement, place
        from flagops.models.embedder import Embedder  # torch + transformers: only when loaded

        self.embedder = place(Embedder.load(context.artifacts[ARTIFACT]), inference_placement())  # auto: CUDA in fp16 when present

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        is_query = bool((params or {}).get("is_query", False))
        return self.embedder.encode(_as_texts(model_input), is_query=is_query)


def _as_texts(model_input) -> list[str]:
    """A string column arrives as a DataFrame (schema enforcement), a list or an array."""
    if hasattr(model_input, "iloc") and getattr(model_input, "ndim", 1) == 2:  # DataFrame
        model_input = model_input.iloc[:, 0]
    if isinstance(model_input, str):
        model_input = [model_input]
    texts = list(np.asarray(model_input, dtype=object).ravel())
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"expected strings to embed, got {bad[0]}")
    return texts


def embedder_signature(dim: int) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]),
        params=ParamSchema([ParamSpec("is_query", DataType.boolean, False)]),
    )


def pip_requirements() -> list[str]:
    """Exact pins of what the pyfunc imports; local tags like ``+cpu`` are dropped."""
    return [f"{d}=={dist_version(d).split('+')[0]}" for d in RUNTIME_DISTS]


# --------------------------------------------------------------------------- lineage


def file_md5(path: str | Path) -> str:
    """md5 of a file's bytes: what DVC records for a file out."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def dir_sha256(directory: str | Path) -> str:
    """Content hash of a directory: sha256 over sorted (relative path, file sha256) lines."""
    directory = Path(directory)
    h = hashlib.sha256()
    files = {p.relative_to(directory).as_posix(): p for p in directory.rglob("*") if p.is_file()}
    for rel in sorted(files):
        with files[rel].open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()


def git_commit(cwd: str | Path = ".") -> str:
    """$FLAGOPS_GIT_COMMIT (set when an image is built), else the commit of the working
    directory's repo, else of the repo flagops runs from (workspaces are not repos)."""
    if os.environ.get("FLAGOPS_GIT_COMMIT"):
        return os.environ["FLAGOPS_GIT_COMMIT"]
    for where in (Path(cwd), PACKAGE_DIR):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return "unknown"


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


def version_metrics(mv) -> dict[str, float]:
    return {k: float(v) for k, v in json.loads(mv.tags.get("metrics", "{}")).items()}


def lineage_tags(cfg, model_dir: Path, metrics: Mapping[str, float], train_data: Path, sha: str) -> dict[str, str]:
    sections = {"model": cfg.model.model_dump(mode="json"), "train": cfg.train.model_dump(mode="json")}
    config = json.dumps(sections, sort_keys=True)
    return {
        "git_commit": git_commit(),
        "data_md5": file_md5(train_data),
        "model_sha256": sha,
        "config": config[:TEXT_LIMIT],
        "flagops.profile": cfg.profile,
        "metrics": json.dumps(dict(metrics), sort_keys=True),
        **{tracking.mlflow_key(k): repr(float(v)) for k, v in metrics.items()},
    }


# --------------------------------------------------------------------------- register


@contextlib.contextmanager
def ensure_run(cfg, step_name: str) -> Iterator[Any]:
    """The active run (``execute`` opens one per step), else a new step run of our own."""
    active = mlflow.active_run()
    if active is not None:
        yield active
        return
    with tracking.step_run(cfg, step_name, ()) as run:
        yield run


def find_version(client: MlflowClient, name: str, sha: str):
    """The oldest version of ``name`` whose ``model_sha256`` tag is ``sha``, or None."""
    quoted = name.replace("'", "\\'")
    found = client.search_model_versions(f"name = '{quoted}' and tags.model_sha256 = '{sha}'")
    return min(found, key=lambda mv: int(mv.version), default=None)


def register(cfg, model_dir: str | Path, metrics: Mapping[str, float], train_data: str | Path) -> dict[str, Any]:
    """Log ``model_dir`` as a pyfunc and register it, or reuse the version with the same content.

    Needs an active run (see ``ensure_run``); metrics go to that run in either case.
    """
    model_dir, train_data = Path(model_dir), Path(train_data)
    if not (model_dir / "config.json").is_file():
        raise DataError(f"{model_dir}: not a model directory (no config.json); pass the train_embedder output")
    name = cfg.registry.model_name
    client = MlflowClient()
    sha = dir_sha256(model_dir)
    tracking.log_metrics(metrics)
    existing = find_version(client, name, sha)
    if existing is not None:
        mlflow.set_tag("flagops.reused_version", existing.version)
        print(f"register_model: {name} v{existing.version} already holds this model (sha256 {sha[:12]}); reusing it")
        return _record(existing, version_metrics(existing), reused=True)

    dim = int(read_json(model_dir / "config.json")["hidden_size"])
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=EmbedderPyfunc(),
        artifacts={ARTIFACT: str(model_dir)},
        signature=embedder_signature(dim),
        input_example=INPUT_EXAMPLE,
        pip_requirements=pip_requirements(),
        code_paths=[str(PACKAGE_DIR)],
    )
    # register_model (not log_model's registered_model_name) so the lineage tags, the
    # sha256 that makes re-runs idempotent among them, are written with the version itself.
    tags = lineage_tags(cfg, model_dir, metrics, train_data, sha)
    mv = mlflow.register_model(info.model_uri, name, tags=tags)
    card = render_card(_card_facts(cfg, model_dir, mv.version, metrics, tags, info.flavors))
    mlflow.log_text(card, "README.md")
    if len(card) > TEXT_LIMIT:
        card = card[: TEXT_LIMIT - 60] + "\n\n(truncated; the run's README.md has it all)\n"
    client.update_model_version(name, mv.version, description=card)
    print(f"register_model: registered {name} v{mv.version} (sha256 {sha[:12]}, run {mv.run_id})")
    return _record(client.get_model_version(name, mv.version), dict(metrics), reused=False)


def _card_facts(cfg, model_dir: Path, version: str, metrics, tags: Mapping[str, str], flavors) -> CardFacts:
    saved = model_dir / SETTINGS_FILE
    settings = read_json(saved) if saved.is_file() else cfg.model.model_dump(mode="json")
    subdir = flavors["python_function"]["artifacts"][ARTIFACT]["path"]
    return CardFacts(
        name=cfg.registry.model_name,
        version=str(version),
        base_model=cfg.model.base,
        settings=settings,
        metrics=metrics,
        primary_metric=cfg.registry.primary_metric,
        data_md5=tags["data_md5"],
        git_commit=tags["git_commit"],
        model_sha256=tags["model_sha256"],
        embedder_subdir=subdir,
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


# --------------------------------------------------------------------------- promote


def alias_version(client: MlflowClient, name: str, alias: str):
    """The version ``alias`` points at, or None (read from the model, not from an error message)."""
    version = client.get_registered_model(name).aliases.get(alias)
    return None if version is None else client.get_model_version(name, str(version))


def promote(registry_cfg, name: str, version: int | str) -> dict[str, Any]:
    """Apply the gate to ``name`` v``version`` and move the aliases; log the decision to the active run."""
    client = MlflowClient()
    cand = client.get_model_version(name, str(version))
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
        )
        previous = int(champion.version) if champion is not None else None
        if decision.promote:
            client.set_registered_model_alias(name, CHAMPION, cand.version)
            if CHALLENGER in cand.aliases:
                client.delete_registered_model_alias(name, CHALLENGER)
        else:
            client.set_registered_model_alias(name, CHALLENGER, cand.version)
        record = _promotion(cand, decision.promote, previous, decision.reasons, changed=True)
        client.set_model_version_tag(name, cand.version, PROMOTION_TAG, json.dumps(record)[:TEXT_LIMIT])
    _log_promotion(record)
    verdict = "champion" if record["promoted"] else "challenger"
    print(f"promote_model: {name} v{cand.version} -> @{verdict}\n  " + "\n  ".join(record["reasons"]))
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


# --------------------------------------------------------------------------- fetch


def fetch_model_dir(uri: str) -> Path:
    """Download ``models:/NAME@alias`` or ``models:/NAME/VERSION``; return the embedder directory.

    Uses the current MLflow tracking/registry URI (``tracking.setup`` or ``$MLFLOW_TRACKING_URI``).
    """
    return embedder_dir(mlflow.artifacts.download_artifacts(artifact_uri=uri))


def embedder_dir(model_root: str | Path) -> Path:
    """The embedder directory inside a downloaded pyfunc model (e.g. a KServe storageUri mount)."""
    root = Path(model_root)
    mlmodel = root / "MLmodel"
    if not mlmodel.is_file():
        raise DataError(f"{root}: no MLmodel file; expected a downloaded MLflow model")
    pyfunc = Model.load(str(mlmodel)).flavors.get("python_function", {})
    subdir = pyfunc.get("artifacts", {}).get(ARTIFACT, {}).get("path")
    if not subdir or not (root / subdir / "config.json").is_file():
        raise DataError(f"{root}: not a flagops embedder (no {ARTIFACT!r} model directory among its pyfunc artifacts)")
    return root / subdir
