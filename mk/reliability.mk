# Reliability matrix (tests/reliability/, issue 15):
#   make reliability       kill -9 and resume (the tiny DAG), concurrent promotions (sqlite, and an mlflow
#                          server on Postgres), serving and resource faults, secrets, safe loading; then the
#                          bad-input table, ending with `N bad inputs: N handled`
#   make reliability-long  the long variants: every catalog step killed and resumed (tiny profiles; not score_with_teacher), the
#                          secrets check over a whole tiny pipeline run
# `make test` runs the same cases as pytest (all but the long ones).
.PHONY: reliability reliability-long

reliability: install
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/reliability -m "not long" --deselect tests/reliability/test_bad_inputs.py
	PYTHONPATH=. $(BIN)/python -m tests.reliability.report

reliability-long: install
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/reliability -m long -s
