"""Shared fixtures. Tiny models only; MLflow stores live in tmp paths."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Embedding caches start empty in every session: a vector cached by other code never stands in for this code's.
os.environ["FLAGOPS_EMBEDDING_CACHE"] = tempfile.mkdtemp(prefix="flagops-embeddings-")

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


@pytest.fixture
def crash_training_at(monkeypatch):
    """``crash_training_at(step)``: the HF Trainer runs of this test raise KeyboardInterrupt when
    they log ``step`` (a simulated crash); ``crash_training_at(None)`` lets them finish again."""
    from flagops.training import common

    real_on_log = common.MlflowThroughputCallback.on_log

    def arm(step: int | None) -> None:
        def on_log(self, args, state, control, logs=None, **kw):
            if state.global_step == step:
                raise KeyboardInterrupt(f"simulated crash at step {step}")
            return real_on_log(self, args, state, control, logs=logs, **kw)

        monkeypatch.setattr(common.MlflowThroughputCallback, "on_log", on_log if step is not None else real_on_log)

    return arm


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests need CUDA; without it they are skipped, never failed."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; torch sees no GPU here")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend torch sees two CUDA devices, and record each placement instead of moving weights.

    A mock on purpose, and only for what cannot exist here (no GPU on this machine): it lets
    a test check which device and dtype a consumer *chooses*. The moves are recorded as
    ``(type name, Placement)``; the model stays on the CPU in fp32, so it still runs.
    """
    import torch

    from flagops.models import device

    moves: list[tuple[str, device.Placement]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(device, "move", lambda module, placement: moves.append((type(module).__name__, placement)) or module)
    return moves


@pytest.fixture(autouse=True)
def _no_tracking_uri_leaks():
    """``mlflow.set_tracking_uri`` also sets ``$MLFLOW_TRACKING_URI`` (for subprocesses): a test that
    calls it and does not undo it points every later test, and every CLI they start, at its store.
    Put both back after each test."""
    import sys

    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is None:  # mlflow never imported: nothing could have set it
        return
    if saved_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved_env
    utils._tracking_uri = None  # mlflow falls back to the environment, as a new process would
