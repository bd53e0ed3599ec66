#!/usr/bin/env bash
# Create the infinity-emb peer venv used by benchmarks/serve_load.py and benchmarks/soak.py.
#
#   benchmarks/setup_infinity_venv.sh [VENV]      # VENV defaults to <repo>/.venv-infinity
#
# infinity-emb 0.0.78 pins sentence-transformers<4 and numpy<2, and it is no longer
# maintained, so it cannot share flagops' venv (transformers 5.x). TRANSFORMERS_VERSION is
# the one checked here to serve the MiniLM model (see benchmarks/README.md). torch is
# flagops' CPU build (benchmarks/_peer_venv.sh). Idempotent.
set -euo pipefail

TRANSFORMERS_VERSION=4.57.6
INFINITY_VERSION=0.0.78

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv-infinity}"
# shellcheck source=benchmarks/_peer_venv.sh
source "$repo/benchmarks/_peer_venv.sh"
peer_venv setup_infinity_venv "$venv" "transformers==$TRANSFORMERS_VERSION" \
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
