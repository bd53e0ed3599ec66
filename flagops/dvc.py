"""Render ``dvc.yaml`` from the catalog: one stage per step, deps and outs from artifacts."""

from __future__ import annotations

from typing import Any

import yaml

from flagops import catalog

HEADER = (
    "# Generated from flagops/catalog.py by `flagops dvc-yaml > dvc.yaml`; edit the catalog, not this file.\n"
    "# `dvc repro` runs the retraining DAG with the config in params.yaml (tests check it matches the catalog).\n"
)
PARAMS_FILE = "params.yaml"
# DVC plot for the chart data: one bar per (system, metric).
CHART_PLOT = {"x": "value", "y": "label", "template": "bar_horizontal", "title": "Retrieval quality by system"}


def stage_cmd(step: catalog.Step) -> str:
    parts = ["flagops", "step", step.name, "--params", PARAMS_FILE]
    parts += [f"--in {name}={catalog.ARTIFACTS[name].path}" for name in step.inputs]
    parts += [f"--out {a.name}={a.path}" for a in step.outputs]
    return " ".join(parts)


def stage(step: catalog.Step) -> dict[str, Any]:
    out: dict[str, Any] = {"cmd": stage_cmd(step)}
    if step.inputs:
        out["deps"] = [catalog.ARTIFACTS[name].path for name in step.inputs]
    out["params"] = list(step.sections)
    # Records describe MLflow state, not data: keep them out of the DVC cache.
    outs = [{a.path: {"cache": False}} if a.kind == "record" else a.path for a in step.outputs if a.kind not in ("metrics", "plot")]
    metrics = [{a.path: {"cache": False}} for a in step.outputs if a.kind == "metrics"]
    plots = [
        {a.path: ({"cache": False} | (CHART_PLOT if a.path.endswith(".json") else {}))}
        for a in step.outputs
        if a.kind == "plot"
    ]
    if outs:
        out["outs"] = outs
    if metrics:
        out["metrics"] = metrics
    if plots:
        out["plots"] = plots
    return out


def render(kind: str = "bge") -> dict[str, Any]:
    """The stages of model kind ``kind``'s pipeline (train_embedder or train_m3)."""
    return {"stages": {s.name: stage(s) for s in catalog.pipeline(kind)}}


def render_text(kind: str = "bge") -> str:
    return HEADER + yaml.safe_dump(render(kind), sort_keys=False, width=200)
