#!/usr/bin/env bash
# One script for a one-GPU CUDA machine: the encode, train and serve benchmarks in fp16 on the
# GPU, each under a timeout, about 10 minutes in all once the venvs exist.
#
#   bash benchmarks/gpu.sh                 # build the GPU venvs if missing, then run the three benchmarks
#   bash benchmarks/gpu.sh --no-install    # use the venvs as they are (a machine without network access)
#   make bench-gpu [GPU_ARGS=--no-install]
#
# The venvs (the CPU ones pin the local CPU wheel of torch, so they cannot be reused here):
#   $GPU_VENV (.venv-gpu)                    torch $TORCH_VERSION from $TORCH_INDEX (CUDA 12.8 wheels by
#                                            default), then this checkout's flagops[dev], editable
#   $INFINITY_GPU_VENV (.venv-infinity-gpu)  the same CUDA torch first, then benchmarks/setup_infinity_venv.sh
# Installing downloads a few GB and is not part of the 10 minutes. With --no-install a missing
# flagops venv is an error and a missing infinity venv skips the serve step. Point GPU_VENV at any
# venv whose torch sees CUDA and has flagops[dev] installed to use it instead.
#
# The steps, each with its own timeout (seconds):
#   encode  (ENCODE_TIMEOUT 120)  gpu_encode.py --device cuda: flagops fp32 vs fp16 passages/s, fp16/fp32
#                                 ratio and min cosine (and FlagModel, when it imports in the venv)
#   train   (TRAIN_TIMEOUT 180)   train_speed.py: train_embedder at issue 13's settings (batch 8, group 8,
#                                 q32/p128, temperature 0.02, 30 steps) in fp32, fp16 and bf16 AMP
#   serve   (SERVE_TIMEOUT 270)   serve_load.py --device cuda: flagops vs infinity-emb, both fp16, the
#                                 load table with f/i ratios and achieved GFLOP/s against the fp16 GEMM peak
# Exit codes: 0 every step passed, 1 a step failed or timed out, 2 no usable GPU here (nothing run).
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
TORCH_VERSION=2.13.0  # the project's pin (Makefile, benchmarks/_peer_venv.sh)
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}"
GPU_VENV="${GPU_VENV:-$repo/.venv-gpu}"
INFINITY_GPU_VENV="${INFINITY_GPU_VENV:-$repo/.venv-infinity-gpu}"
PYTHON="${PYTHON:-python3.11}"
install=1

for arg in "$@"; do
    case "$arg" in
        --no-install) install=0 ;;
        -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu.sh: unknown argument $arg (expected --no-install or --help)" >&2; exit 1 ;;
    esac
done

say() { echo "gpu.sh: $*"; }
no_gpu() { say "no usable GPU: $*. Nothing was run; the CPU benchmarks are in benchmarks/README.md."; exit 2; }

# ---- 1. Is there a GPU? Before any install: on a CPU machine this is all that happens.
command -v nvidia-smi >/dev/null 2>&1 || no_gpu "nvidia-smi not found (no NVIDIA driver on this machine)"
gpus="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null)" \
    || no_gpu "nvidia-smi fails here"
[[ -n "$gpus" ]] || no_gpu "nvidia-smi lists no GPU"
say "GPUs: $gpus"

# ---- 2. The venvs.
cuda_torch() {  # VENV: torch $TORCH_VERSION from the CUDA index, first, so nothing pulls another build
    "$1/bin/python" -m pip install --disable-pip-version-check -q "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX"
}
if ((install)); then
    if [[ ! -x "$GPU_VENV/bin/flagops" ]]; then
        say "building $GPU_VENV (torch $TORCH_VERSION from $TORCH_INDEX, then flagops[dev])"
        [[ -x "$GPU_VENV/bin/python" ]] || "$PYTHON" -m venv "$GPU_VENV" || exit 1
        cuda_torch "$GPU_VENV" || exit 1
        "$GPU_VENV/bin/python" -m pip install --disable-pip-version-check -q "torch==$TORCH_VERSION" -e ".[dev]" || exit 1
    fi
    if [[ ! -x "$INFINITY_GPU_VENV/bin/infinity_emb" ]]; then
        say "building $INFINITY_GPU_VENV (CUDA torch, then benchmarks/setup_infinity_venv.sh)"
        [[ -x "$INFINITY_GPU_VENV/bin/python" ]] || "$PYTHON" -m venv "$INFINITY_GPU_VENV" || exit 1
        cuda_torch "$INFINITY_GPU_VENV" && bash benchmarks/setup_infinity_venv.sh "$INFINITY_GPU_VENV" || exit 1
    fi
fi
py="$GPU_VENV/bin/python"
[[ -x "$py" ]] || { say "error: $py not found; run without --no-install, or set GPU_VENV to a venv with a CUDA torch and flagops[dev]" >&2; exit 1; }
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || no_gpu "torch $("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null) in $GPU_VENV sees no CUDA device (a CPU build of torch, or a driver too old for its CUDA)"
"$py" -c "import torch; print(f'gpu.sh: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}')"

# ---- 3. The benchmarks.
declare -A status
run_step() {  # NAME TIMEOUT COMMAND...
    local name="$1" limit="$2"
    shift 2
    say "---- $name (timeout ${limit} s): $*"
    local t0=$SECONDS
    timeout --kill-after=15 "$limit" "$@"
    local code=$?
    case "$code" in
        0) status[$name]="PASS" ;;
        124 | 137) status[$name]="TIMEOUT after ${limit} s" ;;
        *) status[$name]="FAIL (exit $code)" ;;
    esac
    say "$name: ${status[$name]} in $((SECONDS - t0)) s"
}

started=$SECONDS
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader | sed 's/^/gpu.sh: before: GPU busy, memory used: /'
run_step encode "${ENCODE_TIMEOUT:-120}" "$py" benchmarks/gpu_encode.py --device cuda --n 4000 --batch-size 256 --max-length 512
run_step train "${TRAIN_TIMEOUT:-180}" "$py" benchmarks/train_speed.py --steps 30 --precision auto
if [[ -x "$INFINITY_GPU_VENV/bin/infinity_emb" ]]; then
    run_step serve "${SERVE_TIMEOUT:-270}" "$py" benchmarks/serve_load.py --device cuda --infinity-venv "$INFINITY_GPU_VENV" \
        --requests 200 --budget 30
else
    status[serve]="SKIPPED: no $INFINITY_GPU_VENV (run without --no-install)"
fi
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader | sed 's/^/gpu.sh: after: GPU busy, memory used: /'

say "---- summary ($((SECONDS - started)) s)"
failed=0
for name in encode train serve; do
    say "$(printf '%-7s %s' "$name" "${status[$name]}")"
    [[ "${status[$name]}" == PASS || "${status[$name]}" == SKIPPED* ]] || failed=1
done
exit "$failed"
