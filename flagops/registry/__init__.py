"""The one place flagops talks to MLflow.

* ``tracking``: tracking URI, the pipeline's parent run, one nested run per step.
* ``models``: register a candidate as a pyfunc version, move the aliases, fetch a version back.
* ``promotion``: the champion/challenger gate, a pure function.
* ``card``: the model card (README.md) of a registered version.

Submodules are imported explicitly (``from flagops.registry import models``) so that
importing this package stays cheap.
"""
