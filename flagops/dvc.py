"""Render ``dvc.yaml`` from the catalog: one stage per task of a config's pipeline.

A stage depends on its input artifacts, its config sections and the code it runs: the
step's module and every flagops module it imports, transitively (``code_deps``). Editing
``flagops/losses/infonce.py`` therefore re-runs training and what follows it, and nothing
before it.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from flagops import catalog

HEADER = (
    "# Generated from flagops/catalog.py by `flagops dvc-yaml --profile {profile} > dvc.yaml`; edit the catalog, not this file.\n"
    "# `dvc repro` runs the {profile} profile's DAG with the config in params.yaml (tests check it matches the catalog).\n"
)
PARAMS_FILE = "params.yaml"
PACKAGE = Path(__file__).resolve().parent  # the flagops package whose files the stages depend on
# DVC plot for the chart data: one bar per (system, metric).
CHART_PLOT = {"x": "value", "y": "label", "template": "bar_horizontal", "title": "Retrieval quality by system"}
LOSS_PLOT = {"x": "step", "y": "loss", "template": "linear"}
# How `dvc plots show` draws each JSON plot artifact (a PNG needs no properties).
PLOT_PROPS = {
    "chart_data": CHART_PLOT,
    "loss_curve": LOSS_PLOT | {"title": "Training loss (embedder)"},
    "reranker_loss_curve": LOSS_PLOT | {"title": "Training loss (reranker)"},
    "base_lm_loss_curve": LOSS_PLOT | {"title": "Training loss (long-context base LM)"},
    "extend_loss_curve": LOSS_PLOT | {"title": "Training loss (context extension, LoRA)"},
}


def stage_cmd(task: catalog.Task, params: str = PARAMS_FILE) -> str:
    """`flagops step NAME --params F --in k=PATH ... --out k=PATH ...`: what every face runs."""
    parts = ["flagops", "step", task.name, "--params", params]
    parts += [f"--in {name}={art.path}" for name, art in task.wiring]
    parts += [f"--out {a.name}={a.path}" for a in task.step.outputs]
    return " ".join(parts)


def _module_file(module: str) -> Path | None:
    rel = Path(*module.split(".")[1:])
    candidates = [PACKAGE / rel / "__init__.py"] + ([PACKAGE / rel.with_suffix(".py")] if rel.parts else [])
    for path in candidates:
        if path.is_file():
            return path
    return None


def _imports(path: Path) -> set[str]:
    """flagops modules ``path`` imports anywhere (function-level imports too), with their packages."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]  # a name may be a submodule
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "flagops":
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return found


@cache
def code_deps(module: str) -> tuple[str, ...]:
    """The package-relative files ``module`` runs: itself and its flagops imports, transitively."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        path = _module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(_imports(path))
    return tuple(sorted(str(p.relative_to(PACKAGE.parent)) for p in seen))


def stage(task: catalog.Task, code_root: str = ".") -> dict[str, Any]:
    step = task.step
    out: dict[str, Any] = {"cmd": stage_cmd(task)}
    code = [str(Path(code_root) / f) if code_root != "." else f for f in code_deps(step.module)]
    out["deps"] = [art.path for _, art in task.wiring] + code
    out["params"] = list(step.sections)
    # Records describe MLflow state, not data: keep them out of the DVC cache.
    outs = [{a.path: {"cache": False}} if a.kind == "record" else a.path for a in step.outputs if a.kind not in ("metrics", "plot")]
    metrics = [{a.path: {"cache": False}} for a in step.outputs if a.kind == "metrics"]
    plots = [{a.path: {"cache": False} | PLOT_PROPS.get(a.name, {})} for a in step.outputs if a.kind == "plot"]
    if outs:
        out["outs"] = outs
    if metrics:
        out["metrics"] = metrics
    if plots:
        out["plots"] = plots
    return out


def render(cfg, code_root: str = ".") -> dict[str, Any]:
    """The stages of ``cfg``'s pipeline. ``code_root``: the folder holding the flagops package,
    as the stage sees it ("." for the repo's own dvc.yaml; an absolute path in a workspace)."""
    return render_pipeline(catalog.pipeline(cfg), code_root)


def render_pipeline(pipe: catalog.Pipeline, code_root: str = ".") -> dict[str, Any]:
    return {"stages": {t.name: stage(t, code_root) for t in pipe.tasks}}


def render_text(cfg, code_root: str = ".") -> str:
    return HEADER.format(profile=cfg.profile) + yaml.safe_dump(render(cfg, code_root), sort_keys=False, width=200)
