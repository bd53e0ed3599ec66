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


def test_summary_prints_the_long_context_and_research_measures(workdir, capsys):
    """A profile with the long-context branch or a research branch prints its measure: the
    extended LM against its base, and each metrics/research_<name>.json under its system's title."""
    cfg = validate({"profile": "tiny", "longctx": {"enabled": True, "base_context": 64, "factor": 4, "needle_lengths": [64, 128]}})
    scores = {"needle_rouge_l": (0.5, 0.625), "needle_exact_match": (0.25, 0.125), "topic_accuracy": (0.4, 0.2), "short_ppl": (30.0, 25.5)}
    write_json(workdir / "metrics/longctx.json", {f"{m}/{k}": v[i] for k, v in scores.items() for i, m in enumerate(("base", "extended"))})
    promotion = {"alias": "champion", "reasons": ["first model"]}
    write_json(workdir / "registry/longctx_registration.json", {"name": "flagops-longctx", "version": 3, "promotion": promotion})
    write_json(workdir / "metrics/research_beacon.json", {"beacon/ppl@8x": 100.0, "base/ppl@8x": 100.5})
    print_summary(cfg, workdir, SERVED, "models:/bge@champion")
    out = capsys.readouterr().out
    assert (
        "long context (base -> extended, up to 256 tokens): needle ROUGE-L 0.500 -> 0.625, exact match 0.250 -> 0.125, "
        "topic 0.40 -> 0.20, short-context perplexity 30.0 -> 25.5"
    ) in out
    assert "registered: flagops-longctx version 3 -> alias champion (first model)" in out
    assert "Activation Beacon: beacon/ppl@8x 100.0000, base/ppl@8x 100.5000" in out
    assert "LLaRA" not in out  # no metrics file, no line
