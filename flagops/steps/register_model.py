"""register_model: log the candidate as an MLflow pyfunc and register it (or reuse the same content)."""

from __future__ import annotations

from pathlib import Path

from flagops.data.formats import write_json
from flagops.registry import models, tracking


def run(cfg, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Path]:
    metrics = models.read_metrics(inputs["metrics"])
    with tracking.ensure_run(cfg, "register_model"):
        record = models.register(cfg, inputs["model"], metrics, inputs["train_data"])
    write_json(outputs["registration"], record)
    return outputs
