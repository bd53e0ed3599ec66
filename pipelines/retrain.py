"""The retraining pipelines on Kubeflow: one task per catalog step, wired by its artifacts.

One pipeline per model kind (the catalog's `pipeline(kind)`): `bge` (train_embedder) in
pipelines/retrain.yaml, `m3` (train_m3) in pipelines/retrain_m3.yaml. Compile them to the
committed IR (a test fails when either is stale):
    make kfp-compile        (or: python -m pipelines.retrain [--kind bge|m3 -o FILE])
Submit or schedule the IR with `flagops kfp submit|schedule` (flagops/kfp_client.py).
"""

import argparse
import json
from pathlib import Path

from kfp import compiler, dsl

import components
from flagops import catalog
from flagops.config import load_config

# kind -> (pipeline name, default profile, committed IR)
KINDS = {
    "bge": ("flagops-retrain", "demo", Path(__file__).with_name("retrain.yaml")),
    "m3": ("flagops-retrain-m3", "demo_m3", Path(__file__).with_name("retrain_m3.yaml")),
}
NAME, _, PACKAGE = KINDS["bge"]


def default_params(profile: str) -> str:
    """The profile as set in its files, so config fields added later keep their defaults and
    leave the committed IR fresh (`flagops kfp submit` sends the full config). One line of
    JSON, which is YAML: KFP copies defaults into the IR's comment header, and a multi-line
    default would leave uncommented lines there, so the file would no longer parse."""
    return json.dumps(load_config(profile).model_dump(mode="json", exclude_unset=True))
GPU = "nvidia.com/gpu"
RETRIES = 2  # steps are idempotent (a retry overwrites its outputs): retry lost nodes and OOMs
BACKOFF = "60s"  # doubles on each retry
# Each task's `pipeline_key` is the pipeline parameter `run_group`: a non-empty value groups
# the run's step runs under one MLflow parent run, `kfp:<run_group>`. It is not the KFP run's
# id (dsl.PIPELINE_JOB_ID_PLACEHOLDER) because a task input is part of KFP's cache key: a new
# value every run would end cache hits across runs. `flagops kfp submit --group-runs` sets a
# fresh group per submission; "" (the default, and every scheduled run) logs top-level runs.


def configure(task: dsl.PipelineTask, step: catalog.Step) -> dsl.PipelineTask:
    """Resources, retries and caching for ``step``'s task, all derived from the catalog."""
    res = step.resources
    task.set_cpu_request(res.cpu).set_cpu_limit(res.cpu)
    task.set_memory_request(res.memory).set_memory_limit(res.memory)
    if res.gpus:
        task.set_accelerator_type(GPU).set_accelerator_limit(res.gpus)
    task.set_retry(RETRIES, backoff_duration=BACKOFF)
    # A record describes MLflow state (a registration, an alias): a cache hit would skip the change.
    task.set_caching_options(enable_caching=not any(a.kind == "record" for a in step.outputs))
    return task


def build(kind: str):
    """The pipeline of model kind ``kind``: the catalog's DAG; returns the evaluation metrics."""
    name, profile, _ = KINDS[kind]
    steps = catalog.pipeline(kind)

    @dsl.pipeline(name=name, description=f"flagops retraining DAG ({kind}): corpus to champion, one task per catalog step.")
    def retrain(params: str = default_params(profile), tracking_uri: str = "", run_group: str = "") -> dsl.Metrics:
        """The catalog's DAG for this kind; returns the evaluation metrics.

        Args:
            params: The FlagopsConfig as YAML (JSON is YAML); default: the kind's demo profile.
            tracking_uri: The MLflow store the steps log to; "" keeps the config's.
            run_group: Non-empty: the step runs nest under one MLflow parent run,
                `kfp:<run_group>` (see above for why it is not the run id).
        """
        built = components.load()
        produced = {}
        common = {"params": params, "tracking_uri": tracking_uri, "pipeline_key": run_group}  # components.PARAMETERS
        for step in steps:
            task = built[step.name](**common, **{n: produced[n] for n in step.inputs})
            configure(task, step)
            produced.update({a.name: task.outputs[a.name] for a in step.outputs})
        # The evaluation metrics are the pipeline's output: the run page shows them, a caller gets them.
        return next(produced[a.name] for s in steps for a in s.outputs if a.kind == "metrics")

    return retrain


retrain = build("bge")


def compile_to(path: str | Path = PACKAGE, kind: str = "bge") -> Path:
    compiler.Compiler().compile(build(kind), str(path))
    return Path(path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Compile the retraining pipelines to KFP IR YAML.")
    parser.add_argument("--kind", choices=list(KINDS), help="one kind only (default: all, to their committed paths)")
    parser.add_argument("-o", "--output", help="with --kind: where to write (default: its committed path)")
    args = parser.parse_args()
    for kind in [args.kind] if args.kind else list(KINDS):
        print(f"wrote {compile_to(args.output or KINDS[kind][2], kind)}")
