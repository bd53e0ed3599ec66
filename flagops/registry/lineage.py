"""What a registered version records about where it came from: hashes, commit, config, metrics.

The tags are ``git_commit``, ``data_md5``, ``model_sha256``, ``config``, ``flagops.profile``,
``metrics`` (the evaluator's flat dict as JSON, read by the gate) and one tag per metric
under its MLflow-safe name (``candidate/ndcg_at_10``). Nothing here talks to MLflow.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from flagops.models.quantize import QUANT_CHECK_FILE
from flagops.registry.tracking import TEXT_LIMIT, mlflow_key

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # flagops/: its repo's commit, and shipped with each version


def file_md5(path: str | Path) -> str:
    """md5 of a file's bytes: what DVC records for a file out."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def dir_sha256(directory: str | Path) -> str:
    """Content hash of a directory: sha256 over sorted (relative path, file sha256) lines.

    The int8 check record (``QUANT_CHECK_FILE``) is left out: it describes the weights, registered
    beside them, and the same weights are the same model with or without it.
    """
    directory = Path(directory)
    h = hashlib.sha256()
    files = {p.relative_to(directory).as_posix(): p for p in directory.rglob("*") if p.is_file() and p.name != QUANT_CHECK_FILE}
    for rel in sorted(files):
        with files[rel].open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()


def git_commit(cwd: str | Path = ".") -> str:
    """$FLAGOPS_GIT_COMMIT (set when an image is built), else the commit of the working
    directory's repo, else of the repo flagops runs from (workspaces are not repos)."""
    if os.environ.get("FLAGOPS_GIT_COMMIT"):
        return os.environ["FLAGOPS_GIT_COMMIT"]
    for where in (Path(cwd), PACKAGE_DIR):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return "unknown"


def lineage_tags(
    cfg, model_dir: Path, metrics: Mapping[str, float], train_data: Path, sha: str, family: str = "embedder"
) -> dict[str, str]:
    if family == "reranker":  # its own recipe, and the teacher its data was scored with
        sections = {"reranker": cfg.reranker.model_dump(mode="json"), "teacher": cfg.teacher.model_dump(mode="json")}
    else:
        sections = {"model": cfg.model.model_dump(mode="json"), "train": cfg.train.model_dump(mode="json")}
    config = json.dumps(sections, sort_keys=True)
    return {
        "git_commit": git_commit(),
        "data_md5": file_md5(train_data),
        "model_sha256": sha,
        "config": config[:TEXT_LIMIT],
        "flagops.profile": cfg.profile,
        "flagops.family": family,
        "metrics": json.dumps(dict(metrics), sort_keys=True),
        **{mlflow_key(k): repr(float(v)) for k, v in metrics.items()},
        **merge_tags(model_dir),
    }


def merge_tags(model_dir: Path) -> dict[str, str]:
    """A merged model's lineage (merge_models' ``merge.json``): its method and each ingredient's
    source and weight, e.g. ``[{"source": "models/candidate", "weight": 0.52}, ...]``."""
    path = model_dir / "merge.json"
    if not path.is_file():
        return {}
    record = json.loads(path.read_text(encoding="utf-8"))
    ingredients = [{"source": i["source"], "weight": round(float(i["weight"]), 6)} for i in record["ingredients"]]
    return {"flagops.merge.method": str(record.get("method", "")), "flagops.merge.ingredients": json.dumps(ingredients)[:TEXT_LIMIT]}


def version_metrics(mv) -> dict[str, float]:
    """The metrics a model version was registered with (its ``metrics`` tag)."""
    return {k: float(v) for k, v in json.loads(mv.tags.get("metrics", "{}")).items()}
