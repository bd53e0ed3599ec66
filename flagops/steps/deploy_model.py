"""deploy_model / deploy_reranker: render the champion's KServe InferenceService and apply it
(deploy.mode: dry-run, local, cluster). The reranker goes to its own service, served as /v1/rerank."""

from __future__ import annotations

from pathlib import Path

from flagops.data.formats import DataError, read_json, write_json
from flagops.deploy import rollout
from flagops.registry import families


def run(cfg, inputs: dict[str, Path], outputs: dict[str, Path], family: str = "embedder") -> dict[str, Path]:
    cfg = families.project(cfg, family)
    promotion = read_json(inputs["promotion"])
    missing = [k for k in ("name", "version", "promoted", "alias") if k not in promotion]
    if missing:
        raise DataError(f"{inputs['promotion']}: missing {', '.join(missing)}; pass the promote step's output")
    record = rollout.deploy(cfg, promotion, outputs[families.artifact(family, "inference_service")])
    write_json(outputs[families.artifact(family, "deployment")], record)
    return outputs
