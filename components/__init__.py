"""KFP v2 components: one module per catalog step, each one call into flagops.

Each is a lightweight Python component on the flagops image. ``install_kfp_package=False``
drops the run-time ``pip install kfp`` (the image has kfp), so a component runs on an
air-gapped cluster. KFP ships only the function's source, so the shared body, ``run_step``,
travels with every component through ``additional_funcs`` and imports what it needs inside.
Artifacts keep the catalog's names; tests/orchestration/test_kfp.py checks each against it.
Every component also takes the same parameters, ``PARAMETERS``: the config, the MLflow store
and the KFP run's id, which groups the run's step runs under one MLflow parent run.
"""

import functools
import importlib
import pkgutil

from kfp import dsl

from flagops import catalog

# The KFP type of each catalog artifact kind: Metrics shows in the KFP UI, the rest are files.
ARTIFACT_TYPES = {
    "dataset": dsl.Dataset,
    "model": dsl.Model,
    "metrics": dsl.Metrics,
    "plot": dsl.Artifact,
    "record": dsl.Artifact,
}
# The parameters every component takes, in this order, before its artifacts (see run_step).
PARAMETERS = ("params", "tracking_uri", "pipeline_key")


def run_step(name: str, params: str, tracking_uri: str, pipeline_key: str, **artifacts) -> None:
    """Run catalog step ``name`` on KFP artifacts named as in the catalog.

    Args:
        name: The catalog step.
        params: A FlagopsConfig as YAML (``to_yaml``); no profile file is needed.
        tracking_uri: MLflow store; "" keeps the config's ``registry.tracking_uri``.
        pipeline_key: The KFP run's id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``): the run's steps
            log under one MLflow parent run, named ``kfp:<id>``; "" logs a top-level run.
        **artifacts: The step's inputs and outputs; ``.path`` is a file or, for a
            directory artifact, the directory.
    """
    import json
    import re
    import tempfile
    from pathlib import Path

    from flagops import catalog
    from flagops.config import load_config
    from flagops.registry import tracking
    from flagops.steps import execute

    step = catalog.get(name)
    overrides = [f"registry.tracking_uri={json.dumps(tracking_uri)}"] if tracking_uri else []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(params, encoding="utf-8")
        cfg = load_config(path, overrides)
    inputs = {n: artifacts[n].path for n in step.inputs if artifacts.get(n) is not None}  # optional: None when absent
    outputs = {a.name: artifacts[a.name].path for a in step.outputs}
    with tracking.exported(tracking.PIPELINE_KEY_ENV, f"kfp:{pipeline_key}" if pipeline_key else None):
        execute(name, cfg, inputs, outputs)
    for a in step.outputs:
        if a.kind == "metrics":  # also into the KFP UI, under names like candidate_ndcg_at_10
            from flagops.registry.models import read_metrics

            for key, value in read_metrics(outputs[a.name]).items():
                artifacts[a.name].log_metric(re.sub(r"[^\w.-]", "_", key.replace("@", "_at_")), value)


# The decorator every component uses: the flagops image ($FLAGOPS_IMAGE), no pip at run time.
component = functools.partial(dsl.component, base_image=catalog.image(), install_kfp_package=False, additional_funcs=[run_step])


def module_names() -> list[str]:
    """The component modules present in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load() -> dict:
    """{step name: component}, in catalog order; components/<step>.py defines ``<step>``.

    Steps that share a flagops module (a family parameter) still get a component each: KFP
    types a component's artifacts by name, and their artifacts differ."""
    return {s.name: getattr(importlib.import_module(f"{__name__}.{s.name}"), s.name) for s in catalog.STEPS}
