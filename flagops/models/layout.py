"""Where things sit in a flagops model directory and in a registered (downloaded) MLflow model.

A leaf module: file names and a YAML read, no torch and no MLflow, so ``models/``,
``registry/``, ``serving/`` and ``deploy/`` can all share it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from flagops.data.formats import DataError

SETTINGS_FILE = "flagops_embedder.json"  # the embedder's pooling, instruction and lengths (Embedder.save)
RERANKER_FILE = "flagops_reranker.json"  # a trained reranker's kind, prompt, lengths and layers (train_reranker)
ARTIFACT = "embedder"  # pyfunc artifact key of the embedder directory in a registered version
RERANKER_ARTIFACT = "reranker"  # ... and of a registered reranker's directory
ARTIFACTS = (ARTIFACT, RERANKER_ARTIFACT)


def artifact_subdir(flavors: Mapping[str, Any]) -> str | None:
    """The model directory's path inside a flagops pyfunc, from its MLmodel ``flavors``; None if absent."""
    artifacts = flavors.get("python_function", {}).get("artifacts", {})
    return next((artifacts[key]["path"] for key in ARTIFACTS if key in artifacts), None)


def model_dir(model_root: str | Path) -> Path:
    """The model directory inside a downloaded flagops pyfunc (e.g. a KServe storageUri mount)."""
    root = Path(model_root)
    mlmodel = root / "MLmodel"
    if not mlmodel.is_file():
        raise DataError(f"{root}: no MLmodel file; expected a downloaded MLflow model")
    subdir = artifact_subdir((yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}).get("flavors", {}))
    if not subdir or not (root / subdir / "config.json").is_file():
        raise DataError(f"{root}: not a flagops model (no {' or '.join(map(repr, ARTIFACTS))} model directory among its pyfunc artifacts)")
    return root / subdir
