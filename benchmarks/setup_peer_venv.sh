#!/usr/bin/env bash
# Create the FlagEmbedding peer venv used by benchmarks/compat_flagembedding.py.
#
#   benchmarks/setup_peer_venv.sh [VENV]      # VENV defaults to <repo>/.venv-flagembedding
#
# FlagEmbedding 1.4.2 imports only under transformers 4.x (5.x removed modules it uses),
# so it cannot share flagops' venv. torch==2.13.0 goes in first: that pin takes the local
# CPU wheel, while an unpinned torch (pulled in by FlagEmbedding) would fetch a multi-GB
# CUDA build. Idempotent: an existing venv is reused and pip skips satisfied pins.
set -euo pipefail

TORCH_VERSION=2.13.0
TRANSFORMERS_VERSION=4.57.6
FLAGEMBEDDING_VERSION=1.4.2

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv-flagembedding}"
python="${PYTHON:-python3.11}"

die() { echo "setup_peer_venv: error: $*" >&2; exit 1; }
command -v "$python" >/dev/null 2>&1 || die "$python not found; set PYTHON=/path/to/python3.11"

[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
"${pip[@]}" "torch==$TORCH_VERSION"
# The torch pin is repeated so pip's resolver cannot swap it for a CUDA build.
"${pip[@]}" "torch==$TORCH_VERSION" "transformers==$TRANSFORMERS_VERSION" "FlagEmbedding==$FLAGEMBEDDING_VERSION"

HF_HUB_OFFLINE=1 "$venv/bin/python" - <<'EOF' || die "FlagEmbedding does not import in $venv"
from importlib.metadata import version
from FlagEmbedding import FlagModel  # noqa: F401
print("setup_peer_venv: " + ", ".join(f"{p} {version(p)}" for p in ("FlagEmbedding", "transformers", "torch")))
EOF
echo "setup_peer_venv: ready: $venv/bin/python"
