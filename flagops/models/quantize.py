"""int8 inference for the embedder on CPU: torch's dynamic quantisation of the ``nn.Linear`` layers.

Each quantised Linear's weight becomes int8, one scale per output row (per channel, symmetric);
each call quantises its input to uint8 with one scale for the whole tensor, multiplies in int8
with int32 sums and returns float. Everything else (embeddings, LayerNorm, softmax, pooling)
stays fp32, and so does each layer's FFN output projection (``int8_linear_names``).

Why that one Linear: per-layer error on MiniLM (base, the demo's held-out set, 991 passages)
put it first. Its input is the GELU output, long-tailed and mostly near zero, which one 8-bit
scale per batch resolves worst. Measured with one group of Linears left in fp32 each time
(passage cosine to fp32 min / mean, nDCG@10 delta, all-int8 first):

    all int8                     0.9868 / 0.9941  +0.0060
    FFN + attention output fp32  0.9931 / 0.9972  +0.0030
    FFN intermediate fp32        0.9906 / 0.9959  +0.0052
    attention q/k/v fp32         0.9891 / 0.9949  +0.0010
    attention output fp32        0.9875 / 0.9941  +0.0044
    layer 0 fp32                 0.9879 / 0.9957  -0.0042
    layer 5 fp32                 0.9875 / 0.9944  +0.0046

The FFN output alone in fp32 gave the fine-tuned demo candidate min 0.9924, mean 0.9973 (all
int8: 0.9886 / 0.9946). nDCG@10 deltas of this size are within the noise of 188 queries, and
with one activation scale per batch an embedding depends on its batch-mates. The same all-int8
base model measured -0.0127 in an earlier run and +0.0060 in this one, with passage cosines
equal to 4 decimals; most likely the query batches differed (character- vs token-sorted). The
cosine is the steadier figure, and that is what this choice improves. The cost: a third of
each layer's Linear work stays fp32 (by FLOPs the speed-up goes from about 1.8x to about 1.4x
fp32; benchmarks/README.md has what was measured, under heavy load).

Two choices differ from ``quantize_dynamic``'s defaults, both for accuracy:

- Weights per channel, not per tensor: per tensor drops the mean cosine to fp32 to 0.94.
- Activations over the full 8-bit range. torch's dynamic Linear keeps them to 7 bits
  (``reduce_range``) because CPUs without VNNI add pairs of u8×s8 products in int16, which
  can saturate; at 7 bits the mean cosine is 0.98. VNNI (AVX512-VNNI or AVX-VNNI) adds into
  int32 and cannot saturate, so there the full range is used (mean cosine 0.994).

The model directory on disk is untouched: quantisation happens after loading, for inference
only (``model.quantize``: evaluation and mining). Training never comes here.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.ao.nn.quantized.dynamic as nnqd
from torch import nn
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

from flagops.config import ConfigError
from flagops.models.device import current_placement


@functools.cache
def cpu_has_vnni(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU flags name a VNNI extension; False where they cannot be read."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni"))


class Int8Linear(nnqd.Linear):
    """torch's dynamic int8 Linear, with 7-bit activations only where the CPU lacks VNNI."""

    reduce_range = True  # set per class by ``int8_linear_class``

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=self.reduce_range)
        return y.to(x.dtype)

    def _get_name(self) -> str:
        return f"Int8Linear(reduce_range={self.reduce_range})"


class FullRangeInt8Linear(Int8Linear):
    reduce_range = False


def int8_linear_class() -> type[Int8Linear]:
    return FullRangeInt8Linear if cpu_has_vnni() else Int8Linear


def int8_linear_names(model: nn.Module) -> list[str]:
    """The Linears to make int8: all but each layer's FFN output projection (``layer.N.output.dense``),
    whose input is the GELU output: a long-tailed, mostly near-zero activation that one 8-bit scale
    per batch resolves worst. Kept in fp32 it costs a third of the FFN's int8 GEMMs."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and not FFN_OUTPUT.search(name)]


FFN_OUTPUT = re.compile(r"(^|\.)layer\.\d+\.output\.dense$")


def quantize_int8(embedder):
    """Replace ``embedder.model``'s Linears by int8 ones, in place, and return the embedder.

    The embedder must sit on CPU in float32 (torch's int8 kernels are CPU-only); anything
    else is a ConfigError naming ``model.quantize``.
    """
    placement = current_placement(embedder.model)
    if placement.device.type != "cpu" or placement.dtype != torch.float32:
        raise ConfigError(
            f"model.quantize=int8 runs on CPU in float32, but the model is on {placement}; set model.device=cpu "
            "and model.dtype=auto (or float32), or model.quantize=none"
        )
    with warnings.catch_warnings():
        # torch 2.13 points eager quantisation users to torchao; the eager API still works.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        embedder.model = quantize_dynamic(
            embedder.model,
            {name: per_channel_dynamic_qconfig for name in int8_linear_names(embedder.model)},
            dtype=torch.qint8,
            mapping={nn.Linear: int8_linear_class()},
            inplace=True,
        )
    embedder.model.eval()
    return embedder


def is_quantized(module: nn.Module) -> bool:
    return any(isinstance(m, nnqd.Linear) for m in module.modules())


# ---------------------------------------------------------------- the accuracy check a model carries

QUANT_CHECK_FILE = "flagops_quantization.json"

# The rule for a lossy path: held-out nDCG@10 within 0.005 of fp32, either way (a large
# gain says the ranking moved as much as a large loss; benchmarks/int8.py applies the same rule). The cosine floor is
# the one stated beside it (int8 measured min 0.987 on MiniLM); a model below it fails too.
MAX_NDCG_DELTA = 0.005
MIN_COSINE = 0.98
METHOD = "int8-dynamic"  # torch's dynamic int8 (this module)
OPENVINO_BF16 = "openvino-bf16"  # the transformer in OpenVINO, bf16 kernels (flagops.models.openvino_backend)
# evaluate's metric keys for each method's check (as_metrics / from_metrics)
METRICS_PREFIXES = {METHOD: "quant/int8", OPENVINO_BF16: "quant/openvino-bf16"}
METRICS_PREFIX = METRICS_PREFIXES[METHOD]


@dataclass(frozen=True)
class QuantCheck:
    """The measured cost of running a model by a lossy method instead of torch fp32, saved beside its weights.

    Neither lossy path is a second set of weights: torch's dynamic int8 is applied at load time,
    and OpenVINO converts the same fp32 weights and computes in bf16. What travels with the model
    (and into the registry) is one record per method, which says on which held-out set it was
    measured and whether it kept within the rule; ``quantize=auto`` and ``backend=auto`` use a
    method only where its record passed.
    """

    method: str  # METHOD or OPENVINO_BF16
    eval_set: str  # what the nDCG was measured on, e.g. "heldout (737 queries)"
    ndcg_fp32: float
    ndcg_quant: float
    min_cosine: float
    mean_cosine: float

    @property
    def ndcg_delta(self) -> float:
        return self.ndcg_quant - self.ndcg_fp32

    @property
    def passed(self) -> bool:
        return abs(self.ndcg_delta) <= MAX_NDCG_DELTA and self.min_cosine >= MIN_COSINE

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{self.method} on {self.eval_set}: nDCG@10 {self.ndcg_fp32:.4f} -> {self.ndcg_quant:.4f} "
            f"({self.ndcg_delta:+.4f}, allowed +-{MAX_NDCG_DELTA}), cosine to fp32 min {self.min_cosine:.4f} "
            f"mean {self.mean_cosine:.4f} (floor {MIN_COSINE}): {verdict}"
        )

    def save(self, model_dir: str | Path) -> Path:
        """Write this record into ``model_dir``'s file, in place of an earlier one of the same method."""
        from flagops.data.formats import atomic_path

        path = Path(model_dir) / QUANT_CHECK_FILE
        kept = [c for c in load_checks(model_dir).values() if c.method != self.method]
        records = [{**asdict(c), "passed": c.passed} for c in sorted([*kept, self], key=lambda c: c.method)]
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"checks": records}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, model_dir: str | Path, method: str = METHOD) -> QuantCheck | None:
        """``method``'s record in ``model_dir``, or None when the model was never checked that way."""
        return load_checks(model_dir).get(method)


def load_checks(model_dir: str | Path) -> dict[str, QuantCheck]:
    """Every check record in ``model_dir`` by method (a file of one bare record, as flagops wrote
    before OpenVINO was checked too, is an int8 one)."""
    path = Path(model_dir) / QUANT_CHECK_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        records = raw["checks"] if "checks" in raw else [raw]
        # ``passed`` is derived (written for readers of the file); fields this version does not know are left out
        checks = [QuantCheck(**{f.name: r[f.name] for f in fields(QuantCheck) if f.name in r}) for r in records]
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise ConfigError(f"{path}: not a quantization check record ({exc}); delete it to check the model again") from None
    return {c.method: c for c in checks}


def resolve_quantize(setting: str, model_dir: str | Path) -> str:
    """``none`` or ``int8`` for a ``quantize`` setting of none, int8 or auto.

    auto is int8 only where the model carries a passing check (``QuantCheck``); a model never
    checked, or one that failed, stays fp32.
    """
    if setting != "auto":
        return setting
    check = QuantCheck.load(model_dir)
    return "int8" if check is not None and check.passed else "none"


def auto_int8(embedder, model_dir: str | Path):
    """``quantize=auto``: ``embedder`` in int8 where ``model_dir`` carries a passing check and it
    sits on CPU in float32 (a GPU keeps its fp16/fp32 path), else unchanged."""
    if resolve_quantize("auto", model_dir) == "none":
        return embedder
    placement = current_placement(embedder.model)
    if placement.device.type != "cpu" or placement.dtype != torch.float32:
        return embedder
    return quantize_int8(embedder)


def as_metrics(check: QuantCheck) -> dict[str, float]:
    """``quant/int8/*`` (or ``quant/openvino-bf16/*``) keys for the metrics file (and MLflow)."""
    found = {
        "ndcg_fp32": check.ndcg_fp32,
        "ndcg": check.ndcg_quant,
        "ndcg_delta": check.ndcg_delta,
        "min_cosine": check.min_cosine,
        "mean_cosine": check.mean_cosine,
        "passed": float(check.passed),
    }
    return {f"{METRICS_PREFIXES[check.method]}/{key}": value for key, value in found.items()}


def from_metrics(metrics: Mapping[str, float], eval_set: str = "held-out (evaluate)") -> list[QuantCheck]:
    """The checks the metrics carry (``as_metrics``' keys), one per method evaluate ran."""
    return [
        QuantCheck(
            method=method,
            eval_set=eval_set,
            ndcg_fp32=metrics[f"{prefix}/ndcg_fp32"],
            ndcg_quant=metrics[f"{prefix}/ndcg"],
            min_cosine=metrics[f"{prefix}/min_cosine"],
            mean_cosine=metrics[f"{prefix}/mean_cosine"],
        )
        for method, prefix in METRICS_PREFIXES.items()
        if f"{prefix}/ndcg" in metrics
    ]
