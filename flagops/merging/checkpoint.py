"""The tensors of a model directory, as files: what to merge, read lazily, written shard by shard.

A model directory holds its HF weights (``model.safetensors``, or shards listed in
``model.safetensors.index.json``) and, for some kinds, more tensor files: M3's
``colbert_linear``/``sparse_linear`` heads (``.pt`` as FlagEmbedding writes them and
``.safetensors``) and the layerwise reranker's ``layerwise_heads.safetensors``. Each is a
*group*: the weights, or one head file stem. Every group is merged; everything else
(config, tokenizer, flagops settings, sentence-transformers files) is copied from the
first model.

Reading is by header first (names, dtypes, shapes: no tensor data), so all checks run
before anything is written, and a tensor is read only when it is mixed. The writer streams:
it lays out a safetensors header from the shapes, then writes each tensor's bytes as it
comes, so the merged file never sits whole in memory.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from flagops.data.formats import DataError

WEIGHTS = "weights"  # the group of the HF model weights, however they are sharded
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PT_HEADS = ("colbert_linear", "sparse_linear")  # M3 heads FlagEmbedding writes as torch.save state dicts
SKIPPED_DIRS = ("adapter",)  # an LLM reranker's LoRA adapter: it would not match the merged weights
STALE_WEIGHTS = ("pytorch_model", "tf_model", "flax_model")  # other formats of the first model's unmerged weights

# safetensors dtype codes <-> torch dtypes
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
CODES = {dtype: code for code, dtype in DTYPES.items()}


class MergeError(DataError):
    """Models that cannot be merged, or a merge asked for wrongly. One line: the tensor or value, and the fix."""


@dataclass(frozen=True)
class TensorSpec:
    """Where one tensor lives and what it is, from a file header."""

    file: Path
    dtype: str  # a safetensors code (F32, I64, ...)
    shape: tuple[int, ...]

    @property
    def floating(self) -> bool:
        return DTYPES[self.dtype].is_floating_point


@dataclass(frozen=True)
class ModelTensors:
    """A model directory's tensor groups: group -> tensor name -> spec, plus its other files."""

    path: Path
    groups: dict[str, dict[str, TensorSpec]]
    tensor_files: frozenset[Path]


def read_tensor(spec: TensorSpec, name: str) -> torch.Tensor:
    """One tensor from disk. The file is opened per tensor, so its memory map is dropped right after."""
    if spec.file.suffix == ".pt":
        return _read_pt(spec.file)[name]
    with safe_open(str(spec.file), framework="pt", device="cpu") as fh:
        return fh.get_tensor(name)


def _read_pt(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)  # never unpickle code
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line error
        why = type(exc).__name__
        raise MergeError(f"{path}: not a readable state dict ({why}); re-save it with torch.save(state_dict, path)") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MergeError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def _safetensors_specs(path: Path) -> dict[str, TensorSpec]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return {k: TensorSpec(path, fh.get_slice(k).get_dtype(), tuple(fh.get_slice(k).get_shape())) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # noqa: BLE001
        raise MergeError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc}); re-save the model") from None


def _pt_specs(path: Path) -> dict[str, TensorSpec]:
    return {k: TensorSpec(path, CODES[v.dtype], tuple(v.shape)) for k, v in _read_pt(path).items()}


def weight_files(path: Path) -> list[Path]:
    """The HF weight files of a model directory, in shard order."""
    if (path / INDEX_FILE).is_file():
        weight_map = json.loads((path / INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
        return [path / name for name in dict.fromkeys(weight_map.values())]
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE]
    raise MergeError(
        f"{path}: no {SINGLE_FILE} (or {INDEX_FILE}); merging reads safetensors only: "
        "re-save the model with save_pretrained(dir, safe_serialization=True)"
    )


def model_tensors(path: Path) -> ModelTensors:
    """Read the headers of every tensor file in ``path`` (no tensor data)."""
    weights = weight_files(path)
    groups: dict[str, dict[str, TensorSpec]] = {WEIGHTS: {}}
    for file in weights:
        groups[WEIGHTS].update(_safetensors_specs(file))
    files = set(weights)
    for file in sorted(path.glob("*.safetensors")):
        if file not in files:
            groups[file.stem] = _safetensors_specs(file)
            files.add(file)
    for stem in PT_HEADS:
        pt = path / f"{stem}.pt"
        if pt.is_file():
            files.add(pt)
            groups.setdefault(stem, _pt_specs(pt))  # a .safetensors copy, when there is one, is read instead
    return ModelTensors(path, groups, frozenset(files))


def architecture(path: Path) -> tuple[str, tuple[str, ...]]:
    """(model_type, architectures) from config.json: what must agree between merged models."""
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return config.get("model_type", "?"), tuple(config.get("architectures") or ())


def check_compatible(models: list[ModelTensors], labels: list[str]) -> None:
    """Same architecture, the same tensor groups, names, shapes and kinds of dtype; else a
    ``MergeError`` naming the first tensor (or file) that differs and both values."""
    first, name0 = models[0], labels[0]
    arch0 = architecture(first.path)
    for model, label in zip(models[1:], labels[1:], strict=True):
        arch = architecture(model.path)
        if arch != arch0:
            raise MergeError(
                f"{label}: architecture {arch[0]} {list(arch[1])} differs from {name0}'s {arch0[0]} {list(arch0[1])}; "
                "merge models fine-tuned from the same base"
            )
        for group in sorted(first.groups.keys() | model.groups.keys()):
            if group not in model.groups or group not in first.groups:
                has, lacks = (name0, label) if group in first.groups else (label, name0)
                raise MergeError(f"{lacks}: no {group} tensor file but {has} has one; merge models of the same kind (all M3, or none)")
            specs0, specs = first.groups[group], model.groups[group]
            for key in list(specs0) + [k for k in specs if k not in specs0]:
                if key not in specs or key not in specs0:
                    if not (specs0.get(key) or specs[key]).floating:
                        # An integer buffer (an older checkpoint's `embeddings.position_ids`) is
                        # copied from the first model, never averaged: the others need not hold it.
                        continue
                    has, lacks = (name0, label) if key in specs0 else (label, name0)
                    raise MergeError(f"tensor {key!r}: in {has} but not in {lacks}; merge models of one architecture")
                a, b = specs0[key], specs[key]
                if a.shape != b.shape:
                    raise MergeError(
                        f"tensor {key!r}: shape {list(a.shape)} in {name0} but {list(b.shape)} in {label}; "
                        "merge models of one architecture and size"
                    )
                if a.floating != b.floating:
                    raise MergeError(f"tensor {key!r}: dtype {a.dtype} in {name0} but {b.dtype} in {label}; the models differ")


def copy_other_files(source: Path, tensor_files: Iterable[Path], dest: Path) -> None:
    """Copy everything in ``source`` into ``dest`` but its tensor files, an LLM reranker's adapter
    and weights in other formats (``pytorch_model.bin``): those would not be the merged ones."""
    skip = {f.name for f in tensor_files}
    for item in sorted(source.iterdir()):
        if item.name in skip or item.name in SKIPPED_DIRS or item.name.startswith(STALE_WEIGHTS):
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name)
        else:
            shutil.copy2(item, dest / item.name)


def write_safetensors_streaming(
    path: Path, specs: list[tuple[str, str, tuple[int, ...]]], tensors: Iterable[torch.Tensor], metadata: dict[str, str] | None
) -> None:
    """Write a safetensors file whose tensors arrive one at a time, in ``specs`` order.

    The header (names, dtypes, shapes, byte offsets) is known from ``specs`` up front, so each
    tensor's bytes go straight to disk and at most one tensor is held. The layout is the
    format's: an 8-byte little-endian header length, the JSON header padded with spaces to
    8 bytes, then the tensors' bytes back to back.
    """
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, code, shape in specs:
        size = DTYPES[code].itemsize * int(torch.Size(shape).numel())
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for (name, code, shape), tensor in zip(specs, tensors, strict=True):
            if CODES[tensor.dtype] != code or tuple(tensor.shape) != shape:
                raise RuntimeError(f"tensor {name!r}: got {tensor.dtype} {list(tensor.shape)}, the header says {code} {list(shape)}")
            fh.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)


def safetensors_metadata(path: Path) -> dict[str, str] | None:
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        return fh.metadata()
