"""The cross-encoder reranker as a KServe model: a query and passages in, one score per passage.

Three request shapes:

* V1, to ``predict``: ``{"instances": [{"query": "...", "passages": ["...", ...]}, ...],
  "normalize": false}`` returns ``{"predictions": [[score, ...], ...]}``, one list per instance.
* V2 / Open Inference Protocol, to ``predict``: BYTES inputs ``query`` (shape ``[1]``, or
  ``[n]`` for one query per passage) and ``passages`` (``[n]``), request parameter
  ``normalize``, return one FP32 output ``score`` of shape ``[n]``.
* ``POST /v1/rerank`` in the infinity / TEI / Cohere shape, to ``rerank_route``:
  ``{"model", "query", "documents", "top_n"?, "return_documents"?, "raw_scores"?}`` returns
  ``{"results": [{"index", "relevance_score", "document"?}], "model", "usage"}``, best first.

Scores are the model's raw logits; ``normalize`` (V1, V2) maps them through a sigmoid, and
``/v1/rerank`` does so unless ``raw_scores`` is true, as TEI does. Every pair of every
request goes through the model's ``ModelRuntime`` (token limits, micro-batching, metrics).
"""

from __future__ import annotations

import copy
import uuid
from typing import Annotated, Any, Protocol

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, WithJsonSchema

from flagops.config import ServeConfig
from flagops.serving.base import ServedModel, serve_quantize
from flagops.serving.protocol import check_bool, check_keys, check_text, check_texts, v1_body_schema, v2_parameters, v2_response, v2_texts

OUTPUT_NAME = "score"
V1_KEYS = ("instances", "normalize")
INSTANCE_KEYS = ("query", "passages")
V2_INPUTS = ("query", "passages")
V2_PARAMETERS = ("normalize",)
PAIRS = "pairs"  # the batching key: any two pairs can share a batch
# The V1 body, for /openapi.json
V1_SCHEMA = v1_body_schema(
    {
        "type": "object",
        "required": ["query", "passages"],
        "additionalProperties": False,
        "properties": {"query": {"type": "string"}, "passages": {"type": "array", "minItems": 1, "items": {"type": "string"}}},
    },
    normalize={"type": "boolean"},
)

Pair = tuple[str, str]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class PairScorer(Protocol):
    """What a served reranker needs from its model."""

    def max_length(self) -> int:
        """Tokens the model reads per (query, passage) pair."""

    def token_lengths(self, pairs: list[Pair]) -> list[int]:
        """Untruncated tokens per pair; called on the tokenizer thread only."""

    def score_pairs(self, pairs: list[Pair], *, max_length: int) -> np.ndarray:
        """Raw relevance logits, float32 (n,); called on the model thread only."""


class RerankerScorer:
    """A loaded reranker (cross-encoder, LLM or layerwise: ``models.reranker.load_reranker``)
    behind the ``PairScorer`` interface."""

    def __init__(self, reranker):
        self.reranker = reranker
        # The tokenizer thread counts with its own tokenizer (a fast tokenizer is not safe to share
        # across threads); the shallow copy shares the weights and counts as the model reads pairs.
        self.counter = copy.copy(reranker)
        self.counter.tokenizer = copy.deepcopy(reranker.tokenizer)

    def max_length(self) -> int:
        return self.reranker.max_length

    def token_lengths(self, pairs: list[Pair]) -> list[int]:
        return self.counter.token_lengths(pairs)

    def score_pairs(self, pairs: list[Pair], *, max_length: int) -> np.ndarray:
        return self.reranker.score_pairs(pairs, batch_size=len(pairs), max_length=max_length)


# ---------------------------------------------------------------- request parsing


def parse_v1(body: Any, cfg: ServeConfig) -> tuple[list[tuple[str, list[str]]], bool]:
    """``([(query, passages), ...], normalize)`` from a V1 body, every text checked."""
    if not isinstance(body, dict):
        raise InvalidInput(
            'expected a JSON object {"instances": [{"query": "...", "passages": ["...", ...]}]} sent with Content-Type: application/json'
        )
    body = check_keys(body, V1_KEYS, strict=cfg.strict)
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('"instances" must be a non-empty list of {"query": "...", "passages": ["...", ...]}')
    groups, count = [], 0
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            kind = type(instance).__name__
            raise InvalidInput(f"instances[{i}] is {kind}, expected an object with query and passages")
        instance = check_keys(instance, INSTANCE_KEYS, strict=cfg.strict, where=f" in instances[{i}]")
        if set(INSTANCE_KEYS) - set(instance):
            raise InvalidInput(f"instances[{i}] needs both query and passages")
        query = check_text(instance["query"], cfg, f"instances[{i}].query")
        passages = check_texts(instance["passages"], cfg, f"instances[{i}].passages", count_from=count)
        count += len(passages)
        groups.append((query, passages))
    return groups, check_bool(body.get("normalize", False), "normalize")


def parse_v2(request: InferRequest, cfg: ServeConfig) -> tuple[list[Pair], bool]:
    """``(pairs, normalize)`` from BYTES inputs ``query`` ([1] or [n]) and ``passages`` ([n])."""
    by_name = {inp.name: inp for inp in request.inputs}
    if sorted(by_name) != sorted(V2_INPUTS) or len(request.inputs) != len(V2_INPUTS):
        got = ", ".join(repr(inp.name) for inp in request.inputs) or "none"
        raise InvalidInput(f"expected two BYTES inputs named 'query' and 'passages', got {got}")
    params = v2_parameters(request, V2_PARAMETERS, strict=cfg.strict)
    passages = check_texts(v2_texts(by_name["passages"]), cfg, "passages")
    queries = check_texts(v2_texts(by_name["query"]), cfg, "query")
    if len(queries) not in (1, len(passages)):
        raise InvalidInput(f"query holds {len(queries)} texts; send one, or one per passage ({len(passages)})")
    queries = queries * len(passages) if len(queries) == 1 else queries
    return list(zip(queries, passages, strict=True)), check_bool(params.get("normalize", False), "normalize")


# ---------------------------------------------------------------- the model


class RerankerModel(ServedModel):
    """A cross-encoder reranker served over KServe's V1 and V2 protocols."""

    backend: PairScorer

    def load_backend(self, source: str) -> PairScorer:
        from flagops.models.device import inference_placement, place, torch_backend_name  # serve.device / serve.dtype
        from flagops.models.reranker import load_reranker  # torch loads only for a real model

        placement = inference_placement(self.serve_cfg, name="serve")
        _, self.quant_check = serve_quantize(self.serve_cfg.quantize, source, placement, supported=False)  # float only
        reranker = place(load_reranker(source), placement)
        reranker.pad_to_multiple_of = self.serve_cfg.pad_to_multiple_of
        self.backend_name = torch_backend_name(reranker)
        return RerankerScorer(reranker)

    def token_lengths(self, key: str, pairs: list[Pair]) -> list[int]:
        return self.backend.token_lengths(pairs)

    def max_length(self, key: str) -> int:
        return self.backend.max_length()

    def run_batch(self, key: str, pairs: list[Pair], max_length: int) -> np.ndarray:
        return self.backend.score_pairs(pairs, max_length=max_length)

    async def score(self, pairs: list[Pair], *, field: str) -> tuple[np.ndarray, int]:
        """Raw scores of checked ``pairs`` in micro-batches: float32 (n,), and tokens read."""
        rows, tokens = await self.runtime.infer(PAIRS, pairs, field)
        return np.asarray(rows, dtype=np.float32), tokens

    async def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None):
        if isinstance(payload, InferRequest):
            pairs, normalize = parse_v2(payload, self.serve_cfg)
            scores, _ = await self.score(pairs, field="passages")
            scores = sigmoid(scores) if normalize else scores
            return v2_response(payload, self.name, [InferOutput(OUTPUT_NAME, [len(pairs)], "FP32", data=scores)])
        groups, normalize = parse_v1(payload, self.serve_cfg)
        pairs = [(query, passage) for query, passages in groups for passage in passages]
        scores, _ = await self.score(pairs, field="passages")  # one submit: all pairs may share a batch
        scores = sigmoid(scores) if normalize else scores
        bounds = np.cumsum([0] + [len(passages) for _, passages in groups])
        return {"predictions": [scores[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]}

    def get_input_types(self) -> list[dict]:
        return [
            {"name": "query", "datatype": "BYTES", "shape": [-1]},
            {"name": "passages", "datatype": "BYTES", "shape": [-1]},
        ]

    def get_output_types(self) -> list[dict]:
        return [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1]}]


# ---------------------------------------------------------------- the rerank route

Texts = Annotated[
    Any,  # list[str], left to check_texts for the same messages as V1 and V2
    WithJsonSchema({"type": "array", "items": {"type": "string"}, "minItems": 1}),
]


class RerankRequest(BaseModel):
    """The body of ``POST /v1/rerank`` (infinity, TEI and Cohere share this shape)."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr
    query: StrictStr
    documents: Texts
    top_n: int | None = Field(None, ge=1, strict=True)  # None: every document
    return_documents: StrictBool = False
    raw_scores: StrictBool = False  # True: logits, not sigmoid(logits)


async def rerank_route(model: RerankerModel, req: RerankRequest) -> dict:
    """Answer a validated ``POST /v1/rerank`` request for ``model``: results best first."""
    query = check_text(req.query, model.serve_cfg, "query")
    documents = check_texts(req.documents, model.serve_cfg, "documents")
    scores, tokens = await model.score([(query, d) for d in documents], field="documents")
    scores = scores if req.raw_scores else sigmoid(scores)
    order = np.argsort(-scores, kind="stable")[: req.top_n]
    results = []
    for i in order.tolist():
        result = {"index": i, "relevance_score": float(scores[i])}
        if req.return_documents:
            result["document"] = documents[i]
        results.append(result)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {
        "object": "rerank",
        "id": f"rerank-{uuid.uuid4().hex}",
        "results": results,
        "model": req.model,
        "usage": usage,
    }
