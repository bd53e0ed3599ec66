"""The one place flagops talks to MLflow.

* ``tracking``: tracking URI, the pipeline's parent run, one nested run per step, and
  ``configure_env`` (flagops' MLflow defaults, telemetry off), which runs before MLflow is used.
* ``models``: register a candidate as a pyfunc version (or reuse one), fetch a version back.
* ``pyfunc``: the pyfunc class, signature and pinned requirements of a registered version.
* ``lineage``: content hashes, git commit and the lineage tags of a version.
* ``aliases``: ``@champion`` / ``@challenger`` and ``promote``, which moves them.
* ``promotion``: the champion/challenger gate, a pure function.
* ``lock``: one promotion at a time per model (a lock kept in the registry), and retries
  for a busy sqlite store.
* ``card``: the model card (README.md) of a registered version.

Submodules are imported explicitly (``from flagops.registry import models``) so that
importing this package stays cheap.
"""
