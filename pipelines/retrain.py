"""The retraining pipeline on Kubeflow: one task per catalog step, wired by its artifacts.

Compile it to the committed IR (a test fails when pipelines/retrain.yaml is stale):
    make kfp-compile        (or: python -m pipelines.retrain [-o FILE])
Submit or schedule the IR with `flagops kfp submit|schedule` (flagops/kfp_client.py).
"""

import argparse
import json
from pathlib import Path

from kfp import compiler, dsl

import components
from flagops import catalog
from flagops.config import load_config

NAME = "flagops-retrain"
PACKAGE = Path(__file__).with_name("retrain.yaml")
# The demo profile as set in its file, so config fields added later keep their defaults and
# leave the committed IR fresh (`flagops kfp submit` sends the full config). One line of JSON,
# which is YAML: KFP copies defaults into the IR's comment header, and a multi-line default
# would leave uncommented lines there, so the file would no longer parse.
DEFAULT_PARAMS = json.dumps(load_config("demo").model_dump(mode="json", exclude_unset=True))
GPU = "nvidia.com/gpu"
RETRIES = 2  # steps are idempotent (a retry overwrites its outputs): retry lost nodes and OOMs
BACKOFF = "60s"  # doubles on each retry


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


@dsl.pipeline(name=NAME, description="flagops retraining DAG: corpus to champion, one task per catalog step.")
def retrain(params: str = DEFAULT_PARAMS, tracking_uri: str = "") -> dsl.Metrics:
    """The catalog's DAG; returns the evaluation metrics.

    Args:
        params: The FlagopsConfig as YAML (JSON is YAML); default: the demo profile.
        tracking_uri: The MLflow store the steps log to; "" keeps the config's.
    """
    built = components.load()
    produced = {}
    for step in catalog.STEPS:
        task = built[step.name](params=params, tracking_uri=tracking_uri, **{n: produced[n] for n in step.inputs})
        configure(task, step)
        produced.update({a.name: task.outputs[a.name] for a in step.outputs})
    # The evaluation metrics are the pipeline's output: the run page shows them, a caller gets them.
    return next(produced[a.name] for s in catalog.STEPS for a in s.outputs if a.kind == "metrics")


def compile_to(path: str | Path = PACKAGE) -> Path:
    compiler.Compiler().compile(retrain, str(path))
    return Path(path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Compile the retraining pipeline to KFP IR YAML.")
    parser.add_argument("-o", "--output", default=str(PACKAGE), help=f"default: {PACKAGE}")
    print(f"wrote {compile_to(parser.parse_args().output)}")
