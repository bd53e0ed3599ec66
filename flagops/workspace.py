"""Workspaces: one folder per profile (``runs/<profile>``) holding its own DVC pipeline,
params, MLflow store and outputs, so the tiny smoke run never touches the demo's results.

``run_pipeline`` renders ``dvc.yaml`` and ``params.yaml`` into the workspace and runs
``dvc repro`` under one MLflow parent run (``flagops.demo`` then serves the champion).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flagops.config import FlagopsConfig, load_config, to_yaml


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

    cfg = load_config(profile, overrides)  # first: a bad profile leaves no empty workspace behind
    workdir = workdir or default_workdir(profile)
    workdir.mkdir(parents=True, exist_ok=True)
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
