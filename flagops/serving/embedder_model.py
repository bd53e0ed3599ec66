"""The embedder as a KServe model: texts in, L2-normalised float32 vectors out.

Three request shapes:

* V1, to ``predict``: ``{"instances": ["text", ...] | [{"text": "..."}, ...], "is_query": false}``
  returns ``{"predictions": [[float, ...], ...]}``.
* V2 / Open Inference Protocol, to ``predict``: one BYTES input of texts (request
  parameter ``is_query``) returns one FP32 output ``embedding`` of shape ``[n, dim]``.
* OpenAI ``POST /v1/embeddings``, to ``openai_embeddings`` (the server mounts it).

All three validate through ``check_texts`` and encode through the model's
``TextEncoder``, so the dummy model (``flagops.serving.dummy``) differs only in its
encoder. Bad input is HTTP 400 (``InvalidInput`` in kserve's routes), never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Protocol

import kserve
import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flagops.config import ServeConfig

OUTPUT_NAME = "embedding"
V1_KEYS = ("instances", "is_query")


class TextEncoder(Protocol):
    """What a served model needs from its encoder."""

    dim: int

    def encode(self, texts: list[str], *, is_query: bool) -> np.ndarray:
        """Unit vectors, float32 (n, dim)."""

    def count_tokens(self, texts: list[str], *, is_query: bool) -> int:
        """Tokens read for these texts (the OpenAI route's ``usage``)."""


class BGEEncoder:
    """A loaded ``Embedder`` behind the ``TextEncoder`` interface."""

    def __init__(self, embedder, batch_size: int):
        self.embedder = embedder
        self.batch_size = batch_size
        self.dim = embedder.model.config.hidden_size

    def encode(self, texts: list[str], *, is_query: bool) -> np.ndarray:
        return self.embedder.encode(texts, is_query=is_query, batch_size=self.batch_size)

    def count_tokens(self, texts: list[str], *, is_query: bool) -> int:
        # What the model read: instruction and special tokens included, truncation applied.
        enc = self.embedder.tokenize(texts, is_query=is_query)
        return int(enc["attention_mask"].sum())


# ---------------------------------------------------------------- request parsing


def check_texts(texts: Any, cfg: ServeConfig, field: str) -> list[str]:
    """Return ``texts`` if it is a non-empty list of strings within the limits of ``cfg``."""
    if not isinstance(texts, list):
        raise InvalidInput(f"{field} must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise InvalidInput(f"empty input: {field} must hold at least one text")
    if len(texts) > cfg.max_texts:
        raise InvalidInput(f"too many texts: {len(texts)} in one request; the limit (max_texts) is {cfg.max_texts}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInput(f"{field}[{i}] is {type(text).__name__}, expected a string")
        if len(text) > cfg.max_chars:
            raise InvalidInput(
                f"text too long: {field}[{i}] has {len(text)} characters; the limit (max_chars) is {cfg.max_chars}"
            )
    return texts


def check_is_query(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"is_query must be true or false, got {value!r}")
    return value


def parse_v1(body: Any) -> tuple[Any, bool]:
    """``(texts, is_query)`` from a V1 body; ``texts`` is checked later by ``check_texts``."""
    if not isinstance(body, dict):
        raise InvalidInput(
            'expected a JSON object {"instances": ["text", ...]} sent with Content-Type: application/json'
        )
    unknown = sorted(set(body) - set(V1_KEYS))
    if unknown:
        raise InvalidInput(f"unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(V1_KEYS)}")
    if "instances" not in body:
        raise InvalidInput('missing "instances": send {"instances": ["text", ...]}')
    instances = body["instances"]
    if isinstance(instances, list):
        # {"text": ...} instances unwrap to their text; anything else fails in check_texts.
        instances = [x["text"] if isinstance(x, dict) and set(x) == {"text"} else x for x in instances]
    return instances, check_is_query(body.get("is_query", False))


def parse_v2(request: InferRequest) -> tuple[list[Any], bool]:
    """``(texts, is_query)`` from an Open Inference Protocol request with one BYTES input."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"expected exactly one BYTES input holding the texts, got {len(request.inputs)} inputs")
    inp = request.inputs[0]
    if inp.datatype != "BYTES":
        raise InvalidInput(f"input {inp.name!r} has datatype {inp.datatype}; send the texts as BYTES")
    try:
        values = inp.as_numpy().ravel().tolist()  # also decodes the binary-data extension
        texts = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidInput(f"input {inp.name!r}: data does not fit shape {inp.shape} as texts ({exc})") from None
    params = request.parameters or {}
    return texts, check_is_query(params.get("is_query", False))


def resolve_source(source: str) -> str:
    """Registry URIs (``models:/NAME@alias``, ``models:/NAME/VERSION``) become a local directory."""
    if source.startswith("models:/"):
        from flagops.registry.models import fetch_model_dir  # MLflow loads only when asked for

        return str(fetch_model_dir(source))
    return source


# ---------------------------------------------------------------- the model


class EmbedderModel(kserve.Model):
    """A BGE embedder served over KServe's V1 and V2 protocols."""

    def __init__(self, name: str, source: str, serve_cfg: ServeConfig = ServeConfig()):
        super().__init__(name)
        self.source = source
        self.serve_cfg = serve_cfg
        self.encoder: TextEncoder | None = None
        # One worker: encoding leaves the event loop free for health checks, and HF fast
        # tokenizers must not be called from two threads at once.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"encode-{name}")

    def load(self) -> bool:
        from flagops.models.embedder import Embedder  # torch loads only for a real model

        self.encoder = BGEEncoder(Embedder.load(resolve_source(self.source)), self.serve_cfg.batch_size)
        self.ready = True
        return self.ready

    def stop(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        super().stop()

    @property
    def dim(self) -> int:
        return self.encoder.dim

    async def embed(self, texts: Any, *, is_query: bool, field: str) -> np.ndarray:
        """Validate ``texts`` and encode them off the event loop: float32 (n, dim)."""
        texts = check_texts(texts, self.serve_cfg, field)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: self.encoder.encode(texts, is_query=is_query))

    async def count_tokens(self, texts: list[str], *, is_query: bool) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: self.encoder.count_tokens(texts, is_query=is_query))

    async def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None):
        if isinstance(payload, InferRequest):
            texts, is_query = parse_v2(payload)
            vectors = await self.embed(texts, is_query=is_query, field=payload.inputs[0].name)
            output = InferOutput(OUTPUT_NAME, list(vectors.shape), "FP32", data=vectors)
            return InferResponse(
                # kserve fails on a response without an id, and V2 requests need not send one.
                response_id=payload.id or str(uuid.uuid4()),
                model_name=self.name,
                infer_outputs=[output],
                use_binary_outputs=payload.use_binary_outputs,
                requested_outputs=payload.request_outputs,
            )
        texts, is_query = parse_v1(payload)
        vectors = await self.embed(texts, is_query=is_query, field="instances")
        return {"predictions": vectors.tolist()}

    def get_input_types(self) -> list[dict]:
        return [{"name": "text", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, self.dim]}]


# ---------------------------------------------------------------- the OpenAI route


class OpenAIEmbeddingRequest(BaseModel):
    """The body of ``POST /v1/embeddings`` as OpenAI defines it, plus ``input_type``."""

    model_config = ConfigDict(extra="forbid")

    input: Any  # str | list[str]; left to check_texts for the same messages as V1 and V2
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, strict=True)  # keep the first N, then re-normalise
    input_type: Literal["query", "passage"] = "passage"  # "query" applies the query instruction
    user: str | None = None  # accepted for compatibility, unused


def openai_error(message: str, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def truncate_dimensions(vectors: np.ndarray, dims: int) -> np.ndarray:
    """The first ``dims`` components of each row, scaled back to unit length."""
    cut = vectors[:, :dims]  # (n, dims)
    return cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")  # little-endian float32
    return vector.tolist()


async def openai_embeddings(body: Any, models: Mapping[str, EmbedderModel]) -> tuple[int, dict]:
    """Answer a decoded ``POST /v1/embeddings`` body: ``(HTTP status, JSON body)``."""
    try:
        req = OpenAIEmbeddingRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        return 400, openai_error(f"{'.'.join(map(str, first['loc'])) or 'body'}: {first['msg']}")
    model = models.get(req.model)
    if model is None:
        served = ", ".join(sorted(models))
        return 404, openai_error(f"model {req.model!r} not found; this server serves: {served}", "model_not_found")
    if not model.ready:
        return 503, openai_error(f"model {req.model!r} is not ready yet")
    if req.dimensions is not None and req.dimensions > model.dim:
        return 400, openai_error(f"dimensions {req.dimensions} exceeds the model's {model.dim}")
    texts = [req.input] if isinstance(req.input, str) else req.input
    is_query = req.input_type == "query"
    try:
        vectors = await model.embed(texts, is_query=is_query, field="input")
    except InvalidInput as exc:
        return 400, openai_error(str(exc))
    if req.dimensions is not None:
        vectors = truncate_dimensions(vectors, req.dimensions)
    tokens = await model.count_tokens(texts, is_query=is_query)
    data = [
        {"object": "embedding", "index": i, "embedding": encode_vector(v, req.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return 200, {"object": "list", "data": data, "model": req.model, "usage": usage}
