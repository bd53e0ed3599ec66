"""The one kubectl wrapper: deploy (``deploy.mode=cluster``) and ``flagops train
submit-pytorchjob`` both go through ``kubectl``, so a missing binary, an unreachable
cluster and a refused request each read as one line naming the command and the fix.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess

from flagops.config import ConfigError

KUBECTL_TIMEOUT_S = 60


def kubectl(*args: str, context: str, missing: str, stdin: str | None = None, timeout: float | None = None) -> str:
    """Run ``kubectl ARGS`` and return its stdout.

    Args:
        args: kubectl's arguments.
        context: what the error lines start with, e.g. ``deploy.mode=cluster``.
        missing: the whole error line when kubectl is not on PATH.
        stdin: text fed to kubectl (``apply -f -``).
        timeout: seconds before the call counts as hung (an unreachable API server); default
            ``KUBECTL_TIMEOUT_S``.

    Raises:
        ConfigError: kubectl is missing, timed out or exited non-zero (its last stderr line).
    """
    binary = shutil.which("kubectl")
    if binary is None:
        raise ConfigError(missing)
    command = shlex.join(["kubectl", *args])
    timeout = KUBECTL_TIMEOUT_S if timeout is None else timeout
    try:
        done = subprocess.run([binary, *args], input=stdin, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ConfigError(
            f"{context}: `{command}` took over {timeout:.0f} s; is the cluster reachable? (check `kubectl config current-context`)"
        ) from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        raise ConfigError(f"{context}: `{command}` failed: {reason}")
    return done.stdout
