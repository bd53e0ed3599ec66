"""What flagops writes beside a LoRA adapter peft saved."""

from __future__ import annotations

import json
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"


def stable_adapter_config(adapter_dir: Path) -> None:
    """Sort the module lists peft writes from sets (``target_modules``, ``modules_to_save``) in
    ``adapter_dir``'s config: their order changed between processes, and with it the model's
    hash, so a re-run never matched the version it had registered (found by tests/reliability's
    kill-and-resume chain, for the long-context extension and then the layerwise reranker)."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("target_modules", "modules_to_save"):
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
