"""Model kinds and the lookup tables the server builds from (no if-chains on the kind).

Adding a kind: add a ``ModelKind`` member (and its value to ``ServeConfig.kind``), its
model class and dummy to ``MODEL_CLASSES`` and ``DUMMY_CLASSES``, its extra HTTP routes to
``ROUTES``, its V1 body schema to ``V1_SCHEMAS``, and a rule that recognises its directories
to ``MARKER_FILES`` (checked first, in order) or ``ARCHITECTURE_SUFFIXES``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import kserve
from pydantic import BaseModel

from flagops.config import ServeConfig
from flagops.serving import embedder_model, m3_model, reranker_model, visual_model
from flagops.serving.dummy import DummyEmbedderModel, DummyM3Model, DummyRerankerModel, DummyVisualModel
from flagops.serving.embedder_model import EmbedderModel, OpenAIEmbeddingRequest, openai_embeddings
from flagops.serving.m3_model import M3Model
from flagops.serving.reranker_model import RerankerModel, RerankRequest, rerank_route
from flagops.serving.visual_model import VisualModel


class ModelKind(StrEnum):
    EMBEDDER = "embedder"
    RERANKER = "reranker"
    M3 = "m3"
    VISUAL = "visual"  # Visualized-BGE: an image and/or a text in, one embedding out


# config.py spells the kinds out as a Literal (loading a profile imports no kserve);
# tests/serving/test_serving_m3.py checks that it lists every ModelKind.


class KindError(ValueError):
    """The kind of a model directory cannot be told; the message says how to name it."""


@dataclass(frozen=True)
class JsonRoute:
    """A JSON route beside kserve's: ``answer(model, request)`` for the model the body names."""

    path: str
    request: type[BaseModel]
    answer: Callable[[Any, Any], Awaitable[dict]]
    summary: str


EMBEDDINGS = JsonRoute("/v1/embeddings", OpenAIEmbeddingRequest, openai_embeddings, "OpenAI-compatible embeddings")
RERANK = JsonRoute("/v1/rerank", RerankRequest, rerank_route, "Rerank documents (infinity / TEI / Cohere shape)")

MODEL_CLASSES: dict[ModelKind, type[kserve.Model]] = {
    ModelKind.EMBEDDER: EmbedderModel,
    ModelKind.RERANKER: RerankerModel,
    ModelKind.M3: M3Model,
    ModelKind.VISUAL: VisualModel,
}
DUMMY_CLASSES: dict[ModelKind, type[kserve.Model]] = {
    ModelKind.EMBEDDER: DummyEmbedderModel,
    ModelKind.RERANKER: DummyRerankerModel,
    ModelKind.M3: DummyM3Model,
    ModelKind.VISUAL: DummyVisualModel,
}
ROUTES: dict[ModelKind, tuple[JsonRoute, ...]] = {
    ModelKind.EMBEDDER: (EMBEDDINGS,),
    ModelKind.RERANKER: (RERANK,),
    ModelKind.M3: (EMBEDDINGS,),  # its dense vectors
    ModelKind.VISUAL: (),
}
V1_SCHEMAS: dict[ModelKind, dict] = {
    ModelKind.EMBEDDER: embedder_model.V1_SCHEMA,
    ModelKind.RERANKER: reranker_model.V1_SCHEMA,
    ModelKind.M3: m3_model.V1_SCHEMA,
    ModelKind.VISUAL: visual_model.V1_SCHEMA,
}
# A file only one kind writes decides first; then config.json's architecture name. M3 comes
# before the embedder: an M3 checkpoint also holds flagops_embedder.json (its dense part).
# FlagEmbedding's M3 checkpoints carry the head files alone.
MARKER_FILES: tuple[tuple[str, ModelKind], ...] = (
    ("flagops_visual_bge.json", ModelKind.VISUAL),  # train_visual_bge's output: a text encoder's directory plus vision/
    ("flagops_m3.json", ModelKind.M3),
    ("colbert_linear.pt", ModelKind.M3),
    ("sparse_linear.pt", ModelKind.M3),
    ("flagops_embedder.json", ModelKind.EMBEDDER),
    ("flagops_reranker.json", ModelKind.RERANKER),  # train_reranker's output: cross-encoder, LLM or layerwise
)
ARCHITECTURE_SUFFIXES: tuple[tuple[str, ModelKind], ...] = (
    ("ForSequenceClassification", ModelKind.RERANKER),
    ("ForMaskedLM", ModelKind.EMBEDDER),  # e.g. a RetroMAE-pretrained encoder; AutoModel takes its base
    ("Model", ModelKind.EMBEDDER),  # BertModel, XLMRobertaModel, ...
)


def detect_kind(directory: str | Path) -> ModelKind:
    """The kind of the HF model in ``directory``, from marker files or config.json."""
    directory = Path(directory)
    for marker, kind in MARKER_FILES:
        if (directory / marker).is_file():
            return kind
    try:
        architectures = json.loads((directory / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError) as exc:
        raise KindError(f"cannot read {directory / 'config.json'} ({exc}); pass --kind") from None
    for name in architectures:
        for suffix, kind in ARCHITECTURE_SUFFIXES:
            if name.endswith(suffix):
                return kind
    choices = ", ".join(k.value for k in ModelKind)
    raise KindError(f"cannot tell the kind of {directory} (architectures: {architectures}); pass --kind {{{choices}}}")


def model_kind(model: kserve.Model) -> ModelKind:
    """The kind a built model serves (dummies count as their real kind)."""
    for kind, cls in MODEL_CLASSES.items():
        if isinstance(model, cls):
            return kind
    raise TypeError(f"{type(model).__name__} is no served kind")


def build_model(kind: ModelKind, name: str, source: str, serve_cfg: ServeConfig, *, dummy: bool = False):
    """An unloaded model of ``kind``; the dummy reads nothing at ``source``."""
    table = DUMMY_CLASSES if dummy else MODEL_CLASSES
    return table[kind](name, source, serve_cfg)
