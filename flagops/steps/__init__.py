"""Steps: one small file each, ``run(cfg, inputs, outputs) -> outputs``.

``execute`` is the one entry every face (CLI, DVC, KFP, Airflow) goes through: it checks
the named inputs and outputs against the catalog, opens the step's MLflow run and calls
the step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from flagops import catalog
from flagops.config import ConfigError
from flagops.data.formats import DataError


def execute(name: str, cfg, inputs: Mapping[str, str | Path], outputs: Mapping[str, str | Path], *, track: bool = True):
    step = catalog.get(name)
    if not step.enabled(cfg):
        raise ConfigError(
            f"step {name} runs when {step.condition()}, but the config has "
            + ", ".join(f"{key}={catalog.config_value(cfg, key)!r}" for key, _ in step.when)
            + f"; run that config's pipeline (`flagops steps --profile {cfg.profile}` lists it)"
        )
    ins = {k: Path(v) for k, v in inputs.items()}
    outs = {k: Path(v) for k, v in outputs.items()}
    _check_names(step, "input", set(step.required), set(ins), allowed=set(step.inputs))
    _check_names(step, "output", set(step.output_names), set(outs))
    for key, path in ins.items():
        if not path.exists():
            raise DataError(f"{path}: input {key!r} of step {name} does not exist; run the step that makes it first")
    params = dict(step.params)
    if not track or int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 tracks
        return step.run(cfg, ins, outs, **params)
    from flagops.registry import tracking

    with tracking.step_run(cfg, name, step.sections):
        return step.run(cfg, ins, outs, **params)


def _check_names(step, what: str, expected: set[str], given: set[str], allowed: set[str] | None = None) -> None:
    allowed = expected if allowed is None else allowed
    if not expected <= given <= allowed:
        missing = ", ".join(sorted(expected - given)) or "none"
        extra = ", ".join(sorted(given - allowed)) or "none"
        optional = f" (optional: {sorted(allowed - expected)})" if allowed != expected else ""
        raise DataError(f"step {step.name}: {what}s must be {sorted(expected)}{optional} (missing: {missing}; unknown: {extra})")
