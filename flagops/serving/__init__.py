"""KServe model classes for each model kind, and the server ``flagops serve`` runs (``server.py``).

* ``base.py``: ``ServedModel``, the load/stop/runtime code every kind shares;
* ``embedder_model.py``, ``m3_model.py``, ``reranker_model.py``: one ``ServedModel`` per
  kind, with its request parsing and its JSON route (``/v1/embeddings``, ``/v1/rerank``);
* ``kinds.py``: the kind enum, its lookup tables and detection from a model directory;
* ``runtime.py``, ``batching.py``: token limits, worker threads, dynamic micro-batching;
* ``protocol.py``: request checks shared by the kinds; ``metrics.py``: Prometheus;
* ``app.py``: kserve's FastAPI app with flagops' routes, body cap and error handlers;
* ``dummy.py``: weightless models for API tests;
* ``smoke.py``: start `flagops serve` as a subprocess and send it a smoke request.

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
