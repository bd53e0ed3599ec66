# Kubeflow Pipelines: compile the retraining pipeline to IR, submit or schedule it, test it.
#   make kfp-compile                                  writes pipelines/retrain.yaml (commit it)
#   make kfp-submit KFP_HOST=http://localhost:8888    one run of the $(PROFILE) profile
#   make kfp-schedule KFP_HOST=... KFP_CRON="0 3 * * *"
KFP_HOST ?=
KFP_CRON ?= 0 3 * * *

.PHONY: kfp-compile kfp-submit kfp-schedule kfp-test

kfp-compile: install
	$(BIN)/python -m pipelines.retrain   # writes pipelines/retrain.yaml (bge) and retrain_m3.yaml (m3)

kfp-submit: kfp-compile
	$(BIN)/flagops kfp submit $(if $(KFP_HOST),--host $(KFP_HOST)) --profile $(PROFILE)

kfp-schedule: kfp-compile
	$(BIN)/flagops kfp schedule $(if $(KFP_HOST),--host $(KFP_HOST)) --profile $(PROFILE) --cron "$(KFP_CRON)"

kfp-test: install
	$(BIN)/python -m pytest -q tests/orchestration/test_kfp.py
