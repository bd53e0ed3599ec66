"""merge_models: LM-Cocktail. Mix the trained candidate with its base (and any other model
sources) into one model in the candidate's format; ``merge.json`` inside records the
ingredients and weights."""

from pathlib import Path

from flagops.config import ConfigError
from flagops.merging import MERGE_FILE, MergeError, data_weights, merge_models, model_kind, plan, read_examples
from flagops.models.reranker import resolve_reranker_source
from flagops.models.sources import ModelSourceError
from flagops.registry import tracking
from flagops.registry.models import fetch_model_dir


def ingredients(cfg, candidate: Path) -> tuple[list[Path], list[str]]:
    """The directory and label of each ``merge.models`` entry: ``candidate`` is the input model,
    ``base`` the pipeline's base for the candidate's kind (``model.base``, or ``reranker.base``),
    ``models:/NAME@alias`` a registered version (fetched from the MLflow registry)."""
    if not (candidate / "config.json").is_file():
        raise MergeError(f"{candidate}: input model holds no config.json; pass the training step's model directory")
    base = cfg.model.base if model_kind(candidate) == "encoder" else cfg.reranker.base
    paths, labels = [], []
    for word in cfg.merge.models:
        if word == "candidate":
            paths.append(candidate)
            labels.append(str(candidate))
            continue
        source = base if word == "base" else word
        try:
            if source.startswith("models:/"):  # a registered version, e.g. models:/bge-embedder@champion
                paths.append(fetch_model_dir(source))
            else:
                paths.append(resolve_reranker_source(source))  # any model source, tiny-reranker and tiny-decoder too
        except ModelSourceError as exc:
            raise MergeError(f"merge.models: {word}: {exc}") from None
        labels.append(source)
    return paths, labels


def run(cfg, inputs, outputs):
    m = cfg.merge
    paths, labels = ingredients(cfg, Path(inputs["model"]))
    plan(paths, labels)  # architectures and shapes agree: fail before any model is loaded
    record: dict = {"method": m.method}
    if m.method == "data":
        if "train_data" not in inputs:
            raise ConfigError("merge.method=data scores the models on train_data rows; pass the train_data input or set merge.method=fixed")
        rows = read_examples(Path(inputs["train_data"]), m.examples)
        weights, losses = data_weights(paths, rows, temperature=m.temperature, neg_number=m.neg_number, seed=m.seed)
        record.update(losses=losses, temperature=m.temperature, examples=m.examples, neg_number=m.neg_number, seed=m.seed)
    else:
        weights = list(m.weights) if m.weights is not None else [1.0 / len(paths)] * len(paths)
    summary = merge_models(paths, weights, outputs["merged_model"], labels=labels, by_layers=m.method != "fixed", record=record)
    chosen = ", ".join(f"{label}={item['weight']:.4f}" for label, item in zip(labels, summary["ingredients"], strict=True))
    print(f"merge_models: {summary['kind']} by {m.method}, weights {chosen} -> {outputs['merged_model']}")
    # metric names allow few characters: a model source other than candidate/base is named by its position
    names = [f"{i}_{word}" if word in ("candidate", "base") else str(i) for i, word in enumerate(m.models)]
    metrics = {f"merge/weight/{name}": item["weight"] for name, item in zip(names, summary["ingredients"], strict=True)}
    metrics.update({f"merge/loss/{name}": loss for name, loss in zip(names, record.get("losses", []), strict=False)})
    tracking.log_metrics(metrics)
    tracking.log_artifact(Path(outputs["merged_model"]) / MERGE_FILE)
    return outputs
