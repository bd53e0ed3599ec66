"""Where inference runs: the device and dtype a loaded model is placed on, chosen from config.

``model.device`` / ``serve.device`` take ``auto`` (``cuda:0`` when torch sees CUDA, else
``cpu``), ``cpu``, ``cuda`` or ``cuda:N``; ``model.dtype`` / ``serve.dtype`` take ``auto``
(float16 on CUDA, float32 on CPU), ``float32``, ``float16`` or ``bfloat16``.

float16 on CPU is refused, not silently replaced: torch's CPU half kernels are slow or
missing and it would change every number; ``auto`` or ``float32`` is what a CPU wants
(bfloat16 runs on CPU, but only pays with AMX). Training does not come here: the HF
Trainer places its model itself.

The choice (``inference_placement``) is separate from the move (``place``), so the
choice can be tested on a machine without CUDA; ``move`` is the only ``.to()``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch
from torch import nn

from flagops.config import DEVICE_PATTERN, ConfigError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    def __str__(self) -> str:
        return f"{self.device} {str(self.dtype).removeprefix('torch.')}"


CPU_FP32 = Placement(torch.device("cpu"), torch.float32)


def select_device(preference: str = "auto", *, key: str = "model.device") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a torch.device; CUDA asked for but absent is a ConfigError."""
    if not re.match(DEVICE_PATTERN, preference):
        raise ConfigError(f"{key}={preference!r}: expected auto, cpu, cuda or cuda:N")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if preference == "auto":
        return torch.device("cuda", 0)
    if not torch.cuda.is_available():
        raise ConfigError(f"{key}={preference}: torch sees no CUDA device here (torch {torch.__version__}); set {key}=auto or cpu")
    index = int(preference.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"{key}={preference}: torch sees {count} CUDA device(s) (cuda:0..cuda:{count - 1}); pick one of them or auto")
    return torch.device("cuda", index)


def select_dtype(device: torch.device, preference: str = "auto", *, key: str = "model.dtype") -> torch.dtype:
    """``auto`` (float16 on CUDA, float32 on CPU) | ``float32`` | ``float16`` | ``bfloat16`` -> a torch.dtype."""
    if preference == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if preference not in DTYPES:
        raise ConfigError(f"{key}={preference!r}: expected auto, {', '.join(DTYPES)}")
    if preference == "float16" and device.type == "cpu":
        raise ConfigError(f"{key}=float16 runs on CUDA only (CPU half kernels are slow or missing); set {key}=auto or float32")
    return DTYPES[preference]


def inference_placement(section=None, *, name: str = "model") -> Placement:
    """The placement a config section (``model`` or ``serve``: its ``device`` and ``dtype``) asks for.

    None (no config at hand, e.g. the MLflow pyfunc) is ``auto`` for both.
    """
    device = select_device(getattr(section, "device", "auto"), key=f"{name}.device")
    return Placement(device, select_dtype(device, getattr(section, "dtype", "auto"), key=f"{name}.dtype"))


def current_placement(module: nn.Module) -> Placement:
    """Where ``module``'s first parameter lives, and its dtype."""
    first = next(module.parameters())
    return Placement(first.device, first.dtype)


def move(module: nn.Module, placement: Placement) -> nn.Module:
    """The one ``.to()``: weights (and buffers) to the placement's device and floating dtype."""
    return module.to(device=placement.device, dtype=placement.dtype)


def place(module: nn.Module, placement: Placement) -> nn.Module:
    """Put ``module`` on ``placement``; nothing moves when it is there already (CPU fp32 today)."""
    if current_placement(module) != placement:
        log.info("inference on %s", placement)
        module = move(module, placement)
    return module


def torch_backend_name(module: nn.Module) -> str:
    """``torch-int8-dynamic``, or ``torch-`` and the weights' dtype (``fp32``, ``fp16``, ``bf16``), ``-cuda`` on a GPU."""
    from torch.ao.nn.quantized import dynamic as nnqd  # what flagops.models.quantize swaps in

    if any(isinstance(m, nnqd.Linear) for m in module.modules()):
        return "torch-int8-dynamic"
    placement = current_placement(module)
    short = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
    dtype = str(placement.dtype).removeprefix("torch.")
    name = f"torch-{short.get(dtype, dtype)}"
    return name if placement.device.type == "cpu" else f"{name}-{placement.device.type}"


def backend_name(module: nn.Module) -> str:
    """What runs ``module``'s maths: an OpenVINO stand-in's ``openvino-bf16`` / ``openvino-f32``, else ``torch_backend_name``."""
    return getattr(module, "numerics", None) or torch_backend_name(module)
