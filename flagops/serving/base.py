"""What every served kind shares: a KServe ``Model`` whose work goes through a ``ModelRuntime``.

A kind (``embedder_model``, ``m3_model``, ``reranker_model``) subclasses ``ServedModel`` and
supplies only what differs:

* ``load_backend(source)``: the loaded object that does the maths (an encoder or a pair
  scorer), with ``serve.pad_to_multiple_of`` applied; a dummy returns a fake one and reads
  nothing;
* the runtime's three hooks over that backend (see ``flagops.serving.runtime``):
  ``token_lengths(key, items)``, ``max_length(key)`` and ``run_batch(key, items, max_length)``;
* ``predict`` and the V2 input and output types.

``load`` (KServe calls it once, before serving) sets ``backend`` and ``ready`` and logs
which inference backend serves (``backend_name``, e.g. ``torch-fp32`` or
``torch-int8-dynamic``, with the model's int8 accuracy check when it carries one); the
V2 model metadata route reports the same (``backend_metadata``). ``stop`` closes the
batcher and its threads.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import kserve

from flagops.config import ConfigError, ServeConfig
from flagops.serving.runtime import ModelRuntime

if TYPE_CHECKING:
    from flagops.models.device import Placement
    from flagops.models.quantize import QuantCheck

log = logging.getLogger(__name__)

TEXT_INPUTS = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]  # the V2 input of the text kinds


def resolve_source(source: str) -> str:
    """Registry URIs (``models:/NAME@alias``, ``models:/NAME/VERSION``) become a local directory."""
    if source.startswith("models:/"):
        from flagops.registry.models import fetch_model_dir  # MLflow loads only when asked for

        return str(fetch_model_dir(source))
    return source


def serve_quantize(setting: str, model_dir: str, placement: Placement, *, supported: bool) -> tuple[str, QuantCheck | None]:
    """``("none" | "int8", the check model_dir carries)`` for ``serve.quantize`` = ``setting``.

    int8 is torch's dynamic quantisation: CPU, float32, embedders (``supported``) only.
    ``auto`` quietly stays in float there; an explicit ``int8`` elsewhere is a ConfigError.
    """
    from flagops.models.device import CPU_FP32
    from flagops.models.quantize import QuantCheck, resolve_quantize

    check = QuantCheck.load(model_dir)
    if setting == "none" or (setting == "auto" and (not supported or placement != CPU_FP32)):
        return "none", check
    if not supported:
        raise ConfigError("serve.quantize=int8 serves embedders only (not M3 or rerankers); set serve.quantize=auto or none")
    if placement != CPU_FP32:
        raise ConfigError(f"serve.quantize=int8 runs on CPU in float32, not on {placement}; set serve.device=cpu or serve.quantize=auto")
    return resolve_quantize(setting, model_dir), check


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
        self.backend_name = "unloaded"  # what does the maths, set by load_backend (flagops.models.device.backend_name)
        self.quant_check: QuantCheck | None = None  # the model's int8 accuracy check, when it carries one
        self.runtime = ModelRuntime(
            name,
            serve_cfg,
            token_lengths=self.token_lengths,
            max_length=self.max_length,
            run_batch=self.run_batch,
        )

    def load(self) -> bool:
        self.backend = self.load_backend(resolve_source(self.source))
        check = f"; accuracy check {self.quant_check.summary()}" if self.quant_check else "; no accuracy check"
        log.info("model %s served by %s%s", self.name, self.backend_name, check)
        self.ready = True
        return self.ready

    def backend_metadata(self) -> dict[str, Any]:
        """What the V2 metadata route adds: the backend, and the accuracy check of its lossy path when the model carries one."""
        meta: dict[str, Any] = {"backend": self.backend_name}
        if self.quant_check is not None:
            meta["quantization_check"] = {"summary": self.quant_check.summary(), "passed": self.quant_check.passed}
        return meta

    def stop(self) -> None:
        self.runtime.stop()
        super().stop()

    # ------------------------------------------------------------ what a kind supplies

    def load_backend(self, source: str) -> Any:
        """The loaded backend for ``source`` (registry URIs already resolved to a directory); sets ``backend_name``."""
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
