"""Run one reliability case against the real CLI and judge the outcome.

A case is handled when the CLI (a) exits non-zero, (b) ends stderr with one ``error:`` line
that matches the case's pattern (the file:line or key, and the fix) with no traceback, and
(c) leaves the case's workspace exactly as it found it: no new, changed or temporary file.

Cases run in-process through ``flagops.cli.main`` (torch and transformers load once for the
whole matrix), except those marked ``subprocess``: a sample that proves the exit status a
shell, DVC or Airflow would see.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from tests.reliability.cases import Case

REPO = Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT_S = 180


@dataclass
class Outcome:
    case: Case
    rc: int | None
    stderr: str
    changed: list[str] = field(default_factory=list)

    @property
    def error_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def problems(self) -> list[str]:
        """Why the case is not handled; empty when it is."""
        out = []
        if self.rc in (0, None):
            out.append(f"exit status {self.rc}")
        if "Traceback (most recent call last)" in self.stderr:
            out.append("traceback")
        line = self.error_line
        if "error:" not in line:
            out.append(f"last stderr line is no error line: {line[:200]!r}")
        elif not re.search(self.case.expect, line):
            out.append(f"message {line[:300]!r} does not match {self.case.expect!r}")
        if self.changed:
            out.append(f"workspace changed: {self.changed[:5]}")
        return out

    @property
    def handled(self) -> bool:
        return not self.problems()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file (size, mtime) and directory under ``root``, hidden temporaries included.

    A directory's own mtime is left out: a temporary made and removed again leaves nothing behind."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[str((Path(dirpath) / name).relative_to(root)) + "/"] = (0, 0)
        for name in filenames:
            st = (Path(dirpath) / name).lstat()
            out[str((Path(dirpath) / name).relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def _diff(before: dict, after: dict) -> list[str]:
    new = [f"+{k}" for k in after.keys() - before.keys()]
    gone = [f"-{k}" for k in before.keys() - after.keys()]
    changed = [f"~{k}" for k in before.keys() & after.keys() if before[k] != after[k]]
    return sorted(new + gone + changed)


@contextlib.contextmanager
def _environ(extra: dict[str, str]):
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _in_process(argv: list[str], workdir: Path, env: dict[str, str]) -> tuple[int | None, str]:
    from flagops.cli import main

    err = io.StringIO()
    with contextlib.chdir(workdir), _environ(env), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            rc = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # noqa: BLE001 - an escaped exception is the defect this matrix looks for
            traceback.print_exc(file=err)
            rc = None
    return rc, err.getvalue()


def _subprocess(argv: list[str], workdir: Path, env: dict[str, str]) -> tuple[int | None, str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    proc = subprocess.run(
        [sys.executable, "-m", "flagops.cli", *argv],
        cwd=workdir,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    return proc.returncode, proc.stderr


def run_case(case: Case, workdir: Path) -> Outcome:
    """Set the case up in the empty ``workdir``, run the CLI there and compare snapshots."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = case.setup(workdir)
    before = snapshot(workdir)
    runner = _subprocess if case.subprocess else _in_process
    env = {k: v.format(workdir=workdir) for k, v in case.env.items()}
    rc, stderr = runner(argv, workdir, env)
    return Outcome(case, rc, stderr, _diff(before, snapshot(workdir)))
