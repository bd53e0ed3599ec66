"""int8 inference for the embedder on CPU: torch's dynamic quantisation of every ``nn.Linear``.

Each Linear's weight becomes int8, one scale per output row (per channel, symmetric); each
call quantises its input to uint8 with one scale for the whole tensor, multiplies in int8 with
int32 sums and returns float. Everything else (embeddings, LayerNorm, softmax, pooling) stays
fp32. On the demo's MiniLM it ran at 1.83× the fp32 texts/s on this 2-core VNNI machine
(benchmarks/int8.py, load about 3), with embeddings at cosine min 0.987, mean 0.994 of fp32. The accuracy rule (held-out
nDCG@10 within 0.005 of fp32) it passes for the demo's fine-tuned candidate (+0.004) but fails
for the base MiniLM (-0.013): whether to use it is a per-model choice, measured by
benchmarks/int8.py (benchmarks/README.md has the figures).

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
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
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
            {nn.Linear: per_channel_dynamic_qconfig},
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

# The rule for a lossy path: held-out nDCG@10 within 0.005 of fp32. The cosine floor is
# the one stated beside it (int8 measured min 0.987 on MiniLM); a model below it fails too.
MAX_NDCG_DROP = 0.005
MIN_COSINE = 0.98
METHOD = "int8-dynamic"
METRICS_PREFIX = "quant/int8"  # evaluate's keys for the check (as_metrics / from_metrics)


@dataclass(frozen=True)
class QuantCheck:
    """The measured cost of serving a model in int8 instead of fp32, saved beside its weights.

    The quantised model is not a second set of weights: torch's dynamic int8 is applied at load
    time. What travels with the model (and into the registry) is this record, which says on which
    held-out set it was measured and whether it kept within the rule; ``model.quantize=auto`` and
    ``serve.quantize=auto`` use int8 only where it passed.
    """

    method: str  # "int8-dynamic"
    eval_set: str  # what the nDCG was measured on, e.g. "heldout (737 queries)"
    ndcg_fp32: float
    ndcg_quant: float
    min_cosine: float
    mean_cosine: float
    speedup: float | None = None  # texts/s quantised / fp32 on the machine that checked, when timed

    @property
    def ndcg_delta(self) -> float:
        return self.ndcg_quant - self.ndcg_fp32

    @property
    def passed(self) -> bool:
        return -self.ndcg_delta <= MAX_NDCG_DROP and self.min_cosine >= MIN_COSINE

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        speed = f", {self.speedup:.2f}x fp32 texts/s" if self.speedup else ""
        return (
            f"{self.method} on {self.eval_set}: nDCG@10 {self.ndcg_fp32:.4f} -> {self.ndcg_quant:.4f} "
            f"({self.ndcg_delta:+.4f}, allowed -{MAX_NDCG_DROP}), cosine to fp32 min {self.min_cosine:.4f} "
            f"mean {self.mean_cosine:.4f} (floor {MIN_COSINE}){speed}: {verdict}"
        )

    def save(self, model_dir: str | Path) -> Path:
        from flagops.data.formats import atomic_path

        path = Path(model_dir) / QUANT_CHECK_FILE
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({**asdict(self), "passed": self.passed}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, model_dir: str | Path) -> QuantCheck | None:
        """The record in ``model_dir``, or None when the model was never checked."""
        path = Path(model_dir) / QUANT_CHECK_FILE
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            raw.pop("passed", None)  # derived, written for readers of the file
            return cls(**raw)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ConfigError(f"{path}: not a quantization check record ({exc}); delete it to check the model again") from None


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
    """``quant/int8/*`` keys for the metrics file (and MLflow)."""
    found = {
        "ndcg_fp32": check.ndcg_fp32,
        "ndcg": check.ndcg_quant,
        "ndcg_delta": check.ndcg_delta,
        "min_cosine": check.min_cosine,
        "mean_cosine": check.mean_cosine,
        "passed": float(check.passed),
    }
    return {f"{METRICS_PREFIX}/{key}": value for key, value in found.items()}


def from_metrics(metrics: Mapping[str, float], eval_set: str = "held-out (evaluate)") -> QuantCheck | None:
    """The check the metrics carry (``as_metrics``' keys), or None when evaluate ran none."""
    if f"{METRICS_PREFIX}/ndcg" not in metrics:
        return None
    return QuantCheck(
        method=METHOD,
        eval_set=eval_set,
        ndcg_fp32=metrics[f"{METRICS_PREFIX}/ndcg_fp32"],
        ndcg_quant=metrics[f"{METRICS_PREFIX}/ndcg"],
        min_cosine=metrics[f"{METRICS_PREFIX}/min_cosine"],
        mean_cosine=metrics[f"{METRICS_PREFIX}/mean_cosine"],
    )
