# GPU benchmarks (not tests) for a one-GPU CUDA machine: encode, train and serve in fp16, about
# 10 minutes once the venvs exist; see benchmarks/README.md ("GPU: one script").
#   make bench-gpu                              builds .venv-gpu and .venv-infinity-gpu (CUDA torch) if missing
#   make bench-gpu GPU_ARGS=--no-install        the venvs as they are (no network)
#   make bench-utilisation                      this machine's GEMM peaks (fp32, int8), a few seconds
# Without a GPU, bench-gpu says so and exits 2, having run nothing. It does not depend on `install`:
# the CPU venv is not used there.
GPU_ARGS ?=

.PHONY: bench-gpu bench-utilisation

bench-gpu:
	bash benchmarks/gpu.sh $(GPU_ARGS)

bench-utilisation: install
	$(BIN)/python benchmarks/_flops.py
