"""promote_model: give the registered version `champion` if it passes the gate, else `challenger`."""

from __future__ import annotations

from pathlib import Path

from flagops.data.formats import DataError, read_json, write_json
from flagops.registry import aliases, tracking


def run(cfg, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Path]:
    registration = read_json(inputs["registration"])
    missing = [k for k in ("name", "version") if k not in registration]
    if missing:
        raise DataError(f"{inputs['registration']}: missing {', '.join(missing)}; pass register_model's output")
    with tracking.ensure_run(cfg, "promote_model"):
        record = aliases.promote(cfg.registry, registration["name"], registration["version"])
    write_json(outputs["promotion"], record)
    return outputs
