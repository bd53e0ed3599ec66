"""DeepSpeed ZeRO configs: bundled by name (``zero0`` .. ``zero3``, ``zero3_offload``) or a path.

The bundled JSONs live in ``flagops/configs/deepspeed/`` and leave batch sizes, precision,
clipping and optimizer settings as ``"auto"``, which the HF Trainer fills in from its
``TrainingArguments``; docs/distributed.md says when each stage fits. Nothing here imports
deepspeed: the Trainer does, and only when CUDA is present.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from flagops.config import ConfigError

BUNDLED_DIR = resources.files("flagops") / "configs" / "deepspeed"


def bundled() -> dict[str, Path]:
    """Bundled config names -> their JSON files."""
    return {p.name.removesuffix(".json"): Path(str(p)) for p in BUNDLED_DIR.iterdir() if p.name.endswith(".json")}


def resolve_deepspeed_config(value: str) -> Path:
    """A bundled name (``zero2``) or a JSON path -> the JSON file, checked to parse.

    Raises:
        ConfigError: an unknown name, a missing file, or a file that is not a JSON object.
    """
    known = bundled()
    if value in known:
        path = known[value]
    else:
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(f"train.deepspeed={value!r}: neither a bundled config ({', '.join(sorted(known))}) nor an existing JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"train.deepspeed: {path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"train.deepspeed: {path} must hold a JSON object, got {type(data).__name__}")
    return path


def zero_stage(path: Path) -> int:
    """The ZeRO stage a config asks for (0 when it has no zero_optimization section)."""
    return int(json.loads(Path(path).read_text(encoding="utf-8")).get("zero_optimization", {}).get("stage", 0))
