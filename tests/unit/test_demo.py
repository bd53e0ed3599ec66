"""The demo summary names the MLflow store the pipeline used: sqlite under the workspace, or
the configured tracking server."""

from __future__ import annotations

import pytest

from flagops.config import validate
from flagops.data.formats import write_json
from flagops.demo import print_summary
from flagops.serving.smoke import SmokeResult

SERVED = SmokeResult(vectors=[[0.6, 0.8], [1.0, 0.0]], lexical=None)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    metrics = {f"{s}/{m}": 0.5 for s in ("base", "candidate") for m in ("ndcg@10", "mrr@10", "recall@100")}
    write_json(tmp_path / "metrics/eval.json", metrics)
    write_json(tmp_path / "registry/promotion.json", {"name": "bge", "version": 2, "alias": "champion", "reasons": ["first"]})
    return tmp_path


def test_summary_names_the_configured_tracking_server(workdir, capsys):
    cfg = validate({"profile": "tiny", "registry": {"tracking_uri": "http://mlflow.example:5000"}})
    print_summary(cfg, workdir, SERVED, "models:/bge@champion")
    out = capsys.readouterr().out
    assert "MLFLOW_TRACKING_URI=http://mlflow.example:5000 flagops serve --model models:/bge@champion" in out
    assert "MLflow UI:        http://mlflow.example:5000" in out
    assert "sqlite" not in out and "mlflow.db" not in out


def test_summary_names_the_workspace_store_by_default(workdir, capsys):
    print_summary(validate({"profile": "tiny"}), workdir, SERVED, "models:/bge@champion")
    out = capsys.readouterr().out
    db = f"sqlite:///{(workdir / 'mlflow.db').resolve()}"
    assert f"MLFLOW_TRACKING_URI={db} flagops serve" in out and f"mlflow ui --backend-store-uri {db}" in out


def test_summary_says_which_backend_served_and_its_accuracy_check(workdir, capsys):
    served = SERVED._replace(backend="torch-int8-dynamic", quantization_check="int8-dynamic on held-out: nDCG@10 0.7287 -> 0.7324 ... PASS")
    print_summary(validate({"profile": "tiny"}), workdir, served, "models:/bge@champion")
    out = capsys.readouterr().out
    assert "inference backend: torch-int8-dynamic (serve.backend=auto, serve.quantize=auto)" in out
    assert "accuracy check (evaluate, registered with the model): int8-dynamic on held-out: nDCG@10 0.7287 -> 0.7324 ... PASS" in out
    print_summary(validate({"profile": "tiny"}), workdir, SERVED, "models:/bge@champion")
    out = capsys.readouterr().out
    assert "inference backend: unknown" in out and "accuracy check" not in out
