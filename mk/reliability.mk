# Reliability matrix (tests/reliability/): bad inputs run against the real CLI, one row per case.
#   make reliability     prints the table and ends with `N bad inputs: N handled` (about 1.5 min on 2 cores)
# `make test` runs the same cases as pytest (tests/reliability/test_bad_inputs.py); this target is the table.
.PHONY: reliability

reliability: install
	PYTHONPATH=. $(BIN)/python -m tests.reliability.report
