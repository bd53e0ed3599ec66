"""``python -m tests.reliability.report``: run the bad-input matrix and print it as a table.

One row per case (category, name, exit status, the error line), then one row per category,
then the count line ``N bad inputs: M handled``. A case's ``fixed`` says what it showed before
flagops was fixed (a traceback, a zero exit, a leftover file). Exits non-zero when any case is not handled.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.reliability.cases import CASES, HTTP_FUZZ
from tests.reliability.harness import run_case


def main() -> int:
    start = time.perf_counter()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="flagops-reliability-") as tmp:
        for i, case in enumerate(CASES):
            outcomes.append(run_case(case, Path(tmp) / f"case{i:03d}"))
    seconds = time.perf_counter() - start
    print(f"{'category':24s} {'case':42s} {'how':4s} {'rc':>3s}  {'ok':3s} message")
    for o in outcomes:
        how = "proc" if o.case.subprocess else "in"
        ok = "ok" if o.handled else "NO"
        shown = o.error_line if o.handled else "; ".join(o.problems())
        print(f"{o.case.category:24s} {o.case.name:42s} {how:4s} {o.rc!s:>3s}  {ok:3s} {shown[:160]}")
    print()
    tried, handled = Counter(o.case.category for o in outcomes), Counter(o.case.category for o in outcomes if o.handled)
    fixed = Counter(o.case.category for o in outcomes if o.case.fixed)
    for category in tried:
        print(f"{category:24s} {tried[category]:3d} tried, {handled[category]:3d} handled, {fixed[category]:3d} found a defect (fixed)")
    print(
        f"{'HTTP payloads':24s} fuzzed by {HTTP_FUZZ['test']}: {HTTP_FUZZ['servers']} servers x "
        f"{HTTP_FUZZ['examples_per_operation']} examples per operation, no 5xx (counted there, not re-run here)"
    )
    n_ok = sum(o.handled for o in outcomes)
    print(f"\nmatrix ran in {seconds:.0f} s")
    print(f"{len(outcomes)} bad inputs: {n_ok} handled")
    return 0 if n_ok == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
