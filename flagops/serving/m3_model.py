"""BGE-M3 as a KServe model: texts in; dense, sparse and ColBERT outputs, each on request.

Three request shapes:

* V1, to ``predict``: ``{"instances": [...], "is_query": false, "return_dense": true,
  "return_sparse": false, "return_colbert": false}`` returns ``{"predictions": [{"dense":
  [...], "sparse": {"indices": [...], "values": [...], "tokens": [...]}, "colbert": [[...],
  ...]}, ...]}`` with only the keys asked for (dense alone by default, as FlagEmbedding's
  ``BGEM3FlagModel.encode``).
* V2 / Open Inference Protocol, to ``predict``: one BYTES input of texts, request parameters
  ``is_query`` and ``return_*``. Without ``return_*`` parameters, the outputs the request
  names choose the modes. Ragged outputs are CSR-style, text ``i`` owning rows
  ``offsets[i]:offsets[i + 1]``: ``dense`` FP32 ``[n, dim]``; ``sparse_offsets`` INT64
  ``[n + 1]``, ``sparse_indices`` INT64, ``sparse_values`` FP32 and ``sparse_tokens`` BYTES
  ``[nnz]``; ``colbert_offsets`` INT64 ``[n + 1]``, ``colbert`` FP32 ``[vectors, colbert_dim]``.
* OpenAI ``POST /v1/embeddings`` answers with the dense vectors (``openai_embeddings``).

A text's sparse entries are its token ids with a positive weight (each id's largest weight
in the text), heaviest first, ties by id; ``tokens`` are the tokenizer's strings for those
ids. Texts share a forward pass only with texts of the same ``is_query`` and the same
modes, so a dense-only request never pays for the sparse and ColBERT heads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest

from flagops.serving import embedder_model
from flagops.serving.base import TEXT_INPUTS, ServedModel, resolve_source, serve_quantize
from flagops.serving.embedder_model import BGEEncoder
from flagops.serving.protocol import check_bool, check_texts, v2_response

MODES = ("dense", "sparse", "colbert")  # flagops.models.m3.MODES, without importing torch here
DEFAULT_MODES = ("dense",)
MODE_FLAGS = {f"return_{mode}": mode for mode in MODES}
V1_KEYS = (*embedder_model.V1_KEYS, *MODE_FLAGS)
V2_PARAMETERS = (*embedder_model.V2_PARAMETERS, *MODE_FLAGS)
# Each mode's V2 outputs, (name, datatype), in the order they are sent.
V2_OUTPUTS = {
    "dense": (("dense", "FP32"),),
    "sparse": (
        ("sparse_offsets", "INT64"),
        ("sparse_indices", "INT64"),
        ("sparse_values", "FP32"),
        ("sparse_tokens", "BYTES"),
    ),
    "colbert": (("colbert_offsets", "INT64"), ("colbert", "FP32")),
}
# The V1 body, for /openapi.json: the embedder's plus the mode flags.
V1_SCHEMA = {
    **embedder_model.V1_SCHEMA,
    "properties": {**embedder_model.V1_SCHEMA["properties"], **{flag: {"type": "boolean"} for flag in MODE_FLAGS}},
}


class SparseRow(NamedTuple):
    """One text's lexical weights, heaviest first."""

    indices: np.ndarray  # (nnz,) int64 token ids
    values: np.ndarray  # (nnz,) float32 weights, > 0
    tokens: list[str]  # the token string of each id


class M3Row(NamedTuple):
    """One text's outputs; a mode not asked for is None."""

    dense: np.ndarray | None  # (dim,) float32
    sparse: SparseRow | None
    colbert: np.ndarray | None  # (vectors, colbert_dim) float32: one per token but the first


class M3Key(NamedTuple):
    """The batching key: texts share a forward pass only when both fields match."""

    is_query: bool
    modes: tuple[str, ...]  # in MODES order


class M3TextEncoder(Protocol):
    """What a served M3 model needs from its encoder."""

    dim: int
    colbert_dim: int | None  # None: no ColBERT head
    modes: tuple[str, ...]  # the modes the model has

    def max_length(self, *, is_query: bool) -> int:
        """Tokens the model reads per text."""

    def token_lengths(self, texts: list[str], *, is_query: bool) -> list[int]:
        """Untruncated tokens per text; called on the tokenizer thread only."""

    def encode_rows(self, texts: list[str], *, is_query: bool, modes: tuple[str, ...], max_length: int) -> list[M3Row]:
        """One row per text with ``modes`` filled in; called on the model thread only."""


def sparse_row(row, tokenizer) -> SparseRow:
    """A (1, vocab) CSR row as a ``SparseRow``, heaviest first (ties by id)."""
    order = np.lexsort((row.indices, -row.data))
    ids = row.indices[order].astype(np.int64)
    return SparseRow(ids, row.data[order].astype(np.float32), tokenizer.convert_ids_to_tokens(ids.tolist()))


class BGEM3Encoder(BGEEncoder):
    """A loaded ``M3Embedder``: ``BGEEncoder``'s limits and token counts, rows of every mode."""

    def __init__(self, m3):
        super().__init__(m3.embedder)
        self.m3 = m3
        self.colbert_dim = m3.m3_settings.colbert_dim
        self.modes = m3.modes

    def encode_rows(self, texts: list[str], *, is_query: bool, modes: tuple[str, ...], max_length: int) -> list[M3Row]:
        # One micro-batch is one forward pass. Token strings come from the model thread's
        # tokenizer: HF fast tokenizers must not be shared between threads.
        out = self.m3.encode_m3(texts, is_query=is_query, batch_size=len(texts), modes=modes, max_length=max_length)
        return [
            M3Row(
                out.dense[i] if out.dense is not None else None,
                sparse_row(out.sparse[i], self.m3.tokenizer) if out.sparse is not None else None,
                out.colbert[i] if out.colbert is not None else None,
            )
            for i in range(len(texts))
        ]


def load_m3(source: str):
    """The ``M3Embedder`` at ``source`` with its own heads, or dense only if it has none; never fresh ones."""
    from flagops.models.m3 import M3_SETTINGS_FILE, M3Embedder, head_files  # torch loads only for a real model

    path = Path(resolve_source(source))
    saved = path / M3_SETTINGS_FILE
    declared = saved.is_file() and json.loads(saved.read_text()).get("colbert_dim") is not None
    # heads=True with head files (or a settings file naming them) loads them, and a lone or
    # missing head file is an error; heads=False only when the directory has no heads at all.
    return M3Embedder.load(path, heads=declared or bool(head_files(path)))


# ---------------------------------------------------------------- request parsing


def requested_modes(flags: dict, available: tuple[str, ...]) -> tuple[str, ...]:
    """The modes the ``return_*`` flags ask for (unset: ``DEFAULT_MODES``), all of which the model has."""
    modes = tuple(m for flag, m in MODE_FLAGS.items() if check_bool(flags.get(flag, m in DEFAULT_MODES), flag))
    if not modes:
        raise InvalidInput(f"no output requested: set at least one of {', '.join(MODE_FLAGS)} to true")
    missing = [m for m in modes if m not in available]
    if missing:
        raise InvalidInput(
            f"this model has no {missing[0]} output (it serves {', '.join(available)}); leave out return_{missing[0]} or set it to false"
        )
    return modes


def v2_mode_flags(request: InferRequest, params: dict) -> dict:
    """The ``return_*`` parameters, or, when none is sent, those implied by the outputs the request names."""
    named = {output.name for output in request.request_outputs or ()}
    if any(flag in params for flag in MODE_FLAGS) or not named:
        return params
    return {flag: any(name in named for name, _ in V2_OUTPUTS[mode]) for flag, mode in MODE_FLAGS.items()}


# ---------------------------------------------------------------- responses


def v1_prediction(row: M3Row, modes: tuple[str, ...]) -> dict:
    out = {}
    if "dense" in modes:
        out["dense"] = row.dense.tolist()
    if "sparse" in modes:
        indices, values, tokens = row.sparse
        out["sparse"] = {"indices": indices.tolist(), "values": values.tolist(), "tokens": tokens}
    if "colbert" in modes:
        out["colbert"] = row.colbert.tolist()
    return out


def offsets(counts: list[int]) -> np.ndarray:
    """CSR offsets: text ``i`` owns entries ``[offsets[i], offsets[i + 1])``; (n + 1,) int64."""
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def v2_outputs(rows: list[M3Row], modes: tuple[str, ...], colbert_dim: int | None) -> list[InferOutput]:
    arrays = {}
    if "dense" in modes:
        arrays["dense"] = np.stack([r.dense for r in rows]).astype(np.float32, copy=False)  # (n, dim)
    if "sparse" in modes:
        sparse = [r.sparse for r in rows]
        arrays["sparse_offsets"] = offsets([len(s.indices) for s in sparse])
        arrays["sparse_indices"] = np.concatenate([s.indices for s in sparse]).astype(np.int64)  # (nnz,)
        arrays["sparse_values"] = np.concatenate([s.values for s in sparse]).astype(np.float32)  # (nnz,)
        arrays["sparse_tokens"] = np.array([t for s in sparse for t in s.tokens], dtype=np.object_)  # (nnz,)
    if "colbert" in modes:
        arrays["colbert_offsets"] = offsets([len(r.colbert) for r in rows])
        vectors = np.concatenate([r.colbert for r in rows]).reshape(-1, colbert_dim)  # (vectors, colbert_dim)
        arrays["colbert"] = vectors.astype(np.float32, copy=False)
    return [
        InferOutput(name, list(arrays[name].shape), datatype, data=arrays[name]) for mode in modes for name, datatype in V2_OUTPUTS[mode]
    ]


# ---------------------------------------------------------------- the model


class M3Model(ServedModel):
    """A BGE-M3 model served over KServe's V1 and V2 protocols, and OpenAI's for dense vectors."""

    backend: M3TextEncoder

    def load_backend(self, source: str) -> M3TextEncoder:
        from flagops.models.device import inference_placement, place, torch_backend_name  # serve.device / serve.dtype

        placement = inference_placement(self.serve_cfg, name="serve")
        _, self.quant_check = serve_quantize(self.serve_cfg.quantize, source, placement, supported=False)  # float only
        m3 = place(load_m3(source), placement)
        m3.embedder.pad_to_multiple_of = self.serve_cfg.pad_to_multiple_of  # M3Embedder tokenizes through it
        self.backend_name = torch_backend_name(m3)
        return BGEM3Encoder(m3)

    def token_lengths(self, key: M3Key, texts: list[str]) -> list[int]:
        return self.backend.token_lengths(texts, is_query=key.is_query)

    def max_length(self, key: M3Key) -> int:
        return self.backend.max_length(is_query=key.is_query)

    def run_batch(self, key: M3Key, texts: list[str], max_length: int) -> list[M3Row]:
        return self.backend.encode_rows(texts, is_query=key.is_query, modes=key.modes, max_length=max_length)

    @property
    def dim(self) -> int:
        return self.backend.dim

    async def encode(self, texts: Any, *, is_query: bool, modes: tuple[str, ...], field: str) -> tuple[list[M3Row], int]:
        """Validate ``texts`` and encode them in micro-batches: one row per text, and tokens read."""
        texts = check_texts(texts, self.serve_cfg, field)
        return await self.runtime.infer(M3Key(is_query, modes), texts, field)

    async def embed(self, texts: Any, *, is_query: bool, field: str) -> tuple[np.ndarray, int]:
        """Dense vectors, float32 (n, dim), and tokens read: what ``openai_embeddings`` asks for."""
        rows, tokens = await self.encode(texts, is_query=is_query, modes=("dense",), field=field)
        return np.stack([r.dense for r in rows]).astype(np.float32, copy=False), tokens

    async def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None):
        strict = self.serve_cfg.strict
        if isinstance(payload, InferRequest):
            texts, is_query, params = embedder_model.parse_v2(payload, strict, V2_PARAMETERS)
            modes = requested_modes(v2_mode_flags(payload, params), self.backend.modes)
            rows, _ = await self.encode(texts, is_query=is_query, modes=modes, field=payload.inputs[0].name)
            return v2_response(payload, self.name, v2_outputs(rows, modes, self.backend.colbert_dim))
        texts, is_query, body = embedder_model.parse_v1(payload, strict, V1_KEYS)
        modes = requested_modes(body, self.backend.modes)
        rows, _ = await self.encode(texts, is_query=is_query, modes=modes, field="instances")
        return {"predictions": [v1_prediction(row, modes) for row in rows]}

    def get_input_types(self) -> list[dict]:
        return TEXT_INPUTS

    def get_output_types(self) -> list[dict]:
        widths = {"dense": self.dim, "colbert": self.backend.colbert_dim}  # the other outputs are flat
        return [
            {"name": name, "datatype": datatype, "shape": [-1, widths[name]] if name in widths else [-1]}
            for mode in self.backend.modes
            for name, datatype in V2_OUTPUTS[mode]
        ]
