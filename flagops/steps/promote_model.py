"""promote_model / promote_reranker: give the registered version `champion` if it passes the
gate, else `challenger`. The reranker's gate compares its reranked/<metric> keys."""

from __future__ import annotations

from pathlib import Path

from flagops.data.formats import DataError, read_json, write_json
from flagops.registry import aliases, families, tracking


def run(cfg, inputs: dict[str, Path], outputs: dict[str, Path], family: str = "embedder") -> dict[str, Path]:
    cfg = families.project(cfg, family)
    registration = read_json(inputs["registration"])
    missing = [k for k in ("name", "version") if k not in registration]
    if missing:
        raise DataError(f"{inputs['registration']}: missing {', '.join(missing)}; pass {families.step(family, 'register')}'s output")
    with tracking.ensure_run(cfg, families.step(family, "promote")):
        record = aliases.promote(cfg.registry, registration["name"], registration["version"], prefix=families.get(family).prefix)
    write_json(outputs[families.artifact(family, "promotion")], record)
    return outputs
