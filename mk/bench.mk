# Serving benchmarks (not tests): flagops' server against infinity-emb; see benchmarks/README.md.
#   make bench-infinity-venv                       build .venv-infinity (once; redone when its script changes)
#   make bench-serve                               load table, flagops vs infinity (~10 min on 2 busy cores)
#   make bench-serve SERVE_LOAD_ARGS="--requests 20 --out load.json"
#   make bench-soak                                10 minutes at concurrency 32 on flagops; fails on any
#                                                  error or RSS growth of 10% or more
#   make bench-soak SOAK_ARGS="--peer infinity"    the same soak on infinity
INFINITY_VENV := .venv-infinity
INFINITY_STAMP := $(INFINITY_VENV)/.installed
SERVE_LOAD_ARGS ?=
SOAK_ARGS ?=

.PHONY: bench-infinity-venv bench-serve bench-soak

$(INFINITY_STAMP): benchmarks/setup_infinity_venv.sh
	bash benchmarks/setup_infinity_venv.sh $(INFINITY_VENV)
	touch $(INFINITY_STAMP)

bench-infinity-venv: $(INFINITY_STAMP)

bench-serve: install bench-infinity-venv
	$(BIN)/python benchmarks/serve_load.py $(SERVE_LOAD_ARGS)

# The infinity venv only when the soak is for infinity.
bench-soak: install $(if $(findstring infinity,$(SOAK_ARGS)),bench-infinity-venv)
	$(BIN)/python benchmarks/soak.py $(SOAK_ARGS)
