#!/usr/bin/env bash
# Create the FlagEmbedding peer venv used by benchmarks/compat_flagembedding.py.
#
#   benchmarks/setup_peer_venv.sh [VENV]      # VENV defaults to <repo>/.venv-flagembedding
#
# FlagEmbedding 1.4.2 imports only under transformers 4.x (5.x removed modules it uses),
# so it cannot share flagops' venv. torch is flagops' CPU build (benchmarks/_peer_venv.sh).
# Idempotent: an existing venv is reused and pip skips satisfied pins.
set -euo pipefail

TRANSFORMERS_VERSION=4.57.6
FLAGEMBEDDING_VERSION=1.4.2

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv-flagembedding}"
# shellcheck source=benchmarks/_peer_venv.sh
source "$repo/benchmarks/_peer_venv.sh"
peer_venv setup_peer_venv "$venv" "transformers==$TRANSFORMERS_VERSION" "FlagEmbedding==$FLAGEMBEDDING_VERSION"

HF_HUB_OFFLINE=1 "$venv/bin/python" - <<'EOF' || die "FlagEmbedding does not import in $venv"
from importlib.metadata import version
from FlagEmbedding import FlagModel  # noqa: F401
print("setup_peer_venv: " + ", ".join(f"{p} {version(p)}" for p in ("FlagEmbedding", "transformers", "torch")))
EOF
echo "setup_peer_venv: ready: $venv/bin/python"
