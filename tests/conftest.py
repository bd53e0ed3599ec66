"""Shared fixtures. Tiny models only; MLflow stores live in tmp paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_examples() -> Path:
    path = SHARED / "data" / "flagembedding-examples"
    if not path.is_dir():
        pytest.skip(f"FlagEmbedding example data not found at {path} (only in the project's dev checkout, not user clones)")
    return path


@pytest.fixture(scope="session")
def tiny_embedder():
    """One random tiny BERT (hidden 64, 2 layers) per test session."""
    from flagops.models.embedder import Embedder

    return Embedder.load("tiny-bert", pooling="cls", query_max_len=16, passage_max_len=48)
