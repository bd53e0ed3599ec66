"""register_model / register_reranker: log a trained model as an MLflow pyfunc and register it
(or reuse the version with the same content). ``family`` picks the model's name and pyfunc."""

from __future__ import annotations

from pathlib import Path

from flagops.data.formats import DataError, write_json
from flagops.models import quantize
from flagops.registry import families, models, tracking


def release_dir(inputs: dict[str, Path], metrics: dict[str, float]) -> Path:
    """The directory the ``candidate/*`` metrics describe: the merged model when evaluate chose
    it (``candidate/merged`` = 1), else the trained one."""
    if metrics.get("candidate/merged") == 1.0:
        if "merged_model" not in inputs:
            raise DataError(f"{inputs['metrics']}: evaluate chose the merged model; pass merge_models' output as merged_model")
        print(f"register_model: registering the merged model {inputs['merged_model']} (evaluate chose it)")
        return Path(inputs["merged_model"])
    return Path(inputs["model"])


def run(cfg, inputs: dict[str, Path], outputs: dict[str, Path], family: str = "embedder") -> dict[str, Path]:
    cfg = families.project(cfg, family)
    metrics = models.read_metrics(inputs["metrics"])
    model = release_dir(inputs, metrics) if family == "embedder" else Path(inputs["model"])
    with tracking.ensure_run(cfg, families.step(family, "register")):
        quant = quantize.from_metrics(metrics, eval_set=f"evaluate's held-out set ({inputs['metrics']})") if family == "embedder" else []
        record = models.register(cfg, model, metrics, inputs["train_data"], family=family, quant=quant)
    write_json(outputs[families.artifact(family, "registration")], record)
    return outputs
