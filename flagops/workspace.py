"""Workspaces: one folder per profile (``runs/<profile>``) holding its own DVC pipeline,
params, MLflow store and outputs, so the tiny smoke run never touches the demo's results.

``run_pipeline`` renders ``dvc.yaml`` and ``params.yaml`` into the workspace and runs
``dvc repro`` under one MLflow parent run. ``run_demo`` then serves the champion through
KServe, embeds two queries over HTTP and prints the summary.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from flagops.config import FlagopsConfig, load_config, to_yaml
from flagops.data.formats import read_json

SAMPLE_QUERIES = ["How do I parse a JSON document into a Python object?", "Run a coroutine until it completes."]


def default_workdir(profile: str) -> Path:
    return Path("runs") / profile


def _env(workdir: Path, cfg: FlagopsConfig) -> dict[str, str]:
    from flagops.registry import tracking

    env = dict(os.environ)
    # Stages call `flagops`; make sure it is this interpreter's.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["MLFLOW_TRACKING_URI"] = tracking.tracking_uri(cfg.registry, workdir)
    return env


def prepare(profile: str, workdir: Path | None, overrides=()) -> tuple[FlagopsConfig, Path]:
    from flagops.dvc import PACKAGE, render_text

    workdir = workdir or default_workdir(profile)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = load_config(profile, overrides)
    # Stages depend on the installed flagops code by absolute path: editing a loss re-runs training onward.
    (workdir / "dvc.yaml").write_text(render_text(cfg, code_root=str(PACKAGE.parent)))
    header = f"# Rendered from profile {profile!r} by `flagops pipeline --profile {profile}`.\n"
    (workdir / "params.yaml").write_text(header + to_yaml(cfg))
    if not (workdir / ".dvc").is_dir():
        subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=workdir, check=True)
        subprocess.run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], cwd=workdir, check=True)
    return cfg, workdir


def run_pipeline(profile: str, workdir: Path | None = None, overrides=()) -> int:
    from flagops.registry import tracking

    cfg, workdir = prepare(profile, workdir, overrides)
    print(f"flagops: running the retraining DAG for profile {profile!r} in {workdir}/ (dvc repro)")
    with tracking.pipeline_run(cfg, f"retrain-{profile}", workdir) as parent:
        env = _env(workdir, cfg) | {tracking.PARENT_ENV: parent}
        done = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=workdir, env=env)
    if done.returncode != 0:
        print(f"flagops: dvc repro failed (exit {done.returncode}); see the stage output above", file=sys.stderr)
    return done.returncode


# --------------------------------------------------------------------------- demo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server was not ready at {url} after {timeout:.0f} s")


class SmokeResult(NamedTuple):
    vectors: list[list[float]]  # one dense vector per sample query, from /v1/embeddings
    lexical: list[tuple[str, float]] | None  # M3: the first query's heaviest tokens, from V1 return_sparse


def smoke_serve(model_uri: str, cfg: FlagopsConfig, workdir: Path) -> SmokeResult:
    """Start `flagops serve` on a free loopback port, embed SAMPLE_QUERIES via /v1/embeddings
    (and, for an M3 model, ask V1 for the first query's lexical weights), stop."""
    import httpx

    port = free_port()
    name = cfg.serve.model_name
    cmd = [sys.executable, "-m", "flagops.serving.server", "--model", model_uri, "--host", "127.0.0.1", "--port", str(port), "--name", name]
    proc = subprocess.Popen(cmd, env=_env(workdir, cfg), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", proc)
        body = {"model": name, "input": SAMPLE_QUERIES}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json=body, timeout=60.0)
        r.raise_for_status()
        vectors = [row["embedding"] for row in r.json()["data"]]
        lexical = None
        if cfg.model.kind == "m3":
            body = {"instances": SAMPLE_QUERIES[:1], "is_query": True, "return_dense": False, "return_sparse": True}
            r = httpx.post(f"http://127.0.0.1:{port}/v1/models/{name}:predict", json=body, timeout=60.0)
            r.raise_for_status()
            sparse = r.json()["predictions"][0]["sparse"]
            lexical = list(zip(sparse["tokens"], sparse["values"], strict=True))[:5]  # heaviest first
        return SmokeResult(vectors, lexical)
    except RuntimeError:
        proc.terminate()
        print((proc.communicate(timeout=30)[1] or "")[-3000:], file=sys.stderr)
        raise
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def print_summary(cfg: FlagopsConfig, workdir: Path, served: SmokeResult, model_uri: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from flagops.evaluation.plots import result_rows

    metrics = read_json(workdir / "metrics/eval.json")
    promotion = read_json(workdir / "registry/promotion.json")
    table = Table(title=f"Held-out retrieval ({cfg.profile} profile)")
    table.add_column("system")
    for m in ("ndcg@10", "mrr@10", "recall@100"):
        table.add_column(m, justify="right")
    for label, prefix in result_rows(metrics):
        table.add_row(label, *(f"{metrics[f'{prefix}/{m}']:.4f}" for m in ("ndcg@10", "mrr@10", "recall@100")))
    console = Console(soft_wrap=True)
    console.print(table)
    delta = metrics.get("candidate/ndcg@10", 0.0) - metrics.get("base/ndcg@10", 0.0)
    console.print(f"candidate vs base nDCG@10: {delta:+.4f}")
    console.print(
        f"registered: [bold]{promotion['name']}[/] version {promotion['version']} -> alias "
        f"[bold]{promotion['alias']}[/] ({'; '.join(promotion.get('reasons', []))})"
    )
    vectors = served.vectors
    dims = len(vectors[0]) if vectors else 0
    console.print(f"served {model_uri} through KServe: {len(vectors)} queries -> {dims}-dim embeddings, e.g. {[round(v, 4) for v in vectors[0][:3]]}")
    if served.lexical is not None:
        weights = ", ".join(f"{token!r} {w:.3f}" for token, w in served.lexical)
        console.print(f"  and lexical weights (return_sparse) of {SAMPLE_QUERIES[0]!r}: {weights}", markup=False)
    if cfg.model.kind == "m3":
        call = (
            f"/v1/models/{cfg.serve.model_name}:predict -d '{{\"instances\": [\"how do I parse JSON?\"], "
            '"is_query": true, "return_sparse": true, "return_colbert": true}\''
        )
    else:
        call = f"/v1/embeddings -d '{{\"model\": \"{cfg.serve.model_name}\", \"input\": [\"how do I parse JSON?\"]}}'"
    uri = f"sqlite:///{(workdir / 'mlflow.db').resolve()}"
    print(
        "\nServe it again:   make serve" + (f" PROFILE={cfg.profile}" if cfg.profile != "demo" else "")
        + f"\n  (= MLFLOW_TRACKING_URI={uri} flagops serve --model {model_uri})"
        + "\nThen, in another shell:\n"
        + f"  curl -s -H 'Content-Type: application/json' http://127.0.0.1:{cfg.serve.port}{call}"
        + f"\nMLflow UI:        mlflow ui --backend-store-uri {uri}"
        + f"\nPlots:            (cd {workdir} && dvc plots show)    Metrics: (cd {workdir} && dvc metrics show)"
    )


def run_demo(profile: str, workdir: Path | None = None, overrides=()) -> int:
    started = time.perf_counter()
    workdir = workdir or default_workdir(profile)
    code = run_pipeline(profile, workdir, overrides)
    if code != 0:
        return code
    cfg = load_config(workdir / "params.yaml")
    model_uri = f"models:/{cfg.registry.model_name}@champion"
    print(f"flagops: serving {model_uri} on 127.0.0.1 for a smoke request")
    served = smoke_serve(model_uri, cfg, workdir)
    print_summary(cfg, workdir, served, model_uri)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    return 0
