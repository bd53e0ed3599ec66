# Kubeflow Pipelines: compile the retraining pipeline to IR, submit or schedule it, test it.
#   make kfp-compile                                  writes pipelines/<profile>.yaml for every shipped profile (commit them)
#   make kfp-submit KFP_HOST=http://localhost:8888    one run of the $(PROFILE) profile
#   make kfp-schedule KFP_HOST=... KFP_CRON="0 3 * * *"
KFP_HOST ?=
KFP_CRON ?= 0 3 * * *

.PHONY: kfp-compile kfp-submit kfp-schedule kfp-test

kfp-compile: install
	$(BIN)/python -m pipelines.retrain   # one IR per shipped profile: pipelines/<profile>.yaml

kfp-submit: kfp-compile
	$(BIN)/flagops kfp submit $(if $(KFP_HOST),--host $(KFP_HOST)) --profile $(PROFILE)

kfp-schedule: kfp-compile
	$(BIN)/flagops kfp schedule $(if $(KFP_HOST),--host $(KFP_HOST)) --profile $(PROFILE) --cron "$(KFP_CRON)"

kfp-test: install
	$(BIN)/python -m pytest -q tests/orchestration/test_kfp.py
