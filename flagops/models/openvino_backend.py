"""OpenVINO inference for the bge embedder on CPU (``model.backend=openvino``).

Only the transformer runs in OpenVINO (``OpenVINOModel`` takes the place of the embedder's
HF model): tokenisation, token-count sorting, pooling and normalisation are ``Embedder``'s
own, so the vectors differ from torch's by the engine's arithmetic alone.

The numerics follow ``model.dtype``: float32 (``auto`` on CPU) keeps OpenVINO's kernels in
f32; bfloat16 lets them run in bf16, which on CPUs with AMX (or AVX512-BF16) is where the
speed is. Measured on this machine's 2-core AMX CPU, one thread, MiniLM (benchmarks/README.md,
"OpenVINO backend"): f32 1.1x torch fp32 by CPU time, identical vectors; bf16 3.6x, cosine to
torch fp32 min 0.99997. A CPU without bf16 units runs the bf16 hint in f32 (OpenVINO's
fallback), so there bfloat16 is f32's speed.

The converted model (OpenVINO IR) is cached under ``cache_dir()/openvino``, keyed by the
content of the model directory and the OpenVINO version, so the model directory itself
stays as it was and loads unchanged in transformers, sentence-transformers and FlagEmbedding.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from flagops.config import ConfigError
from flagops.data.formats import atomic_path
from flagops.models.cache import cache_dir

IR_FILE = "model.xml"  # beside it, model.bin holds the weights
PRECISION_HINTS = {torch.float32: "f32", torch.bfloat16: "bf16"}


def import_openvino():
    """The ``openvino`` module, or a one-line ConfigError saying how to get it."""
    try:
        import openvino
    except ImportError:
        hint = "pip install flagops[openvino] (or model.backend=torch)"
        raise ConfigError(f"model.backend=openvino needs the openvino package: {hint}") from None
    return openvino


@functools.cache
def bf16_ready() -> bool:
    """True where OpenVINO is installed and this CPU has bf16 units (AMX or AVX512-BF16): only
    there is bf16 worth choosing (elsewhere OpenVINO runs the bf16 hint in f32)."""
    try:
        import openvino
    except ImportError:
        return False
    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def auto_openvino(model_dir: str | Path, *, kind: str, dtype: str, quantize: str, device: str) -> bool:
    """``backend=auto``: run ``model_dir`` in OpenVINO bf16? Yes only for a bge embedder whose
    placement and lossy settings are left to flagops (``dtype=auto``, ``quantize=auto``) on a CPU
    with bf16 units, and which carries a passing ``openvino-bf16`` accuracy check (evaluate
    measures it on the released model; register_model saves it beside the weights)."""
    from flagops.models.quantize import OPENVINO_BF16, QuantCheck

    if kind != "bge" or dtype != "auto" or quantize != "auto" or device == "cuda":
        return False
    check = QuantCheck.load(model_dir, OPENVINO_BF16)
    return check is not None and check.passed and bf16_ready()


def directory_digest(directory: Path) -> str:
    """sha256 over the names and contents of a model directory's files (hidden ones skipped)."""
    h = hashlib.sha256()
    files = (p for p in directory.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(directory).parts))
    for path in sorted(files):
        h.update(str(path.relative_to(directory)).encode() + b"\0")
        with path.open("rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


class _LastHidden(nn.Module):
    """The HF model as the tensors-in, tensor-out function OpenVINO converts: (batch, seq, dim) states."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs, strict=True))).last_hidden_state


def ir_dir(embedder, model_dir: Path) -> tuple[Path, list[str], dict]:
    """Where the IR of ``model_dir`` is cached (keyed by its content, OpenVINO's version and the
    inputs), the input names, and an example batch to trace with."""
    ov = import_openvino()
    example = embedder.tokenizer(["an example", "a longer example text"], padding=True, return_tensors="pt")
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in example]
    key = hashlib.sha256(f"{directory_digest(model_dir)} openvino {ov.__version__} {names}".encode()).hexdigest()[:32]
    return cache_dir() / "openvino" / key, names, example


def converted_model(embedder, model_dir: Path):
    """The OpenVINO IR of ``embedder.model`` (read from the cache, else converted and cached) and its input names."""
    ov = import_openvino()
    cached, names, example = ir_dir(embedder, model_dir)
    if not (cached / IR_FILE).is_file():
        wrapped = _LastHidden(embedder.model, names).eval()
        with torch.inference_mode(False), torch.no_grad():
            ir = ov.convert_model(wrapped, example_input=tuple(example[k] for k in names), input=[ov.PartialShape([-1, -1])] * len(names))
        with atomic_path(cached, is_dir=True) as tmp:
            ov.save_model(ir, str(tmp / IR_FILE), compress_to_fp16=False)  # the weights stay fp32 on disk
    return ov.Core().read_model(str(cached / IR_FILE)), names, cached


class OpenVINOModel(nn.Module):
    """Stands in for the embedder's HF model: the same call, answered by a compiled OpenVINO model.

    ``Embedder.forward`` (pooling, normalisation) and ``encode`` (tokenisation, token-count
    sorting) stay the torch path's own. The torch model is kept as ``torch_model``: its config
    (hidden size), directory name and parameters (``Embedder.device``) still describe the
    encoder. Inference only: no gradient flows through OpenVINO.
    """

    def __init__(self, torch_model: nn.Module, compiled, names: list[str], ir_dir: Path, precision: str):
        super().__init__()
        self.torch_model = torch_model.eval()
        self.config = torch_model.config
        self.name_or_path = torch_model.name_or_path
        self.compiled = compiled
        self.input_names = names
        self.ir_dir = ir_dir  # the cached IR this model runs
        # what model_hash (the evaluation's embedding cache) keys on: the torch weights stay fp32
        # whatever OpenVINO computes in, and bf16 vectors must not be served as fp32 ones
        self.numerics = f"openvino-{precision}"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> BaseModelOutput:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, **extra}
        if "token_type_ids" in self.input_names and "token_type_ids" not in given:
            given["token_type_ids"] = torch.zeros_like(input_ids)
        hidden = self.compiled([given[k].numpy() for k in self.input_names])[0]  # inputs in order; (batch, seq, dim)
        return BaseModelOutput(last_hidden_state=torch.from_numpy(np.asarray(hidden)))


def openvino_on_cpu(embedder, model_dir: str | Path, placement, key: str = "model"):
    """``use_openvino`` at ``placement`` (a section's device and dtype): a one-line ConfigError
    naming ``key`` (model or serve) where that is not the CPU."""
    if placement.device.type != "cpu":
        raise ConfigError(f"{key}.backend=openvino runs on CPU, but {key}.device gives {placement.device}; set {key}.device=cpu")
    return use_openvino(embedder, model_dir, placement.dtype)


def use_openvino(embedder, model_dir: str | Path, dtype: torch.dtype = torch.float32, threads: int | None = None):
    """Run ``embedder`` (loaded from ``model_dir``) through OpenVINO, in place, and return it.

    ``dtype`` float32 or bfloat16 picks the kernels' precision; ``threads`` (default: torch's
    thread count) caps OpenVINO's, so it shares the CPU as torch would.
    """
    if dtype not in PRECISION_HINTS:
        raise ConfigError(f"model.dtype={dtype}: model.backend=openvino runs float32 or bfloat16; set model.dtype=auto or bfloat16")
    ir, names, ir_dir = converted_model(embedder, Path(model_dir))
    config = {
        "INFERENCE_PRECISION_HINT": PRECISION_HINTS[dtype],
        "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY",  # one request at a time, as encode sends them
    }
    compiled = import_openvino().Core().compile_model(ir, "CPU", config)
    embedder.model = OpenVINOModel(embedder.model, compiled, names, ir_dir, PRECISION_HINTS[dtype])
    return embedder.eval()
