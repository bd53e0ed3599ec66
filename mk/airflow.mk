# Airflow 3 in its own venv (see dags/README.md):
#   make airflow-venv                 build .venv-airflow (once; redone when its pins change)
#   make airflow-test                 DagBag checks in both modes + a real `airflow dags test` on tiny
#   make airflow-run PROFILE=tiny     run retrain_embedder once, locally, in runs/airflow-$(PROFILE)
AIRFLOW_VENV := .venv-airflow
AIRFLOW_BIN := $(AIRFLOW_VENV)/bin
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
AIRFLOW_WORKDIR := $(CURDIR)/runs/airflow-$(PROFILE)

.PHONY: airflow-venv airflow-test airflow-run

# flagops goes in --no-deps: the DAGs import only flagops.catalog and flagops.dvc, and its full
# deps (torch, kfp, kserve) would pull a CUDA build and conflict with Airflow's pins.
$(AIRFLOW_STAMP): requirements/airflow.txt pyproject.toml
	test -d $(AIRFLOW_VENV) || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_BIN)/pip install -q --upgrade pip
	$(AIRFLOW_BIN)/pip install -q -r requirements/airflow.txt
	$(AIRFLOW_BIN)/pip install -q --no-deps -e .
	@! $(AIRFLOW_BIN)/pip show -q torch 2>/dev/null || { echo "error: torch got into $(AIRFLOW_VENV); it must not"; exit 1; }
	touch $(AIRFLOW_STAMP)

airflow-venv: $(AIRFLOW_STAMP)

airflow-test: install airflow-venv
	$(BIN)/python -m pytest -q tests/orchestration/test_airflow.py tests/orchestration/test_airflow_multinode.py

# A local run with its own AIRFLOW_HOME, workspace and sqlite MLflow store under runs/.
airflow-run: install airflow-venv
	mkdir -p $(AIRFLOW_WORKDIR)
	$(BIN)/flagops params $(PROFILE) -o $(AIRFLOW_WORKDIR)/params.yaml
	export AIRFLOW_HOME=$(AIRFLOW_WORKDIR)/airflow-home AIRFLOW__CORE__LOAD_EXAMPLES=False \
	  AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags FLAGOPS_WORKDIR=$(AIRFLOW_WORKDIR) \
	  FLAGOPS_BIN=$(CURDIR)/$(BIN)/flagops FLAGOPS_AIRFLOW_MODE=local FLAGOPS_PROFILE=$(PROFILE); \
	$(AIRFLOW_BIN)/airflow db migrate >/dev/null && $(AIRFLOW_BIN)/airflow dags test retrain_embedder
