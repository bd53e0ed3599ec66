"""deploy_model: render the champion's KServe InferenceService and apply it (deploy.mode: dry-run, local, cluster)."""

from __future__ import annotations

from pathlib import Path

from flagops.data.formats import DataError, read_json, write_json
from flagops.deploy import rollout


def run(cfg, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Path]:
    promotion = read_json(inputs["promotion"])
    missing = [k for k in ("name", "version", "promoted", "alias") if k not in promotion]
    if missing:
        raise DataError(f"{inputs['promotion']}: missing {', '.join(missing)}; pass promote_model's output")
    record = rollout.deploy(cfg, promotion, outputs["inference_service"])
    write_json(outputs["deployment"], record)
    return outputs
