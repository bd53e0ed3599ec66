"""The one place flagops talks to MLflow tracking: URIs, the parent run, one nested run per step.

DVC runs each stage as its own process, so the pipeline's parent run id travels in the
environment variable ``FLAGOPS_PARENT_RUN_ID``; each step opens a nested run under it.

Importing this module changes nothing and loads no MLflow: ``configure_env`` sets flagops'
MLflow defaults (telemetry off) and every function here that uses MLflow calls it first.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# flagops' MLflow defaults; a value already in the environment wins.
MLFLOW_ENV_DEFAULTS = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
PARENT_ENV = "FLAGOPS_PARENT_RUN_ID"
# Orchestrators that cannot hand a run id from task to task (Airflow, KFP) pass a key that
# names the pipeline execution instead; the first step creates the parent run for it.
PIPELINE_KEY_ENV = "FLAGOPS_PIPELINE_KEY"
DEFAULT_DB = "mlflow.db"
TEXT_LIMIT = 5000  # chars; model-version descriptions and registry tags are VARCHAR(5000) on SQL stores


def configure_env() -> None:
    """Set ``MLFLOW_ENV_DEFAULTS`` where unset, before MLflow is used; calling it again changes nothing.

    mlflow makes its telemetry client when it is first imported. If that happened before this
    call (a module that imports mlflow at the top), the client is made again from the
    environment now in place, which with telemetry off means none.
    """
    for name, value in MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if "mlflow.telemetry" in sys.modules:
        from mlflow.telemetry import get_telemetry_client, set_telemetry_client
        from mlflow.telemetry.utils import is_telemetry_disabled

        if is_telemetry_disabled() and get_telemetry_client() is not None:
            set_telemetry_client()


# A URI's userinfo password (``http://user:PASSWORD@host``): MLflow sends it as basic auth, and
# it must reach no log, message or manifest.
USERINFO_PASSWORD = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)([^/@:\s]*):([^/\s]*)@")


def redact_uri(text: str) -> str:
    """``text`` with the password of every URI in it masked: ``http://bob:***@host:5000``."""
    return USERINFO_PASSWORD.sub(r"\1\2:***@", text)


def unreachable_message(exc: BaseException) -> str | None:
    """One line for MLflow's "the tracking server did not answer, retries spent"; None for any other error.

    MLflow's own message is a multi-line traceback's last line that repeats the URL, password included.
    """
    errors = sys.modules.get("mlflow.exceptions")
    text = str(exc)
    if errors is None or not isinstance(exc, errors.MlflowException) or not re.search(r"API request to \S+ failed with exception", text):
        return None
    status = re.search(r"too many (\d+) error responses", text)
    refused = re.search(r"\[Errno \d+\] ([^\"')]+)", text)
    reason = f"HTTP {status.group(1)} each time" if status else refused.group(1).lower() if refused else "no answer"
    if "timed out" in text and not status:
        reason = "timed out"
    uri = redact_uri(sys.modules["mlflow"].get_tracking_uri())
    return (
        f"MLflow tracking server {uri} unreachable ({reason}) after MLflow's retries: start it, or point "
        "registry.tracking_uri / $MLFLOW_TRACKING_URI at a running one (patience: MLFLOW_HTTP_REQUEST_MAX_RETRIES, "
        "MLFLOW_HTTP_REQUEST_TIMEOUT)"
    )


def _mlflow():
    """The mlflow module, imported after ``configure_env``."""
    configure_env()
    import mlflow

    return mlflow


def tracking_uri(registry_cfg, workdir: str | Path = ".") -> str:
    """Config, then $MLFLOW_TRACKING_URI, then sqlite under the workspace (4 slashes: absolute)."""
    if registry_cfg.tracking_uri:
        return registry_cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(workdir) / DEFAULT_DB).resolve()}"


def artifact_location(uri: str) -> str | None:
    """Local artifact root beside a sqlite store's file; None lets a remote server decide."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def setup(registry_cfg, workdir: str | Path = ".") -> str:
    """Point mlflow at the store and experiment; return the experiment id."""
    mlflow = _mlflow()
    uri = tracking_uri(registry_cfg, workdir)
    if redact_uri(uri) != uri:  # MLflow prints "View run at: URI..." after each run, password and all
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.get_experiment_by_name(registry_cfg.experiment)
    if exp is None:
        try:
            return mlflow.create_experiment(registry_cfg.experiment, artifact_location=artifact_location(uri))
        except mlflow.exceptions.MlflowException as e:  # a pipeline started at the same moment made it first
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = mlflow.get_experiment_by_name(registry_cfg.experiment)
    return exp.experiment_id


def flat_params(obj: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, name + "."))
        else:
            out[name] = redact_uri(str(value))[:500]  # registry.tracking_uri may carry a password
    return out


def mlflow_key(key: str) -> str:
    """MLflow metric names allow [/\\w.- :]; `ndcg@10` becomes `ndcg_at_10`."""
    return key.replace("@", "_at_")


@contextlib.contextmanager
def pipeline_run(cfg, name: str, workdir: str | Path = ".") -> Iterator[str]:
    """Open the parent run for one pipeline execution and export its id to child processes."""
    experiment_id = setup(cfg.registry, workdir)
    mlflow = _mlflow()
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        mlflow.set_tags({"flagops.profile": cfg.profile, "flagops.kind": "pipeline"})
        with exported(PARENT_ENV, run.info.run_id):
            yield run.info.run_id


@contextlib.contextmanager
def exported(name: str, value: str | None) -> Iterator[None]:
    """Environment variable ``name`` is ``value`` inside the block (None: left as it is), then as before."""
    previous = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def parent_for_key(experiment_id: str, cfg, key: str | None) -> str | None:
    """The parent run of the pipeline execution named ``key``, created on first use."""
    if not key:
        return None
    client = _mlflow().MlflowClient()
    safe = key.replace("'", "")
    found = client.search_runs([experiment_id], filter_string=f"tags.`flagops.pipeline_key` = '{safe}'", max_results=1)
    if found:
        return found[0].info.run_id
    tags = {"flagops.kind": "pipeline", "flagops.pipeline_key": safe, "flagops.profile": cfg.profile}
    run = client.create_run(experiment_id, run_name=safe, tags=tags)
    client.set_terminated(run.info.run_id)  # a container for the step runs, open or not
    return run.info.run_id


@contextlib.contextmanager
def step_run(cfg, step_name: str, sections: tuple[str, ...], workdir: str | Path = ".") -> Iterator[Any]:
    """A run for one step, nested under the pipeline's parent run when there is one."""
    experiment_id = setup(cfg.registry, workdir)
    mlflow = _mlflow()
    parent = os.environ.get(PARENT_ENV) or parent_for_key(experiment_id, cfg, os.environ.get(PIPELINE_KEY_ENV))
    tags = {"flagops.step": step_name, "flagops.profile": cfg.profile}
    if parent:
        tags["mlflow.parentRunId"] = parent
    nested = mlflow.active_run() is not None  # in-process under pipeline_run (KFP local, tests)
    with mlflow.start_run(experiment_id=experiment_id, run_name=step_name, tags=tags, nested=nested) as run:
        dumped = cfg.model_dump(mode="json")
        mlflow.log_params(flat_params({s: dumped[s] for s in sections}))
        yield run


@contextlib.contextmanager
def ensure_run(cfg, step_name: str) -> Iterator[Any]:
    """The active run (``execute`` opens one per step), else a new step run of our own."""
    active = _mlflow().active_run()
    if active is not None:
        yield active
        return
    with step_run(cfg, step_name, ()) as run:
        yield run


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    mlflow = _mlflow()
    if mlflow.active_run() is not None:
        mlflow.log_metrics({mlflow_key(k): float(v) for k, v in metrics.items()}, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    mlflow = _mlflow()
    if mlflow.active_run() is not None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def suite_key(model: str, task: str, metric: str) -> str:
    """``flagops eval``'s metric name for one model, task and metric; characters MLflow refuses
    (the brackets of ``[hybrid]``, a source's ``~``) become ``_``; a directory source is its name."""
    return re.sub(r"[^\w/.\- :]", "_", mlflow_key(f"{Path(model).name}/{task}/{metric}"))


def log_suite(experiment: str, rows: list[dict[str, Any]], means: list[dict[str, Any]], artifacts: list[Path]) -> str:
    """One MLflow run for a ``flagops eval``: every row's metrics, the averages, and the files
    (the JSON, the report); the store is $MLFLOW_TRACKING_URI, else ./mlflow.db. Returns the run id."""
    from flagops.config import RegistryConfig

    mlflow = _mlflow()
    experiment_id = setup(RegistryConfig(experiment=experiment))
    with mlflow.start_run(experiment_id=experiment_id, run_name="flagops eval") as run:
        mlflow.set_tags({"flagops.kind": "eval"})
        models, tasks = (", ".join(dict.fromkeys(r[k] for r in rows))[:500] for k in ("model", "task"))
        mlflow.log_params({"models": models, "tasks": tasks})
        metrics = {suite_key(r["model"], r["task"], name): v for r in rows for name, v in r["metrics"].items()}
        metrics |= {suite_key(m["model"], f"{m['type']}_average", "main"): m["average"] for m in means}
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        for path in artifacts:
            mlflow.log_artifact(str(path))
        return run.info.run_id
