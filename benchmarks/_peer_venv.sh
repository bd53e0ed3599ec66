# Sourced by benchmarks/setup_peer_venv.sh and setup_infinity_venv.sh: a peer library in its
# own venv, on the same CPU torch as flagops.
#
#   peer_venv NAME VENV PACKAGE...
#
# Creates VENV with $PYTHON (default python3.11) unless it exists, installs torch==2.13.0
# first (that pin takes the local CPU wheel; an unpinned torch pulled in by a peer would fetch
# a multi-GB CUDA build), then PACKAGE... with the torch pin repeated so pip's resolver cannot
# swap it. Idempotent: pip skips satisfied pins. die MESSAGE exits 1 prefixed with NAME.

TORCH_VERSION=2.13.0

die() { echo "$PEER_NAME: error: $*" >&2; exit 1; }

peer_venv() {
    PEER_NAME="$1"
    local venv="$2" python="${PYTHON:-python3.11}"
    shift 2
    command -v "$python" >/dev/null 2>&1 || die "$python not found; set PYTHON=/path/to/python3.11"
    [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
    local pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
    "${pip[@]}" "torch==$TORCH_VERSION"
    "${pip[@]}" "torch==$TORCH_VERSION" "$@"
}
