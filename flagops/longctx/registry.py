"""The extended LM in the MLflow registry: the merged weights and the LoRA adapter, with lineage.

A version's artifacts are ``model/merged/`` (the HF directory KServe's Hugging Face runtime
loads: config with the new RoPE, weights, tokenizer, ``longctx.json``) and ``model/adapter/``
(peft's adapter, to apply to the base again or to stack). Its tags say where it came from:

- ``base_lm_sha256`` and ``base_lm_run`` (the train_base_lm run of this store, when there is one);
- the RoPE before and after (``longctx.rope_scaling``, ``longctx.rope_theta``, ...) and the
  extension ``longctx.factor``, read from the ``longctx.json`` extend_context wrote;
- ``data_md5`` (the corpus), ``git_commit``, ``model_sha256``, ``metrics`` (the gate reads it).

A version whose content is already registered is reused, as for the embedder. The gate is the
registry's champion/challenger rule on the ``extended/`` keys: the primary metric is
``longctx.primary_metric`` (needle ROUGE-L), the guard topic accuracy (``registry.tolerance``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from flagops.data.formats import DataError, read_json
from flagops.longctx.extend import ADAPTER_DIR, SETTINGS_FILE
from flagops.registry import aliases, tracking
from flagops.registry.lineage import dir_sha256, file_md5, git_commit
from flagops.registry.models import find_version
from flagops.registry.tracking import TEXT_LIMIT, mlflow_key

PREFIX = "extended/"  # the evaluate_long_context keys the gate compares
GUARDS = ("topic_accuracy",)
ARTIFACT = "model"
MERGED, ADAPTER = "merged", "adapter"


def check_extended(path: Path) -> dict[str, Any]:
    """The ``longctx.json`` of an extend_context output, after checking it holds what is registered."""
    missing = [n for n in ("config.json", SETTINGS_FILE, f"{ADAPTER_DIR}/adapter_config.json") if not (path / n).is_file()]
    if missing:
        raise DataError(f"{path}: not an extend_context output (no {', '.join(missing)}); pass extend_context's extended_lm")
    return read_json(path / SETTINGS_FILE)


def base_lm_run(client: MlflowClient, experiment: str) -> str | None:
    """The newest train_base_lm run in ``experiment``, or None (a base trained elsewhere)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], "tags.`flagops.step` = 'train_base_lm'", order_by=["start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def lineage_tags(cfg, settings: Mapping[str, Any], base_dir: Path, corpus: Path, metrics: Mapping[str, float], sha: str, base_run) -> dict:
    rope, original = settings["rope_parameters"], settings["original_rope_parameters"]
    return {
        "git_commit": git_commit(),
        "data_md5": file_md5(corpus),
        "model_sha256": sha,
        "base_lm_sha256": dir_sha256(base_dir),
        "base_lm_run": base_run or "none",
        "longctx.factor": str(settings["factor"]),
        "longctx.rope_scaling": settings["rope_scaling"],
        "longctx.rope_theta": repr(float(rope["rope_theta"])),
        "longctx.original_rope_theta": repr(float(original["rope_theta"])),
        "longctx.max_position_embeddings": str(settings["max_position_embeddings"]),
        "longctx.original_max_position_embeddings": str(settings["original_max_position_embeddings"]),
        "longctx.lora": json.dumps(settings["lora"], sort_keys=True),
        "config": json.dumps(cfg.longctx.model_dump(mode="json"), sort_keys=True)[:TEXT_LIMIT],
        "flagops.profile": cfg.profile,
        "flagops.family": "longctx",
        "metrics": json.dumps(dict(metrics), sort_keys=True),
        **{mlflow_key(k): repr(float(v)) for k, v in metrics.items() if k.count("/") == 1},  # not the per-cell keys
    }


def log_model(extended: Path) -> str:
    """Log ``merged/`` and ``adapter/`` under the active run's ``model``; its artifact URI."""
    with tempfile.TemporaryDirectory(prefix="flagops-longctx-") as tmp:
        merged = Path(tmp) / MERGED
        shutil.copytree(extended, merged, ignore=lambda d, names: [ADAPTER_DIR] if Path(d) == extended else [])
        mlflow.log_artifacts(str(merged), f"{ARTIFACT}/{MERGED}")
    mlflow.log_artifacts(str(extended / ADAPTER_DIR), f"{ARTIFACT}/{ADAPTER}")
    return mlflow.get_artifact_uri(ARTIFACT)


def card(name: str, version: str, settings: Mapping[str, Any], metrics: Mapping[str, float]) -> str:
    rope, lora = settings["rope_parameters"], settings["lora"]
    rows = "\n".join(
        f"| {key} | {metrics.get(f'base/{key}', float('nan')):.4f} | {metrics.get(f'extended/{key}', float('nan')):.4f} |"
        for key in ("needle_rouge_l", "needle_exact_match", "topic_accuracy", "short_ppl")
    )
    return f"""# {name} v{version}

A Llama-architecture LM whose context flagops extended {settings["factor"]}x:
{settings["original_max_position_embeddings"]} -> {settings["max_position_embeddings"]} tokens, RoPE
`{settings["rope_scaling"]}` (rope_theta {settings["original_rope_parameters"]["rope_theta"]:g} -> {rope["rope_theta"]:g}),
LoRA r {lora["r"]} alpha {lora["alpha"]:g} on {", ".join(lora["target_modules"])}.

Artifacts: `model/merged/` (serve it: KServe's Hugging Face runtime, vLLM) and `model/adapter/` (peft).

| metric | base | extended |
|---|---|---|
{rows}
"""


def register(cfg, extended: Path, base_dir: Path, metrics: Mapping[str, float], corpus: Path) -> dict[str, Any]:
    """Register ``extended`` as ``longctx.model_name`` (or reuse the version with its content) and gate it.
    Needs an active run; returns the registration and the promotion in one record."""
    tracking.configure_env()
    extended, base_dir = Path(extended), Path(base_dir)
    settings = check_extended(extended)
    if f"{PREFIX}{cfg.longctx.primary_metric}" not in metrics:
        raise DataError(f"the metrics lack {PREFIX}{cfg.longctx.primary_metric}; pass evaluate_long_context's longctx_metrics")
    name, client = cfg.longctx.model_name, MlflowClient()
    sha = dir_sha256(extended)
    tracking.log_metrics({k: v for k, v in metrics.items() if k.count("/") <= 1})
    existing = find_version(client, name, sha)
    if existing is not None:
        mlflow.set_tag("flagops.reused_version", existing.version)
        print(f"register_long_context: {name} v{existing.version} already holds this model (sha256 {sha[:12]}); reusing it")
        version, reused = existing, True
    else:
        source = log_model(extended)
        tags = lineage_tags(cfg, settings, base_dir, corpus, metrics, sha, base_lm_run(client, cfg.registry.experiment))
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        run_id = mlflow.active_run().info.run_id
        version = client.create_model_version(name, source, run_id=run_id, tags=tags, description=card(name, "?", settings, metrics))
        client.update_model_version(name, version.version, description=card(name, version.version, settings, metrics))
        reused = False
        print(f"register_long_context: registered {name} v{version.version} (sha256 {sha[:12]}, run {run_id})")
    gate = cfg.registry.model_copy(update={"primary_metric": cfg.longctx.primary_metric, "guard_metrics": GUARDS})
    promotion = aliases.promote(gate, name, version.version, prefix=PREFIX)
    return {
        "name": name,
        "version": int(version.version),
        "model_uri": f"models:/{name}/{version.version}",
        "model_sha256": sha,
        "reused": reused,
        "max_model_len": int(settings["max_position_embeddings"]),
        "promotion": promotion,
    }
