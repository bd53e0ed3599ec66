"""The embedder as a KServe model: texts in, L2-normalised float32 vectors out.

Three request shapes:

* V1, to ``predict``: ``{"instances": ["text", ...] | [{"text": "..."}, ...], "is_query": false}``
  returns ``{"predictions": [[float, ...], ...]}``.
* V2 / Open Inference Protocol, to ``predict``: one BYTES input of texts (request
  parameter ``is_query``) returns one FP32 output ``embedding`` of shape ``[n, dim]``.
* OpenAI ``POST /v1/embeddings``, to ``openai_embeddings`` (the server mounts it).

All three validate through ``flagops.serving.protocol`` and encode through the model's
``ModelRuntime`` (token limits, micro-batching, metrics) over its ``TextEncoder``, so the
dummy model (``flagops.serving.dummy``) differs only in its encoder. Bad input is HTTP 400
(``InvalidInput`` in kserve's routes), never a 500.
"""

from __future__ import annotations

import base64
import copy
from typing import Annotated, Any, Literal, Protocol

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from flagops.serving.base import TEXT_INPUTS, ServedModel, serve_quantize
from flagops.serving.protocol import check_bool, check_keys, check_texts, v1_body_schema, v2_parameters, v2_response, v2_texts

OUTPUT_NAME = "embedding"
V1_KEYS = ("instances", "is_query")
V2_PARAMETERS = ("is_query",)
# The V1 body, for /openapi.json
V1_SCHEMA = v1_body_schema(
    {"anyOf": [{"type": "string"}, {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}]},
    is_query={"type": "boolean"},
)


class TextEncoder(Protocol):
    """What a served embedder needs from its encoder."""

    dim: int

    def max_length(self, *, is_query: bool) -> int:
        """Tokens the model reads per text."""

    def token_lengths(self, texts: list[str], *, is_query: bool) -> list[int]:
        """Untruncated tokens per text; called on the tokenizer thread only."""

    def encode(self, texts: list[str], *, is_query: bool, max_length: int) -> np.ndarray:
        """Unit vectors, float32 (n, dim); called on the model thread only."""


class BGEEncoder:
    """A loaded ``Embedder`` behind the ``TextEncoder`` interface."""

    def __init__(self, embedder):
        self.embedder = embedder
        self.dim = embedder.model.config.hidden_size
        self.counting_tokenizer = copy.deepcopy(embedder.tokenizer)  # its own, for the tokenizer thread

    def max_length(self, *, is_query: bool) -> int:
        s = self.embedder.settings
        return s.query_max_len if is_query else s.passage_max_len

    def token_lengths(self, texts: list[str], *, is_query: bool) -> list[int]:
        # What the model would read untruncated: instruction and special tokens included.
        instruction = self.embedder.settings.query_instruction if is_query else ""
        enc = self.counting_tokenizer(
            [instruction + t for t in texts],
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # no "longer than the maximum" warning: the runtime compares to the limit
        )
        return [len(ids) for ids in enc["input_ids"]]

    def encode(self, texts: list[str], *, is_query: bool, max_length: int) -> np.ndarray:
        # One micro-batch is one forward pass.
        return self.embedder.encode(texts, is_query=is_query, batch_size=len(texts), max_length=max_length)


# ---------------------------------------------------------------- request parsing


def parse_v1(body: Any, strict: bool, keys: tuple[str, ...] = V1_KEYS) -> tuple[Any, bool, dict]:
    """``(texts, is_query, body)`` from a V1 body; ``texts`` is checked later by ``check_texts``.

    ``keys`` are the body's valid keys (a kind may add its own); ``body`` keeps those it holds.
    """
    if not isinstance(body, dict):
        raise InvalidInput('expected a JSON object {"instances": ["text", ...]} sent with Content-Type: application/json')
    body = check_keys(body, keys, strict=strict)
    if "instances" not in body:
        raise InvalidInput('missing "instances": send {"instances": ["text", ...]}')
    instances = body["instances"]
    if isinstance(instances, list):
        # {"text": ...} instances unwrap to their text; anything else fails in check_texts.
        instances = [x["text"] if isinstance(x, dict) and set(x) == {"text"} else x for x in instances]
    return instances, check_bool(body.get("is_query", False), "is_query"), body


def parse_v2(request: InferRequest, strict: bool, parameters: tuple[str, ...] = V2_PARAMETERS) -> tuple[list[Any], bool, dict]:
    """``(texts, is_query, params)`` from an Open Inference Protocol request with one BYTES input.

    ``parameters`` are the request parameters the model reads; ``params`` holds those sent.
    """
    if len(request.inputs) != 1:
        raise InvalidInput(f"expected exactly one BYTES input holding the texts, got {len(request.inputs)} inputs")
    params = v2_parameters(request, parameters, strict=strict)
    return v2_texts(request.inputs[0]), check_bool(params.get("is_query", False), "is_query"), params


# ---------------------------------------------------------------- the model


class EmbedderModel(ServedModel):
    """A BGE embedder served over KServe's V1 and V2 protocols."""

    backend: TextEncoder

    def load_backend(self, source: str) -> TextEncoder:
        import torch  # torch loads only for a real model

        from flagops.models import openvino_backend
        from flagops.models.device import inference_placement, place, torch_backend_name  # serve.device / serve.dtype
        from flagops.models.embedder import Embedder
        from flagops.models.quantize import OPENVINO_BF16, QuantCheck, quantize_int8

        placement = inference_placement(self.serve_cfg, name="serve")
        cfg = self.serve_cfg
        settings = {"kind": "bge", "dtype": cfg.dtype, "quantize": cfg.quantize, "device": placement.device.type}
        if cfg.backend == "openvino" or (cfg.backend == "auto" and openvino_backend.auto_openvino(source, **settings)):
            embedder = Embedder.load(source)
            if cfg.backend == "auto":  # the bf16 its record passed
                self.quant_check = QuantCheck.load(source, OPENVINO_BF16)
                embedder = openvino_backend.use_openvino(embedder, source, torch.bfloat16)
            else:
                embedder = openvino_backend.openvino_on_cpu(embedder, source, placement, key="serve")
            self.backend_name = embedder.model.numerics  # openvino-f32 / openvino-bf16
        else:
            quantize, self.quant_check = serve_quantize(cfg.quantize, source, placement, supported=True)
            embedder = place(Embedder.load(source), placement)
            if quantize == "int8":
                quantize_int8(embedder)
            self.backend_name = torch_backend_name(embedder.model)
        embedder.pad_to_multiple_of = cfg.pad_to_multiple_of
        return BGEEncoder(embedder)

    def token_lengths(self, is_query: bool, texts: list[str]) -> list[int]:
        return self.backend.token_lengths(texts, is_query=is_query)

    def max_length(self, is_query: bool) -> int:
        return self.backend.max_length(is_query=is_query)

    def run_batch(self, is_query: bool, texts: list[str], max_length: int) -> np.ndarray:
        return self.backend.encode(texts, is_query=is_query, max_length=max_length)

    @property
    def dim(self) -> int:
        return self.backend.dim

    async def embed(self, texts: Any, *, is_query: bool, field: str) -> tuple[np.ndarray, int]:
        """Validate ``texts`` and encode them in micro-batches: float32 (n, dim), and tokens read."""
        texts = check_texts(texts, self.serve_cfg, field)
        rows, tokens = await self.runtime.infer(is_query, texts, field)
        return np.stack(rows).astype(np.float32, copy=False), tokens  # (n, dim)

    async def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None):
        strict = self.serve_cfg.strict
        if isinstance(payload, InferRequest):
            texts, is_query, _ = parse_v2(payload, strict)
            vectors, _ = await self.embed(texts, is_query=is_query, field=payload.inputs[0].name)
            output = InferOutput(OUTPUT_NAME, list(vectors.shape), "FP32", data=vectors)
            return v2_response(payload, self.name, [output])
        texts, is_query, _ = parse_v1(payload, strict)
        vectors, _ = await self.embed(texts, is_query=is_query, field="instances")
        return {"predictions": vectors.tolist()}

    def get_input_types(self) -> list[dict]:
        return TEXT_INPUTS

    def get_output_types(self) -> list[dict]:
        return [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, self.dim]}]


# ---------------------------------------------------------------- the OpenAI route

TextOrTexts = Annotated[
    Any,  # str | list[str], left to check_texts for the same messages as V1 and V2
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}),
]


class OpenAIEmbeddingRequest(BaseModel):
    """The body of ``POST /v1/embeddings`` as OpenAI defines it, plus ``input_type``."""

    model_config = ConfigDict(extra="forbid")

    input: TextOrTexts
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, strict=True)  # keep the first N, then re-normalise
    input_type: Literal["query", "passage"] = "passage"  # "query" applies the query instruction
    user: str | None = None  # accepted for compatibility, unused


def truncate_dimensions(vectors: np.ndarray, dims: int) -> np.ndarray:
    """The first ``dims`` components of each row, scaled back to unit length."""
    cut = vectors[:, :dims]  # (n, dims)
    return cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")  # little-endian float32
    return vector.tolist()


async def openai_embeddings(model: EmbedderModel, req: OpenAIEmbeddingRequest) -> dict:
    """Answer a validated ``POST /v1/embeddings`` request for ``model``."""
    if req.dimensions is not None and req.dimensions > model.dim:
        raise InvalidInput(f"dimensions {req.dimensions} exceeds the model's {model.dim}")
    texts = [req.input] if isinstance(req.input, str) else req.input
    vectors, tokens = await model.embed(texts, is_query=req.input_type == "query", field="input")
    if req.dimensions is not None:
        vectors = truncate_dimensions(vectors, req.dimensions)
    data = [{"object": "embedding", "index": i, "embedding": encode_vector(v, req.encoding_format)} for i, v in enumerate(vectors)]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": req.model, "usage": usage}
