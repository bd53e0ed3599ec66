#!/usr/bin/env bash
# Create the infinity-emb peer venv used by benchmarks/serve_load.py and benchmarks/soak.py.
#
#   benchmarks/setup_infinity_venv.sh [VENV]      # VENV defaults to <repo>/.venv-infinity
#
# infinity-emb 0.0.78 pins sentence-transformers<4 and numpy<2, and it is no longer
# maintained, so it cannot share flagops' venv (transformers 5.x). TRANSFORMERS_VERSION is
# the one checked here to serve the MiniLM model (see benchmarks/README.md). torch==2.13.0
# goes in first: that pin takes the local CPU wheel, while an unpinned torch (pulled in by
# sentence-transformers) would fetch a multi-GB CUDA build. Idempotent: an existing venv is
# reused and pip skips satisfied pins.
set -euo pipefail

TORCH_VERSION=2.13.0
TRANSFORMERS_VERSION=4.57.6
INFINITY_VERSION=0.0.78

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv-infinity}"
python="${PYTHON:-python3.11}"

die() { echo "setup_infinity_venv: error: $*" >&2; exit 1; }
command -v "$python" >/dev/null 2>&1 || die "$python not found; set PYTHON=/path/to/python3.11"

[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
"${pip[@]}" "torch==$TORCH_VERSION"
# The torch pin is repeated so pip's resolver cannot swap it for a CUDA build.
"${pip[@]}" "torch==$TORCH_VERSION" "transformers==$TRANSFORMERS_VERSION" \
    "infinity-emb[server,torch,einops,logging]==$INFINITY_VERSION"

export HF_HUB_OFFLINE=1 DO_NOT_TRACK=1 INFINITY_ANONYMOUS_USAGE_STATS=0
"$venv/bin/python" - <<'EOF' || die "infinity-emb does not import in $venv"
from importlib.metadata import version
from infinity_emb.infinity_server import create_server  # noqa: F401  (the server, not just the package)
pkgs = ("infinity-emb", "transformers", "sentence-transformers", "torch", "numpy")
print("setup_infinity_venv: " + ", ".join(f"{p} {version(p)}" for p in pkgs))
EOF
[[ -x "$venv/bin/infinity_emb" ]] || die "no infinity_emb command in $venv/bin"
echo "setup_infinity_venv: ready: $venv/bin/infinity_emb"
