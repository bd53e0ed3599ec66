"""Secrets: a tracking URI that carries a password never shows in logs, MLflow or manifests.

The store is a real ``mlflow server`` behind a front that demands HTTP basic auth
(``ci:PASSWORD``) and refuses anything else with 401: the URI
``http://ci:PASSWORD@127.0.0.1:PORT`` reaches it only because MLflow sends the userinfo as
basic auth, which the test checks (every request authorised, none refused). With that URI
in ``$MLFLOW_TRACKING_URI`` the test runs flagops, then looks for the password in:

* every line flagops printed (stdout and stderr of each command, DVC stages included);
* every experiment, run (name, params, tags), registered model and model version (tags,
  description, source, run link, aliases) in the store;
* every file the runs wrote: the workspace (params, DVC lock, outputs, the rendered
  InferenceService) and the artifacts the server keeps;
* the manifests rendered from the store: ``flagops deploy render`` and
  ``flagops train submit-pytorchjob --dry-run``.

``test_a_full_tiny_run_leaks_no_password`` runs ``flagops pipeline --profile tiny`` (minutes on
2 busy cores: ``-m long``). ``test_registry_steps_and_manifests_leak_no_password`` is the
fast version in ``make test``: the evaluate, register, promote and deploy steps on a tiny
model, tracked, then the manifests. A last case reads a failing command's message.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.mlflow_helpers import Serving, proxy_handler, start_mlflow_server

PASSWORD = "s3cr3t-XYZ-7q"  # unique enough that any match is a leak
USER = "ci"
REPO = Path(__file__).resolve().parents[2]
EXPECTED_AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


class Guarded:
    """The server behind basic auth, and what the front saw."""

    def __init__(self, server):
        self.server = server
        self.authorised = 0
        self.refused: list[str] = []

    def check(self, request) -> int | None:
        if request.headers.get("Authorization") == EXPECTED_AUTH:
            self.authorised += 1
            return None
        self.refused.append(f"{request.command} {request.path}")
        return 401


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-secrets"))
    g = Guarded(server)
    with Serving(proxy_handler(server.url, g.check)) as front:
        g.uri = front.url.replace("://", f"://{USER}:{PASSWORD}@")
        yield g
    server.stop()


def flagops(guarded: Guarded, *args: str, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """`flagops ARGS` against the guarded store; its output is checked for the password here."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": guarded.uri}
    env.pop("FLAGOPS_PARENT_RUN_ID", None)
    proc = subprocess.run([sys.executable, "-m", "flagops.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert PASSWORD not in proc.stdout + proc.stderr, f"flagops {' '.join(args)} printed the password"
    return proc


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


def store_text(url: str) -> tuple[str, dict[str, int]]:
    """Everything the store holds about runs and models, as one text; and counts, to show it is not empty."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(url, url)
    parts: list = []
    counts = {"runs": 0, "params": 0, "tags": 0, "versions": 0}
    for exp in client.search_experiments(view_type=ViewType.ALL):
        parts += [exp.name, exp.artifact_location, exp.tags]
        for run in client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=10000):
            parts += [run.info.run_name, run.info.artifact_uri, run.data.params, run.data.tags, sorted(run.data.metrics)]
            counts["runs"] += 1
            counts["params"] += len(run.data.params)
            counts["tags"] += len(run.data.tags)
    for rm in client.search_registered_models():
        parts += [rm.name, rm.description, rm.tags, rm.aliases]
        for mv in client.search_model_versions(f"name='{rm.name}'"):
            parts += [mv.source, mv.run_link, mv.description, mv.tags, mv.aliases, mv.run_id]
            counts["versions"] += 1
    return json.dumps(parts, default=str), counts


def files_holding_the_password(*roots: Path) -> list[str]:
    hits = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and PASSWORD.encode() in path.read_bytes():
                hits.append(str(path))
    return hits


def check_store_and_files(guarded: Guarded, *roots: Path, versions: int) -> None:
    text, counts = store_text(guarded.server.url)
    assert PASSWORD not in text, "the password is in the MLflow store"
    assert counts["runs"] >= 3 and counts["params"] > 0 and counts["tags"] > 0 and counts["versions"] >= versions, counts
    assert files_holding_the_password(guarded.server.artifacts, *roots) == []
    assert guarded.refused == [] and guarded.authorised > 0, guarded.refused[:5]


def render_manifests(guarded: Guarded, tmp: Path) -> list[str]:
    """The champion's InferenceService and the training PyTorchJob, rendered from the store."""
    mapped = f"deploy.artifacts_destination=s3://flagops-mlflow/{guarded.server.artifacts.name}"
    isvc = ok(flagops(guarded, "deploy", "render", "--profile", "tiny", mapped, cwd=tmp)).stdout
    job = ok(flagops(guarded, "train", "submit-pytorchjob", "--profile", "tiny", "--dry-run", cwd=tmp)).stdout
    assert "kind: InferenceService" in isvc and "kind: PyTorchJob" in job
    return [isvc, job]


@pytest.mark.long
def test_a_full_tiny_run_leaks_no_password(guarded, tmp_path):
    workdir = tmp_path / "ws"
    ok(flagops(guarded, "pipeline", "--profile", "tiny", "--workdir", str(workdir), cwd=tmp_path))
    assert "kind: InferenceService" in (workdir / "deploy" / "inferenceservice.yaml").read_text()  # deploy_model's dry run
    manifests = render_manifests(guarded, tmp_path)
    assert not any(PASSWORD in m for m in manifests)
    check_store_and_files(guarded, workdir, versions=1)


@pytest.fixture(scope="module")
def step_inputs(tmp_path_factory):
    """A tiny model, its eval set and training data, made untracked (what the fast case starts from)."""
    from flagops.models.embedder import Embedder

    root = tmp_path_factory.mktemp("secret-inputs")
    Embedder.load("tiny-bert").save(root / "model")
    untracked = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'untracked.db'}"}
    for args in (
        ["build_corpus", "--out", f"corpus={root / 'corpus.jsonl'}"],
        ["synthesize_queries", "--in", f"corpus={root / 'corpus.jsonl'}"]
        + ["--out", f"train_pairs={root / 'pairs.jsonl'}", "--out", f"eval_set={root / 'eval'}"],
        ["mine_hard_negatives", "--in", f"train_pairs={root / 'pairs.jsonl'}", "--out", f"train_data={root / 'train.jsonl'}"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "flagops.cli", "step", args[0], "--profile", "tiny", "--no-track", *args[1:]],
            env={**os.environ, "PYTHONPATH": str(REPO), **untracked},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_registry_steps_and_manifests_leak_no_password(guarded, step_inputs, tmp_path):
    ws = tmp_path / "ws"
    i, o = step_inputs, ws

    def step(name: str, *io: str) -> None:
        ok(flagops(guarded, "step", name, "--profile", "tiny", *io, cwd=tmp_path))

    step("evaluate", "--in", f"model={i / 'model'}", "--in", f"eval_set={i / 'eval'}", "--out", f"metrics={o / 'metrics.json'}")
    in_config = f"registry.tracking_uri={guarded.uri}"  # here in the params these steps log, not the environment
    step(
        "register_model",
        in_config,
        *("--in", f"model={i / 'model'}", "--in", f"metrics={o / 'metrics.json'}", "--in", f"train_data={i / 'train.jsonl'}"),
        *("--out", f"registration={o / 'registration.json'}"),
    )
    step("promote_model", in_config, "--in", f"registration={o / 'registration.json'}", "--out", f"promotion={o / 'promotion.json'}")
    mapped = f"deploy.artifacts_destination=s3://flagops-mlflow/{guarded.server.artifacts.name}"
    step(
        "deploy_model",
        "--in",
        f"promotion={o / 'promotion.json'}",
        *("--out", f"inference_service={o / 'isvc.yaml'}", "--out", f"deployment={o / 'deployment.json'}", mapped),
    )
    assert "kind: InferenceService" in (o / "isvc.yaml").read_text()
    manifests = render_manifests(guarded, tmp_path)
    assert not any(PASSWORD in m for m in manifests)
    check_store_and_files(guarded, ws, versions=1)
    assert f"{USER}:***@" in store_text(guarded.server.url)[0], "registry.tracking_uri was not logged (masked)"


def test_a_failing_command_names_the_store_without_the_password(guarded, tmp_path):
    proc = flagops(guarded, "deploy", "render", "--profile", "tiny", "registry.model_name=no-such-model", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"{USER}:***@" in proc.stderr and "no-such-model has no @champion" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (f"http://{USER}:{PASSWORD}@mlflow:5000", f"http://{USER}:***@mlflow:5000"),
        (f"https://:{PASSWORD}@mlflow.example/api", "https://:***@mlflow.example/api"),
        (f"postgresql://mlflow:{PASSWORD}@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        (f"refused: http://u:{PASSWORD}@h:1/a and s3://k:{PASSWORD}@b/x", "refused: http://u:***@h:1/a and s3://k:***@b/x"),
        ("http://user@mlflow:5000", "http://user@mlflow:5000"),  # no password, nothing to mask
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ],
)
def test_redact_uri(uri, shown):
    from flagops.registry.tracking import flat_params, redact_uri

    assert redact_uri(uri) == shown
    assert flat_params({"registry": {"tracking_uri": uri}}) == {"registry.tracking_uri": shown}
