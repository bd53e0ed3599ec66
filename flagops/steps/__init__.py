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
    if cfg.model.kind not in step.kinds:
        raise ConfigError(
            f"step {name} is in the pipeline of model.kind {' or '.join(step.kinds)}, but the config has "
            f"model.kind={cfg.model.kind!r}; run that kind's pipeline (`flagops dvc-yaml --kind {cfg.model.kind}`)"
        )
    ins = {k: Path(v) for k, v in inputs.items()}
    outs = {k: Path(v) for k, v in outputs.items()}
    _check_names(step, "input", set(step.inputs), set(ins))
    _check_names(step, "output", set(step.output_names), set(outs))
    for key, path in ins.items():
        if not path.exists():
            raise DataError(f"{path}: input {key!r} of step {name} does not exist; run the step that makes it first")
    if not track or int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 tracks
        return step.run(cfg, ins, outs)
    from flagops.registry import tracking

    with tracking.step_run(cfg, name, step.sections):
        return step.run(cfg, ins, outs)


def _check_names(step, what: str, expected: set[str], given: set[str]) -> None:
    if given != expected:
        missing = ", ".join(sorted(expected - given)) or "none"
        extra = ", ".join(sorted(given - expected)) or "none"
        raise DataError(
            f"step {step.name}: {what}s must be exactly {sorted(expected)} (missing: {missing}; unknown: {extra})"
        )
