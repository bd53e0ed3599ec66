"""register_long_context: the extended LM (merged weights + LoRA adapter) to the MLflow registry as
``longctx.model_name``, with its lineage (base LM, RoPE, factor, corpus), then the champion gate on
``extended/<longctx.primary_metric>``. One record holds the registration and the promotion."""

from __future__ import annotations

from pathlib import Path

from flagops.data.formats import write_json
from flagops.longctx import registry
from flagops.registry import models, tracking


def run(cfg, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Path]:
    metrics = models.read_metrics(inputs["longctx_metrics"])
    with tracking.ensure_run(cfg, "register_long_context"):
        record = registry.register(cfg, inputs["extended_lm"], inputs["base_lm"], metrics, inputs["corpus"])
    write_json(outputs["longctx_registration"], record)
    return outputs
