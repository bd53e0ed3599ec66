"""Request checks shared by every served kind: limits, strict keys, V2 tensors, errors.

Each check raises kserve's ``InvalidInput`` (HTTP 400 in kserve's routes; the OpenAI-style
routes turn it into an ``invalid_request_error``) with a message that names the field and
the limit, so bad input is never a 500.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse
from pydantic import BaseModel, ValidationError

from flagops.config import ServeConfig

# Request-level V2 parameters that Triton clients may send (tritonclient sets
# binary_data_output when no outputs are named); accepted and ignored, strict or not.
V2_PROTOCOL_PARAMETERS = frozenset({"binary_data_output", "priority", "timeout", "sequence_id", "sequence_start", "sequence_end"})


def v1_body_schema(item: dict, **flags: dict) -> dict:
    """A V1 predict body's JSON schema, for /openapi.json (kserve's predict route reads raw bytes,
    so has none): ``instances``, a non-empty array of ``item``, beside the top-level ``flags``."""
    instances = {"type": "array", "minItems": 1, "items": item}
    return {"type": "object", "required": ["instances"], "additionalProperties": False, "properties": {"instances": instances, **flags}}


def check_keys(body: dict, allowed: Iterable[str], *, strict: bool, where: str = "") -> dict:
    """``body`` less unknown keys; in strict mode an unknown key is an error naming it."""
    allowed = tuple(allowed)
    unknown = sorted(set(body) - set(allowed), key=str)
    if unknown and strict:
        raise InvalidInput(f"unknown key(s) {', '.join(map(repr, unknown))}{where}; valid keys: {', '.join(allowed)}")
    return {k: v for k, v in body.items() if k in allowed}


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false, got {value!r}")
    return value


def check_text(text: Any, cfg: ServeConfig, field: str) -> str:
    if not isinstance(text, str):
        raise InvalidInput(f"{field} is {type(text).__name__}, expected a string")
    if len(text) > cfg.max_chars:
        raise InvalidInput(f"text too long: {field} has {len(text)} characters; the limit (max_chars) is {cfg.max_chars}")
    try:
        text.encode("utf-8")  # JSON may carry lone surrogates ("\\ud800"), which tokenizers cannot take
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{field} is not valid Unicode: {exc.reason} at character {exc.start}") from None
    return text


def check_texts(texts: Any, cfg: ServeConfig, field: str, count_from: int = 0) -> list[str]:
    """Return ``texts`` if it is a non-empty list of strings within the limits of ``cfg``.

    ``count_from`` is how many texts earlier parts of the same request already hold.
    """
    if not isinstance(texts, list):
        raise InvalidInput(f"{field} must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise InvalidInput(f"empty input: {field} must hold at least one text")
    if count_from + len(texts) > cfg.max_texts:
        raise InvalidInput(f"too many texts: {count_from + len(texts)} in one request; the limit (max_texts) is {cfg.max_texts}")
    return [check_text(text, cfg, f"{field}[{i}]") for i, text in enumerate(texts)]


def check_token_lengths(lengths: Sequence[int], limit: int, cfg: ServeConfig, field: str) -> list[int]:
    """Token counts as the model will read them: clipped to ``limit``, or an error under ``reject``."""
    if cfg.truncation == "reject":
        for i, n in enumerate(lengths):
            if n > limit:
                source = "max_tokens" if cfg.max_tokens is not None and limit == cfg.max_tokens else "the model's"
                raise InvalidInput(
                    f"text too long: {field}[{i}] has {n} tokens; the limit ({source}) is {limit} tokens and serve.truncation is reject"
                )
    return [min(n, limit) for n in lengths]


def validate_body(model: type[BaseModel], body: Any, *, strict: bool) -> BaseModel:
    """Parse a JSON body into ``model``; unknown keys are dropped unless ``strict``."""
    if not isinstance(body, dict):
        raise InvalidInput(f"the body must be a JSON object, got {type(body).__name__}")
    if not strict:
        body = {k: v for k, v in body.items() if k in model.model_fields}
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "body"
        if first["type"] == "extra_forbidden":
            raise InvalidInput(f"unknown key {where!r}; valid keys: {', '.join(model.model_fields)}") from None
        raise InvalidInput(f"{where}: {first['msg']}") from None


# ---------------------------------------------------------------- V2 (Open Inference Protocol)


def v2_texts(inp: InferInput) -> list[Any]:
    """The values of a BYTES input, decoded as UTF-8 (JSON or binary-data extension)."""
    if inp.datatype != "BYTES":
        raise InvalidInput(f"input {inp.name!r} has datatype {inp.datatype}; send the texts as BYTES")
    try:
        values = inp.as_numpy().ravel().tolist()  # also decodes the binary-data extension
        return [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidInput(f"input {inp.name!r}: data does not fit shape {inp.shape} as texts ({exc})") from None


def v2_parameters(request: InferRequest, allowed: Iterable[str], *, strict: bool) -> dict:
    """Request-level parameters the model reads; Triton protocol parameters pass, unread."""
    params = dict(request.parameters or {})
    known = check_keys(params, [*allowed, *sorted(V2_PROTOCOL_PARAMETERS)], strict=strict, where=" in parameters")
    return {k: v for k, v in known.items() if k not in V2_PROTOCOL_PARAMETERS}


def v2_response(request: InferRequest, model_name: str, outputs: list[InferOutput]) -> InferResponse:
    return InferResponse(
        # kserve fails on a response without an id, and V2 requests need not send one.
        response_id=request.id or str(uuid.uuid4()),
        model_name=model_name,
        infer_outputs=outputs,
        use_binary_outputs=request.use_binary_outputs,
        requested_outputs=request.request_outputs,
    )


# ---------------------------------------------------------------- OpenAI-style errors


def openai_error(message: str, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
