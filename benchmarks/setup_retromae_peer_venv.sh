#!/usr/bin/env bash
# Create the peer venv used by benchmarks/retromae_speed.py: FlagEmbedding 1.2.11, a
# release line that shipped RetroMAE pretraining (FlagEmbedding/baai_general_embedding/retromae_pretrain;
# 1.4.2, the current one, has none).
#
#   benchmarks/setup_retromae_peer_venv.sh [VENV]   # VENV defaults to <repo>/.venv-flagembedding-retromae
#
# transformers 4.44.2 (FlagEmbedding 1.2.11's time): its enhanced decoder imports
# apply_chunking_to_forward from transformers.modeling_utils, which later 4.x releases dropped.
# FlagEmbedding's package __init__ imports peft, which it does not declare: pinned here to a
# release of the same time. torch is flagops' CPU build (benchmarks/_peer_venv.sh).
# Idempotent: an existing venv is reused and pip skips satisfied pins.
set -euo pipefail

TRANSFORMERS_VERSION=4.44.2
FLAGEMBEDDING_VERSION=1.2.11
PEFT_VERSION=0.12.0

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv-flagembedding-retromae}"
# shellcheck source=benchmarks/_peer_venv.sh
source "$repo/benchmarks/_peer_venv.sh"
peer_venv setup_retromae_peer_venv "$venv" "transformers==$TRANSFORMERS_VERSION" "FlagEmbedding==$FLAGEMBEDDING_VERSION" "peft==$PEFT_VERSION"

HF_HUB_OFFLINE=1 "$venv/bin/python" - <<'PY' || die "FlagEmbedding's RetroMAE code does not import in $venv"
from importlib.metadata import version
from FlagEmbedding.baai_general_embedding.retromae_pretrain.data import RetroMAECollator  # noqa: F401
from FlagEmbedding.baai_general_embedding.retromae_pretrain.modeling import RetroMAEForPretraining  # noqa: F401
print("setup_retromae_peer_venv: " + ", ".join(f"{p} {version(p)}" for p in ("FlagEmbedding", "transformers", "torch")))
PY
echo "setup_retromae_peer_venv: ready: $venv/bin/python"
