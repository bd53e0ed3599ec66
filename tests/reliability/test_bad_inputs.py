"""The bad-input matrix (tests/reliability/cases.py): every case is handled.

Handled: a non-zero exit, a last stderr line that names the file:line or key and the fix, no
traceback, and the workspace left as it was (no output, no temporary). `make reliability`
prints the same cases as a table with the count.
"""

from __future__ import annotations

import pytest

from tests.reliability.cases import CASES
from tests.reliability.harness import run_case


def test_the_matrix_has_at_least_40_cases_in_every_category():
    categories = {c.category for c in CASES}
    assert len(CASES) >= 40
    assert {"configs", "CLI arguments", "model directories", "registry states"} <= categories
    assert len({c.name for c in CASES}) == len(CASES), "case names are the table's keys: keep them unique"
    assert any(c.subprocess for c in CASES) and not all(c.subprocess for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_handled(case, tmp_path):
    outcome = run_case(case, tmp_path / "ws")
    assert outcome.handled, f"{case.name}: {'; '.join(outcome.problems())}\n--- stderr tail ---\n{outcome.stderr[-3000:]}"
