"""The flagops cache: models built once per machine (the tiny test models)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$FLAGOPS_CACHE``, default ``~/.cache/flagops``."""
    return Path(os.environ.get("FLAGOPS_CACHE", Path.home() / ".cache" / "flagops"))
