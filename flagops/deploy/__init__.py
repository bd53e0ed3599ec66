"""Deploy the champion to KServe: render its InferenceService, apply it, move canary traffic.

* ``inference_service``: the InferenceService as a plain dict (no kserve import), from a
  ``DeployConfig`` and a ``Champion``; the step, ``flagops deploy`` and the committed
  manifests/overlays/*/inferenceservice.yaml all come from it.
* ``champion``: what a deployment reads from and records in the MLflow registry.
* ``apply``: the modes, dry-run (write the YAML), local (serve it here) and cluster (kubectl).
* ``rollout``: deploy, promote the canary, roll back; ``cli``: ``flagops deploy ...``.
"""
