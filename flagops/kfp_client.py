"""Submit or schedule the compiled retraining pipeline on a Kubeflow Pipelines server.

    flagops kfp submit   --host URL [--profile P | --params F] [section.key=value ...]
    flagops kfp schedule --host URL --cron "0 3 * * *" [--profile P | --params F] ...

Both upload the config's compiled pipeline, ``pipelines/<profile>.yaml`` (``make kfp-compile``),
to the pipeline it names (``flagops-<profile>``): the first upload creates it, later ones add a
version named by the IR's content hash (the same IR reuses its version). The IR is the one
whose DAG is the config's: a config whose branches match no shipped profile needs its own
(``python -m pipelines.retrain --params F -o FILE``, then ``--package FILE``). Then they create
a run or a recurring run in an experiment. The config travels as the ``params`` pipeline
argument: the full FlagopsConfig as YAML, so a run records every value.

A face module: kfp is imported only inside the functions that talk to the server, and no
flagops module imports components/ or pipelines/ (this reads the compiled IR file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flagops.config import ConfigError, load_config, to_yaml

PIPELINES_DIR = Path("pipelines")  # the committed IRs, one per shipped profile (relative to the repo root)
EXPERIMENT = "flagops"


def connect(host: str | None, namespace: str | None = None):
    """A ``kfp.Client``; ``host`` None falls back to $KF_PIPELINES_ENDPOINT, then kube config."""
    import kfp

    with warnings.catch_warnings():  # "only works with KFP v2.0.0-beta.2 and later": so do we
        warnings.filterwarnings("ignore", "This client only works", FutureWarning)
        return kfp.Client(host=host, namespace=namespace or "kubeflow")


def arguments(cfg, tracking_uri: str = "", run_group: str = "") -> dict[str, str]:
    """The pipeline's parameters: the config as YAML, the MLflow store ("" keeps the config's)
    and the MLflow parent-run group ("": none; see pipelines/retrain.py)."""
    return {"params": to_yaml(cfg), "tracking_uri": tracking_uri, "run_group": run_group}


def kfp_cron(expr: str) -> str:
    """KFP's scheduler takes 6 cron fields, seconds first; a 5-field expression gets second 0."""
    fields = expr.split()
    if len(fields) == 5:
        fields.insert(0, "0")
    if len(fields) != 6:
        raise ConfigError(f"cron {expr!r}: expected 5 fields (min hour day month weekday) or 6 (seconds first)")
    return " ".join(fields)


def _filter(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def _package(path: str | Path) -> Path:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no compiled pipeline; run `make kfp-compile` first")
    return Path(path)


def pipeline_name(package: str | Path) -> str:
    """The pipeline name compiled into an IR (``pipelineInfo.name``)."""
    import yaml

    docs = list(yaml.safe_load_all(_package(package).read_text(encoding="utf-8")))
    return docs[0]["pipelineInfo"]["name"]


def package_for(cfg) -> Path:
    """The committed IR whose DAG is ``cfg``'s: its own profile's first, then any shipped profile's."""
    from flagops import catalog
    from flagops.config import shipped_profiles

    wanted = catalog.pipeline(cfg)
    shipped = shipped_profiles()
    for profile in sorted(shipped, key=lambda p: p != cfg.profile):
        if catalog.pipeline(load_config(profile)) == wanted:
            return _package(PIPELINES_DIR / f"{profile}.yaml")
    raise ConfigError(
        f"no compiled pipeline runs the DAG of this config ({', '.join(wanted.names)}); compile one with "
        "`python -m pipelines.retrain --params FILE -o my.yaml` and pass --package my.yaml"
    )


def upload(client, package: str | Path, name: str | None = None) -> tuple[str, str]:
    """Upload ``package`` as a version of pipeline ``name`` (default: the IR's own; created if
    absent); return (pipeline_id, version_id)."""
    package = _package(package)
    name = name or pipeline_name(package)
    version = f"{name}-{hashlib.sha256(package.read_bytes()).hexdigest()[:12]}"
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:  # the first upload creates the pipeline and its first version
        pipeline_id = client.upload_pipeline(str(package), pipeline_name=name).pipeline_id
        found = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc").pipeline_versions
    else:
        found = client.list_pipeline_versions(pipeline_id, filter=_filter(version)).pipeline_versions
    if found:
        return pipeline_id, found[0].pipeline_version_id
    created = client.upload_pipeline_version(str(package), version, pipeline_id=pipeline_id)
    return pipeline_id, created.pipeline_version_id


def submit(client, package, params: dict[str, str], *, experiment=EXPERIMENT, name=None, pipeline_root=None) -> str:
    """Upload the IR and start one run of it; return the run id."""
    pipeline_id, version_id = upload(client, package)
    exp = client.create_experiment(experiment)  # the existing one when the name is taken
    run = client.run_pipeline(
        exp.experiment_id,
        name or f"retrain-{time.strftime('%Y%m%d-%H%M%S')}",
        params=params,
        pipeline_id=pipeline_id,
        version_id=version_id,
        pipeline_root=pipeline_root,
    )
    return run.run_id


def schedule(
    client, package, params: dict[str, str], cron: str, *, experiment=EXPERIMENT, name=None, pipeline_root=None, max_concurrency=1
) -> str:
    """Upload the IR and run it on a cron schedule without backfill; return the recurring run id."""
    pipeline_id, version_id = upload(client, package)
    exp = client.create_experiment(experiment)
    job = client.create_recurring_run(
        exp.experiment_id,
        name or "retrain-scheduled",
        cron_expression=kfp_cron(cron),
        max_concurrency=max_concurrency,  # 1: two retrains would race for @champion
        no_catchup=True,  # a paused schedule resumes with one run, not one per missed slot
        params=params,
        pipeline_id=pipeline_id,
        version_id=version_id,
        pipeline_root=pipeline_root,
    )
    return job.recurring_run_id


def cmd_submit(args: argparse.Namespace) -> int:
    def action(client, package, params, options) -> str:
        return f"submitted run {submit(client, package, params, **options)} of {pipeline_name(package)} ({package})"

    return _call(args, action)


def cmd_schedule(args: argparse.Namespace) -> int:
    cron = kfp_cron(args.cron)  # a bad expression fails before anything is uploaded

    def action(client, package, params, options) -> str:
        job = schedule(client, package, params, cron, max_concurrency=args.max_concurrency, **options)
        return f"scheduled {pipeline_name(package)} ({package}) as recurring run {job} (cron {cron!r})"

    return _call(args, action)


def _call(args: argparse.Namespace, action: Callable[[Any, Path, dict, dict], str]) -> int:
    """Check the config and the IR, connect, act; a server or network failure is one error line."""
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if args.profile and args.params:
        raise ConfigError("give either --params FILE or --profile NAME, not both")
    group = f"{args.name or 'retrain'}-{uuid.uuid4().hex[:8]}" if getattr(args, "group_runs", False) else ""
    cfg = load_config(args.params or args.profile or "demo", args.overrides)
    params = arguments(cfg, args.tracking_uri, group)
    package = _package(args.package) if args.package else package_for(cfg)
    options = {"experiment": args.experiment, "name": args.name, "pipeline_root": args.pipeline_root}
    try:
        print(f"flagops: {action(connect(args.host, args.namespace), package, params, options)}")
    except (ApiException, HTTPError) as exc:
        where = args.host or "$KF_PIPELINES_ENDPOINT"
        print(f"flagops: error: the KFP API at {where} failed: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


def add_kfp_commands(subparsers: Any) -> None:
    """Add `flagops kfp submit|schedule` to the CLI's subparsers."""
    kfp_parser = subparsers.add_parser("kfp", help="submit or schedule the retraining pipeline on Kubeflow")
    sub = kfp_parser.add_subparsers(dest="kfp_command", required=True)
    for name, func, text in (
        ("submit", cmd_submit, "upload the profile's pipelines/<profile>.yaml and start a run"),
        ("schedule", cmd_schedule, "upload the profile's pipelines/<profile>.yaml and create a cron recurring run"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--host", help="KFP API endpoint, e.g. http://localhost:8888 (default: $KF_PIPELINES_ENDPOINT)")
        p.add_argument("--namespace", help="Kubernetes namespace (multi-user KFP)")
        p.add_argument("--package", help="compiled pipeline (default: the shipped IR whose DAG is the config's)")
        p.add_argument("--profile", help="a built-in profile (default: demo)")
        p.add_argument("--params", help="a params YAML instead of a profile")
        p.add_argument("--tracking-uri", default="", help="MLflow store the steps log to (default: the config's)")
        p.add_argument("--experiment", default=EXPERIMENT)
        p.add_argument("--name", help="run or recurring-run name")
        p.add_argument("--pipeline-root", help="artifact root, e.g. s3://bucket/flagops (default: the server's)")
        if name == "submit":
            p.add_argument(
                "--group-runs", action="store_true", help="nest the run's step runs under one MLflow parent run (KFP's cache then misses)"
            )
        if name == "schedule":
            p.add_argument("--cron", required=True, help='e.g. "0 3 * * *" (daily 03:00; 6 fields = seconds first)')
            p.add_argument("--max-concurrency", type=int, default=1)
        p.add_argument("overrides", nargs="*", metavar="section.key=value")
        p.set_defaults(func=func)
