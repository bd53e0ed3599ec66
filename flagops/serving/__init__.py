"""KServe model classes for each model kind, and the server entry point (``server.py``).

``kserve.model_server`` parses ``sys.argv`` when it is imported, with abbreviations
allowed, so ``--model`` or ``--host`` meant for flagops would be taken as kserve flags.
Every flagops module that needs kserve imports it through this package, which imports
kserve once with an empty argument list.
"""

import sys

_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    import kserve  # noqa: F401  (imported for its side effect, with argv hidden)
finally:
    sys.argv = _argv
del _argv
