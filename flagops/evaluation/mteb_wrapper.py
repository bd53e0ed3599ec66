"""flagops models as ``mteb`` 2.x models, so the official benchmark code scores them.

``mteb_model(source)`` loads a source the way ``flagops eval`` does and wraps it:

* an embedder (``Embedder``) or an M3 checkpoint (``M3Embedder``, its dense vectors) becomes a
  ``FlagopsEncoder``, an ``mteb.models.abs_encoder.AbsEncoder``. Queries (``prompt_type`` query)
  get the query instruction ``flagops eval`` would give them on that task; documents and STS
  sentences get none. Lengths, pooling and normalisation are the model's saved settings.
* a reranker (``load_reranker``: cross-encoder, LLM or layerwise) becomes a ``FlagopsCrossEncoder``,
  whose ``predict`` scores (query, document) pairs with the reranker's raw scores.

Each carries a ``ModelMeta`` built from the loaded model (parameters, embedding size, the
directory's content hash as revision): ``mteb.evaluate`` swaps a model without one for an
empty placeholder. mteb is a dev extra, imported here only: ``pip install 'mteb>=2,<3'``.

mteb joins a document as ``title + " " + text`` where ``flagops eval`` uses a newline; the
WordPiece and SentencePiece tokenisers flagops models use split both alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

try:
    from mteb.models import ModelMeta
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.types import PromptType
except ImportError as exc:  # a dev extra: the library itself never needs it
    raise ImportError(f"flagops.evaluation.mteb_wrapper needs mteb 2.x ({exc}): pip install 'mteb>=2,<3'") from None

from flagops.evaluation.suite import Task, query_instruction, with_instruction

ZH_CODES = ("cmn", "zho")  # ISO 639-3 codes of mteb's Chinese tasks (cmn-Hans, zho-Hans, ...)


def model_directory(source: str) -> Path:
    """The local directory of a model source; ``models:/`` downloads from the registry."""
    from flagops.models.reranker import resolve_reranker_source

    if source.startswith("models:/"):
        from flagops.registry.models import fetch_model_dir

        return fetch_model_dir(source)
    return resolve_reranker_source(source)


def model_meta(
    module, source: str, path: Path, *, name: str | None, model_type: str, embed_dim: int | None, max_tokens: int | None, **extra
) -> ModelMeta:
    """mteb's record of a loaded flagops model (from ``source``, weights in ``path``): what mteb
    files the results under and shows beside them.

    ``name`` must be ``org/model`` (mteb's rule); default ``flagops/<package>`` for
    ``pkg:<package>``, else ``flagops/<directory name>``. The revision is ``dir_sha256`` of the
    model directory, the ``model_sha256`` the registry tags each version with, so a result
    names the exact weights it came from.
    """
    from flagops.registry.lineage import dir_sha256

    params = list(module.parameters())
    return ModelMeta(
        loader=None,  # built from a loaded model by mteb_model, not by name through mteb.get_model
        name=name or f"flagops/{source[4:] if source.startswith('pkg:') else path.name}",
        revision=dir_sha256(path),
        release_date=None,
        languages=None,  # not recorded with a flagops model
        n_parameters=sum(p.numel() for p in params),
        memory_usage_mb=round(sum(p.numel() * p.element_size() for p in params) / 2**20, 2),
        max_tokens=max_tokens,
        embed_dim=embed_dim,
        license=None,
        open_weights=True,
        public_training_code=None,
        public_training_data=None,
        framework=["PyTorch", "Transformers"],
        training_datasets=None,
        model_type=[model_type],
        **extra,
    )


def task_language(task_metadata, hf_subset: str) -> str:
    """``zh`` or ``en``, as ``flagops eval`` tells tasks apart: the subset's languages, else the task's."""
    langs = task_metadata.eval_langs
    codes = langs.get(hf_subset, [c for v in langs.values() for c in v]) if isinstance(langs, dict) else langs
    return "zh" if any(code.split("-")[0] in ZH_CODES for code in codes) else "en"


class FlagopsEncoder(AbsEncoder):
    """An ``Embedder`` or ``M3Embedder`` (dense) as an mteb encoder.

    ``similarity`` follows the model: cosine when it L2-normalises (what ``flagops eval``'s inner
    product then is), dot product otherwise.
    """

    def __init__(self, model, source: str, *, name: str | None = None, directory: Path | None = None):
        """``source``: what the model was loaded from (it picks the BGE zh default, as in
        ``flagops eval``); ``directory``: its weights, default ``model_directory(source)``."""
        self.model = model
        self.source = source
        settings = model.settings
        self.mteb_model_meta = model_meta(
            model,
            source,
            directory or model_directory(source),
            name=name,
            model_type="dense",
            embed_dim=self._embedder.model.config.hidden_size,
            max_tokens=settings.passage_max_len,
            similarity_fn_name="cosine" if settings.normalize else "dot",
            use_instructions=bool(settings.query_instruction),
        )

    @property
    def _embedder(self):
        """The ``Embedder`` holding the settings (an ``M3Embedder`` wraps one)."""
        return getattr(self.model, "embedder", self.model)

    def query_instruction(self, task_metadata, hf_subset: str) -> str:
        """The instruction ``flagops eval`` gives this task's queries (``suite.query_instruction``):
        the model's saved one, else BGE's Chinese one for a bge-zh model on a Chinese retrieval task."""
        task = Task(task_metadata.name, task_metadata.type.lower(), None, language=task_language(task_metadata, hf_subset))
        return query_instruction(task, self.source, self.model.settings.query_instruction)[0]

    def encode(
        self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type: PromptType | None = None, **kwargs: Any
    ) -> np.ndarray:
        """float32 (n, dim) for the texts of ``inputs``; only queries get an instruction."""
        texts = [text for batch in inputs for text in batch["text"]]
        is_query = prompt_type == PromptType.query
        instruction = self.query_instruction(task_metadata, hf_subset) if is_query else ""
        progress = f"{task_metadata.name} {prompt_type.value if prompt_type else 'texts'}" if kwargs.get("show_progress_bar") else None
        with with_instruction(self._embedder, instruction):
            return self.model.encode(texts, is_query=is_query, batch_size=kwargs.get("batch_size", 32), progress=progress)


class FlagopsCrossEncoder:
    """A flagops reranker as an mteb cross-encoder (``mteb.models.models_protocols.CrossEncoderProtocol``)."""

    def __init__(self, model, source: str, *, name: str | None = None, directory: Path | None = None):
        self.model = model
        self.mteb_model_meta = model_meta(
            model,
            source,
            directory or model_directory(source),
            name=name,
            model_type="cross-encoder",
            embed_dim=None,
            max_tokens=getattr(model, "max_length", None),
            similarity_fn_name=None,
            use_instructions=False,
        )

    def predict(
        self, inputs1, inputs2, *, task_metadata, hf_split: str, hf_subset: str, prompt_type: PromptType | None = None, **kwargs: Any
    ) -> np.ndarray:
        """Raw relevance scores (n,) of the pairs (i-th query text, i-th document text)."""
        queries = [text for batch in inputs1 for text in batch["text"]]
        documents = [text for batch in inputs2 for text in batch["text"]]
        if len(queries) != len(documents):
            raise ValueError(f"predict needs one document per query; got {len(queries)} queries and {len(documents)} documents")
        return self.model.score_pairs(list(zip(queries, documents, strict=True)), batch_size=kwargs.get("batch_size", 32))


def mteb_model(source: str, *, name: str | None = None) -> FlagopsEncoder | FlagopsCrossEncoder:
    """Load ``source`` as ``flagops eval`` does and wrap it for ``mteb.evaluate``.

    A reranker directory gives a cross-encoder, a directory with M3 heads an M3 model (scored on
    its dense vectors), anything else an embedder; each placed as ``flagops eval`` places it.
    ``name``: the ``org/model`` mteb files results under (default ``flagops/<package or directory name>``).
    """
    from flagops.models.device import inference_placement, place
    from flagops.models.embedder import Embedder
    from flagops.models.m3 import M3Embedder, head_files
    from flagops.models.reranker import NotARerankerError, load_reranker, reranker_kind

    path = model_directory(source)
    try:
        reranker_kind(path)
    except NotARerankerError:
        model = M3Embedder.load(path, require_heads=True) if head_files(path) else Embedder.load(path)
        return FlagopsEncoder(place(model, inference_placement()), source, name=name, directory=path)
    return FlagopsCrossEncoder(place(load_reranker(path), inference_placement()), source, name=name, directory=path)
