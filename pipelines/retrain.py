"""The retraining pipelines on Kubeflow: one task per task of a profile's DAG, wired by its artifacts.

One compiled IR per shipped profile, `pipelines/<profile>.yaml`, pipeline `flagops-<profile>`
(see docs/architecture.md for why not one IR with conditions). Compile them (a test fails
when one is stale):
    make kfp-compile        (or: python -m pipelines.retrain [--profile P | --params F] [-o FILE])
Submit or schedule with `flagops kfp submit|schedule --profile P` (flagops/kfp_client.py).
`--cache-pvc NAME -o FILE` compiles one whose tasks share a PersistentVolumeClaim as the flagops
cache; submit it with `--package FILE`.
"""

import argparse
import json
import re
from pathlib import Path

from kfp import compiler, dsl, kubernetes

import components
from flagops import catalog
from flagops.config import load_config, shipped_profiles

HERE = Path(__file__).parent
GPU = "nvidia.com/gpu"
RETRIES = 2  # steps are idempotent (a retry overwrites its outputs): retry lost nodes and OOMs
BACKOFF = "60s"  # doubles on each retry
CACHE_MOUNT = "/var/cache/flagops"  # $FLAGOPS_CACHE in every pod, with --cache-pvc
# Each task's `pipeline_key` is the pipeline parameter `run_group`: a non-empty value groups
# the run's step runs under one MLflow parent run, `kfp:<run_group>`. It is not the KFP run's
# id (dsl.PIPELINE_JOB_ID_PLACEHOLDER) because a task input is part of KFP's cache key: a new
# value every run would end cache hits across runs. `flagops kfp submit --group-runs` sets a
# fresh group per submission; "" (the default, and every scheduled run) logs top-level runs.


def claim_name(text: str) -> str:
    """A PersistentVolumeClaim name: a DNS-1123 subdomain (lower-case letters, digits, '-' and '.')."""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is no PersistentVolumeClaim name; use lower-case letters, digits, '-' and '.'")
    return text


def package(profile: str) -> Path:
    """The committed IR of a shipped profile."""
    return HERE / f"{profile}.yaml"


def pipeline_name(profile: str) -> str:
    return "flagops-" + profile.replace("_", "-")


def default_params(source: str | Path) -> str:
    """The profile as set in its files, so config fields added later keep their defaults and
    leave the committed IR fresh (`flagops kfp submit` sends the full config). One line of
    JSON, which is YAML: KFP copies defaults into the IR's comment header, and a multi-line
    default would leave uncommented lines there, so the file would no longer parse."""
    return json.dumps(load_config(source).model_dump(mode="json", exclude_unset=True))


def configure(task: dsl.PipelineTask, placed: catalog.Task, cache_pvc: str | None = None) -> dsl.PipelineTask:
    """Resources, retries, caching and Secrets for a task, all derived from the catalog; with
    ``cache_pvc``, that PersistentVolumeClaim as the flagops cache ($FLAGOPS_CACHE)."""
    step = placed.step
    res = step.resources
    task.set_cpu_request(res.cpu).set_cpu_limit(res.cpu)
    task.set_memory_request(res.memory).set_memory_limit(res.memory)
    if res.gpus:
        task.set_accelerator_type(GPU).set_accelerator_limit(res.gpus)
    task.set_retry(RETRIES, backoff_duration=BACKOFF)
    # A record describes MLflow state (a registration, an alias): a cache hit would skip the change.
    task.set_caching_options(enable_caching=not any(a.kind == "record" for a in step.outputs))
    for secret, key, env in placed.env:  # optional: the pod starts without it, and the step says what is missing
        kubernetes.use_secret_as_env(task, secret, {key: env}, optional=True)
    if cache_pvc:  # models converted and checked once, passages encoded once, across pods and runs
        kubernetes.mount_pvc(task, pvc_name=cache_pvc, mount_path=CACHE_MOUNT)
        task.set_env_variable("FLAGOPS_CACHE", CACHE_MOUNT)
    return task


def build(pipe: catalog.Pipeline, name: str, params_default: str, built: dict | None = None, cache_pvc: str | None = None):
    """A KFP pipeline with one task per task of ``pipe``; returns the first metrics artifact.

    ``built`` maps step names to components (default: components/, one per catalog step).
    ``cache_pvc``: a PersistentVolumeClaim every task mounts as the flagops cache (default none:
    each pod starts with an empty one).
    """
    built = built if built is not None else components.load()
    metrics = next((t.name, a.name) for t in pipe.tasks for a in t.step.outputs if a.kind == "metrics")

    @dsl.pipeline(name=name, description=f"flagops retraining DAG ({', '.join(pipe.names)}): one task per step.")
    def retrain(params: str = params_default, tracking_uri: str = "", run_group: str = "") -> dsl.Metrics:
        """The profile's DAG; returns the evaluation metrics.

        Args:
            params: The FlagopsConfig as YAML (JSON is YAML); default: the profile's.
            tracking_uri: The MLflow store the steps log to; "" keeps the config's.
            run_group: Non-empty: the step runs nest under one MLflow parent run,
                `kfp:<run_group>` (see above for why it is not the run id).
        """
        tasks = {}
        common = {"params": params, "tracking_uri": tracking_uri, "pipeline_key": run_group}  # components.PARAMETERS
        producer = pipe.producer()
        for t in pipe.tasks:
            wired = {n: tasks[producer[art]].outputs[art] for n, art in t.inputs.items()}
            tasks[t.name] = configure(built[t.name](**common, **wired), t, cache_pvc)
        # The evaluation metrics are the pipeline's output: the run page shows them, a caller gets them.
        return tasks[metrics[0]].outputs[metrics[1]]

    return retrain


def for_config(source: str | Path, cache_pvc: str | None = None):
    """The pipeline of a profile name or params YAML, its default params that config."""
    cfg = load_config(source)
    return build(catalog.pipeline(cfg), pipeline_name(cfg.profile), default_params(source), cache_pvc=cache_pvc)


def compile_to(path: str | Path, source: str | Path, cache_pvc: str | None = None) -> Path:
    compiler.Compiler().compile(for_config(source, cache_pvc), str(path))
    return Path(path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Compile the retraining pipelines to KFP IR YAML.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--profile", help="one shipped profile only (default: all, to pipelines/<profile>.yaml)")
    group.add_argument("--params", help="a params YAML of your own (needs -o)")
    parser.add_argument("-o", "--output", help="where to write (default: pipelines/<profile>.yaml)")
    parser.add_argument(
        "--cache-pvc",
        type=claim_name,
        metavar="NAME",
        help=f"mount this PersistentVolumeClaim in every task at {CACHE_MOUNT} as the flagops cache (needs -o)",
    )
    args = parser.parse_args()
    if (args.params or args.cache_pvc) and not args.output:
        parser.error(f"{'--params' if args.params else '--cache-pvc'} needs -o FILE (the committed IRs mount no cache)")
    sources = [args.params] if args.params else [args.profile] if args.profile else shipped_profiles()
    for source in sources:
        print(f"wrote {compile_to(args.output or package(source), source, args.cache_pvc)}")
