"""What every served kind shares: a KServe ``Model`` whose work goes through a ``ModelRuntime``.

A kind (``embedder_model``, ``m3_model``, ``reranker_model``) subclasses ``ServedModel`` and
supplies only what differs:

* ``load_backend(source)``: the loaded object that does the maths (an encoder or a pair
  scorer), with ``serve.pad_to_multiple_of`` applied; a dummy returns a fake one and reads
  nothing;
* the runtime's three hooks over that backend (see ``flagops.serving.runtime``):
  ``token_lengths(key, items)``, ``max_length(key)`` and ``run_batch(key, items, max_length)``;
* ``predict`` and the V2 input and output types.

``load`` (KServe calls it once, before serving) sets ``backend`` and ``ready``; ``stop``
closes the batcher and its threads.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import kserve

from flagops.config import ServeConfig
from flagops.serving.runtime import ModelRuntime

TEXT_INPUTS = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]  # the V2 input of the text kinds


def resolve_source(source: str) -> str:
    """Registry URIs (``models:/NAME@alias``, ``models:/NAME/VERSION``) become a local directory."""
    if source.startswith("models:/"):
        from flagops.registry.models import fetch_model_dir  # MLflow loads only when asked for

        return str(fetch_model_dir(source))
    return source


class ServedModel(kserve.Model):
    """One model of one kind behind KServe's routes, with limits, micro-batching and metrics.

    Args:
        name: the model's name in the routes (``/v1/models/NAME:predict``).
        source: what ``load_backend`` loads: a directory, ``models:/NAME@alias``, ``tiny-bert``...
        serve_cfg: limits, batching and padding (the ``serve`` section).
    """

    def __init__(self, name: str, source: str, serve_cfg: ServeConfig = ServeConfig()):
        super().__init__(name)
        self.source = source
        self.serve_cfg = serve_cfg
        self.backend: Any = None  # set by load()
        self.runtime = ModelRuntime(
            name,
            serve_cfg,
            token_lengths=self.token_lengths,
            max_length=self.max_length,
            run_batch=self.run_batch,
        )

    def load(self) -> bool:
        self.backend = self.load_backend(resolve_source(self.source))
        self.ready = True
        return self.ready

    def stop(self) -> None:
        self.runtime.stop()
        super().stop()

    # ------------------------------------------------------------ what a kind supplies

    def load_backend(self, source: str) -> Any:
        """The loaded backend for ``source`` (registry URIs already resolved to a directory)."""
        raise NotImplementedError

    def token_lengths(self, key: Hashable, items: list[Any]) -> list[int]:
        """Untruncated tokens per item; called on the tokenizer thread only."""
        raise NotImplementedError

    def max_length(self, key: Hashable) -> int:
        """Tokens the model reads per item for ``key``."""
        raise NotImplementedError

    def run_batch(self, key: Hashable, items: list[Any], max_length: int) -> Sequence[Any]:
        """One forward pass over ``items``: one row each; called on the model thread only."""
        raise NotImplementedError
