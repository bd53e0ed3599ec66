"""Visualized-BGE as a KServe model: an image (base64) and/or a text in, one embedding out.

Two request shapes:

* V1, to ``predict``: ``{"instances": [{"image": "<base64 PNG/JPEG>", "text": "..."}, ...]}``;
  each instance holds an image, a text or both (a bare string is a text). Returns
  ``{"predictions": [[float, ...], ...]}``.
* V2 / Open Inference Protocol: BYTES inputs ``image`` (base64 strings; ``""`` for a row
  without one) and/or ``text``, both ``[n]`` when both are sent; returns one FP32 output
  ``embedding`` of shape ``[n, dim]``.

An image alone is embedded with an empty text, a text alone exactly as the plain text encoder
would (``flagops.models.visual_bge``). Images and texts-only run in separate micro-batches
(the batching key), as their sequences differ in shape. Bad input is HTTP 400.
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
from typing import Any, Protocol

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest
from PIL import Image

from flagops.serving.base import ServedModel
from flagops.serving.protocol import check_keys, check_text, v1_body_schema, v2_parameters, v2_response, v2_texts

OUTPUT_NAME = "embedding"
V1_KEYS = ("instances",)
INSTANCE_KEYS = ("image", "text")
V2_INPUTS = ("image", "text")
# The V1 body, for /openapi.json
V1_SCHEMA = v1_body_schema(
    {
        "anyOf": [
            {"type": "string"},
            {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": False,
                "properties": {"image": {"type": "string", "contentEncoding": "base64"}, "text": {"type": "string"}},
            },
        ]
    }
)

Item = tuple[Any, str]  # (a decoded PIL image or None, text)


class VisualEncoder(Protocol):
    """What a served Visualized-BGE needs from its model."""

    dim: int

    def max_length(self) -> int:
        """Text tokens the model reads per input."""

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Untruncated text tokens per input; called on the tokenizer thread only."""

    def encode(self, items: list[Item], *, max_length: int) -> np.ndarray:
        """Unit vectors, float32 (n, dim); all items with an image or all without; model thread only."""


class VisualBGEEncoder:
    """A loaded ``VisualBGE`` behind the ``VisualEncoder`` interface."""

    def __init__(self, model):
        self.model = model
        self.dim = model.dim
        self.counting_tokenizer = copy.deepcopy(model.tokenizer)  # its own, for the tokenizer thread

    def max_length(self) -> int:
        return self.model.settings.text_max_len

    def token_lengths(self, texts: list[str]) -> list[int]:
        enc = self.counting_tokenizer(texts, truncation=False, return_attention_mask=False, return_token_type_ids=False, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    def encode(self, items: list[Item], *, max_length: int) -> np.ndarray:
        images = [img for img, _ in items]
        with_images = None if images[0] is None else images
        return self.model.embed([text for _, text in items], with_images, batch_size=len(items), max_length=max_length)


def decode_b64_image(value: Any, field: str):
    """The image a base64 string holds (PIL, RGB); anything else is a 400 naming ``field``."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} is {type(value).__name__}, expected a base64 string of a PNG or JPEG file")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{field} is not valid base64; send the image file's bytes base64-encoded") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (OSError, Image.DecompressionBombError) as exc:  # not an image, a truncated one, or a pixel bomb
        raise InvalidInput(f"{field} is no readable image ({exc}); send a PNG or JPEG file, base64-encoded") from None


def check_count(n: int, cfg, field: str) -> None:
    if n == 0:
        raise InvalidInput(f"empty input: {field} must hold at least one image or text")
    if n > cfg.max_texts:
        raise InvalidInput(f"too many inputs: {n} in one request; the limit (max_texts) is {cfg.max_texts}")


def parse_v1(body: Any, cfg) -> list[Item]:
    if not isinstance(body, dict):
        raise InvalidInput(
            'expected a JSON object {"instances": [{"image": "<base64>", "text": "..."}]} sent with Content-Type: application/json'
        )
    body = check_keys(body, V1_KEYS, strict=cfg.strict)
    instances = body.get("instances")
    if not isinstance(instances, list):
        raise InvalidInput('"instances" must be a list of {"image": "<base64>", "text": "..."} objects')
    check_count(len(instances), cfg, "instances")
    items = []
    for i, instance in enumerate(instances):
        if isinstance(instance, str):
            instance = {"text": instance}
        if not isinstance(instance, dict):
            raise InvalidInput(f"instances[{i}] is {type(instance).__name__}, expected an object with image and/or text")
        instance = check_keys(instance, INSTANCE_KEYS, strict=cfg.strict, where=f" in instances[{i}]")
        if not instance:
            raise InvalidInput(f"instances[{i}] holds neither image nor text")
        image = decode_b64_image(instance["image"], f"instances[{i}].image") if "image" in instance else None
        items.append((image, check_text(instance.get("text", ""), cfg, f"instances[{i}].text")))
    return items


def parse_v2(request: InferRequest, cfg) -> list[Item]:
    by_name = {inp.name: inp for inp in request.inputs}
    if not by_name or set(by_name) - set(V2_INPUTS) or len(by_name) != len(request.inputs):
        got = ", ".join(repr(inp.name) for inp in request.inputs) or "none"
        raise InvalidInput(f"expected BYTES inputs 'image' (base64) and/or 'text', got {got}")
    v2_parameters(request, (), strict=cfg.strict)
    columns = {name: v2_texts(inp) for name, inp in by_name.items()}
    sizes = {len(v) for v in columns.values()}
    if len(sizes) != 1:
        raise InvalidInput(f"inputs 'image' and 'text' must hold as many rows, got {len(columns['image'])} and {len(columns['text'])}")
    n = sizes.pop()
    check_count(n, cfg, "inputs")
    images = columns.get("image", [""] * n)
    texts = columns.get("text", [""] * n)
    return [
        (decode_b64_image(img, f"image[{i}]") if img != "" else None, check_text(text, cfg, f"text[{i}]"))
        for i, (img, text) in enumerate(zip(images, texts, strict=True))
    ]


class VisualModel(ServedModel):
    """Visualized-BGE served over KServe's V1 and V2 protocols."""

    backend: VisualEncoder

    def load_backend(self, source: str) -> VisualEncoder:
        from flagops.models.device import inference_placement, place, torch_backend_name
        from flagops.models.visual_bge import VisualBGE  # torch loads only for a real model

        model = place(VisualBGE.load(source), inference_placement(self.serve_cfg, name="serve"))
        self.backend_name = torch_backend_name(model)
        return VisualBGEEncoder(model)

    def token_lengths(self, has_image: bool, items: list[Item]) -> list[int]:
        return self.backend.token_lengths([text for _, text in items])

    def max_length(self, has_image: bool) -> int:
        return self.backend.max_length()

    def run_batch(self, has_image: bool, items: list[Item], max_length: int) -> np.ndarray:
        return self.backend.encode(items, max_length=max_length)

    @property
    def dim(self) -> int:
        return self.backend.dim

    async def embed(self, items: list[Item], field: str) -> np.ndarray:
        """Each item's embedding, float32 (n, dim); items with and without images batch apart."""
        rows: list[Any] = [None] * len(items)
        for has_image in (True, False):
            picked = [i for i, (img, _) in enumerate(items) if (img is not None) == has_image]
            if picked:
                out, _ = await self.runtime.infer(has_image, [items[i] for i in picked], field)
                for i, row in zip(picked, out, strict=True):
                    rows[i] = row
        return np.stack(rows).astype(np.float32, copy=False)  # (n, dim)

    async def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None):
        if isinstance(payload, InferRequest):
            vectors = await self.embed(parse_v2(payload, self.serve_cfg), "text")
            output = InferOutput(OUTPUT_NAME, list(vectors.shape), "FP32", data=vectors)
            return v2_response(payload, self.name, [output])
        vectors = await self.embed(parse_v1(payload, self.serve_cfg), "instances")
        return {"predictions": vectors.tolist()}

    def get_input_types(self) -> list[dict]:
        return [{"name": name, "datatype": "BYTES", "shape": [-1]} for name in V2_INPUTS]

    def get_output_types(self) -> list[dict]:
        return [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, self.dim]}]
