"""register_model / register_reranker: log a trained model as an MLflow pyfunc and register it
(or reuse the version with the same content). ``family`` picks the model's name and pyfunc."""

from __future__ import annotations

from pathlib import Path

from flagops.data.formats import write_json
from flagops.registry import families, models, tracking


def run(cfg, inputs: dict[str, Path], outputs: dict[str, Path], family: str = "embedder") -> dict[str, Path]:
    cfg = families.project(cfg, family)
    metrics = models.read_metrics(inputs["metrics"])
    with tracking.ensure_run(cfg, families.step(family, "register")):
        record = models.register(cfg, inputs["model"], metrics, inputs["train_data"], family=family)
    write_json(outputs[families.artifact(family, "registration")], record)
    return outputs
