"""LM-Cocktail: a merged model is the weighted sum of its ingredients' parameters.

``merged[k] = sum_i w_i * theta_i[k]`` with ``sum_i w_i = 1``, accumulated in float32 (or
wider) and stored in the first model's dtype. Integer and boolean tensors (position ids,
buffers) are not averaged: the first model's are copied. The weights are given, or come
from the target task (``task_loss.data_weights``: ``softmax(-loss_i / T)``).

Two ways to merge, with byte-identical results:

* in memory (``by_layers=False``): every ingredient's tensors are loaded, then mixed;
  peak memory is about all the models together, as FlagEmbedding's ``mix_models``.
* by layers (``by_layers=True``): one parameter at a time, each ingredient's copy read
  from its safetensors file only when it is mixed, the result streamed into the output
  shard; peak memory is about one parameter per model, whatever the model's size.

The output directory has the first model's files (config, tokenizer, flagops and
sentence-transformers settings, the index of shards) with every tensor file merged (HF
weights, M3 heads, layerwise heads), plus ``merge.json`` recording the ingredients and
weights. It is written atomically: on any error nothing is left at ``dest``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from flagops.data.formats import atomic_path
from flagops.merging.checkpoint import (
    WEIGHTS,
    MergeError,
    ModelTensors,
    check_compatible,
    copy_other_files,
    model_tensors,
    read_tensor,
    safetensors_metadata,
    weight_files,
    write_safetensors_streaming,
)

MERGE_FILE = "merge.json"
KINDS = ("encoder", "reranker", "decoder")
WEIGHT_TOLERANCE = 1e-6


# --------------------------------------------------------------------------- the maths


def check_weights(weights: Sequence[float], count: int) -> list[float]:
    """One finite weight per model, summing to 1; else a one-line ``MergeError`` naming the weights."""
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise MergeError(f"weights {weights}: {len(weights)} weights for {count} models; give one weight per model")
    if not all(math.isfinite(w) for w in weights):
        raise MergeError(f"weights {weights}: every weight must be a finite number")
    total = math.fsum(weights)
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise MergeError(f"weights {weights} sum to {total:g}, not 1; scale them so they sum to 1")
    return weights


def softmax_weights(losses: Sequence[float], temperature: float) -> list[float]:
    """LM-Cocktail's data-driven weights: ``softmax(-loss_i / T)``; a lower loss on the target task weighs more."""
    if temperature <= 0:
        raise MergeError(f"temperature {temperature}: must be > 0")
    return torch.softmax(-torch.tensor(losses, dtype=torch.float64) / temperature, dim=0).tolist()


def mix_tensor(tensors: Iterable[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_i w_i * t_i`` in the first tensor's dtype; a non-float first tensor is returned as is.

    ``tensors`` may be lazy: they are consumed one at a time, so at most the running sum and
    one ingredient are held (and for an integer tensor only the first is ever read).
    """
    found = iter(tensors)
    first = next(found)
    if not first.is_floating_point():
        return first
    dtype = first.dtype
    wide = torch.promote_types(dtype, torch.float32)  # half-precision models accumulate in float32
    total = first.to(wide) * weights[0]
    del first  # by layers, the first ingredient's copy is not kept while the others are read
    for weight, tensor in zip(weights[1:], found, strict=True):
        total.add_(tensor.to(wide), alpha=weight)
    return total.to(dtype)


def mix_state_dicts(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """The weighted sum of state dicts with the same keys (the first one's order)."""
    weights = check_weights(weights, len(states))
    return {key: mix_tensor((state[key] for state in states), weights) for key in states[0]}


# --------------------------------------------------------------------------- models on disk


def model_kind(path: Path) -> str:
    """``decoder`` (a causal LM), ``reranker`` (a sequence-classification cross-encoder) or ``encoder``."""
    arch = json.loads((path / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in arch):
        return "decoder"
    if any(a.endswith("ForSequenceClassification") for a in arch):
        return "reranker"
    return "encoder"


def plan(paths: Sequence[Path], labels: Sequence[str]) -> list[ModelTensors]:
    """Every ingredient's tensor headers, checked against the first: nothing is read or written yet."""
    if len(paths) < 2:
        raise MergeError(f"models {list(labels)}: merging needs at least 2 models")
    for path, label in zip(paths, labels, strict=True):
        if not (Path(path) / "config.json").is_file():
            raise MergeError(f"{label}: no model at {path} (no config.json); give a model directory or a model source")
    models = [model_tensors(Path(p)) for p in paths]
    check_compatible(models, list(labels))
    return models


def _outputs(first: ModelTensors) -> dict[str, list[Path]]:
    """Group -> the files it is written to: the first model's, in the same format and sharding."""
    outputs = {WEIGHTS: weight_files(first.path)}
    for group in first.groups:
        if group != WEIGHTS:
            outputs[group] = [f for f in (first.path / f"{group}.safetensors", first.path / f"{group}.pt") if f.is_file()]
    return outputs


def _write_in_memory(models: list[ModelTensors], weights: list[float], dest: Path) -> None:
    outputs = _outputs(models[0])
    for group, files in outputs.items():
        states = [{k: read_tensor(spec, k) for k, spec in m.groups[group].items()} for m in models]  # every model whole
        mixed = mix_state_dicts(states, weights)
        del states
        for file in files:
            keys = [k for k, spec in models[0].groups[group].items() if spec.file == file] if group == WEIGHTS else list(mixed)
            _save(file, {k: mixed[k] for k in keys}, dest)


def _write_by_layers(models: list[ModelTensors], weights: list[float], dest: Path) -> None:
    outputs = _outputs(models[0])
    for group, files in outputs.items():
        specs0 = models[0].groups[group]

        def mixed(key: str, group: str = group) -> torch.Tensor:
            return mix_tensor((read_tensor(m.groups[group][key], key) for m in models), weights)

        for file in files:
            keys = [k for k, spec in specs0.items() if spec.file == file] if group == WEIGHTS else list(specs0)
            if file.suffix == ".pt":  # small M3 heads in FlagEmbedding's torch.save layout
                _save(file, {k: mixed(k) for k in keys}, dest)
                continue
            specs = [(k, specs0[k].dtype, specs0[k].shape) for k in keys]
            write_safetensors_streaming(dest / file.name, specs, (mixed(k) for k in keys), safetensors_metadata(file))


def _save(file: Path, state: dict[str, torch.Tensor], dest: Path) -> None:
    if file.suffix == ".pt":
        torch.save({k: v.contiguous() for k, v in state.items()}, dest / file.name)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(dest / file.name), metadata=safetensors_metadata(file))


def merge_models(
    paths: Sequence[Path],
    weights: Sequence[float],
    dest: str | Path,
    *,
    labels: Sequence[str] | None = None,
    by_layers: bool = True,
    record: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge the models at ``paths`` with ``weights`` into ``dest``; return what ``merge.json`` records.

    ``labels`` name the ingredients in errors and in ``merge.json`` (their sources, e.g. a
    registered version's URI); default the paths. ``record`` adds fields to ``merge.json``
    (the method, losses, temperature). Checks run before anything is written.
    """
    paths = [Path(p) for p in paths]
    labels = [str(x) for x in (labels or paths)]
    weights = check_weights(weights, len(paths))
    models = plan(paths, labels)
    kinds = [model_kind(p) for p in paths]
    summary = {
        "kind": kinds[0],
        "by_layers": by_layers,
        "ingredients": [{"source": label, "weight": w} for label, w in zip(labels, weights, strict=True)],
        **(record or {}),
    }
    with atomic_path(dest, is_dir=True) as tmp:
        copy_other_files(paths[0], models[0].tensor_files, tmp)
        (_write_by_layers if by_layers else _write_in_memory)(models, weights, tmp)
        (tmp / MERGE_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
