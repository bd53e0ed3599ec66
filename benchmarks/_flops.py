"""Utilisation: a BERT-style encoder's FLOPs, the machine's measured GEMM peak, and the fraction reached.

    .venv/bin/python benchmarks/_flops.py [--size 2048] [--device cpu]     # print the GEMM peaks here

**FLOPs of a forward pass** (``encoder_flops``). Per layer, each token goes through the
Q, K, V and output projections (4 h x h weights) and the feed-forward pair (2 h x i), one
multiply-add (2 FLOPs) per weight: ``2 * (4h^2 + 2hi)`` FLOPs per token per layer, i.e.
2 x the layer's linear parameters. Attention adds, for a sequence of ``s`` tokens, Q K^T and
the weighted sum of V: ``2 * s * h`` multiply-adds per token, ``4 * s * h`` FLOPs. So a
sequence of ``s`` tokens costs ``L * (2 * (4h^2 + 2hi) * s + 4 * h * s^2)``. Embedding
look-ups, layer norms, softmax, GELU and biases are left out (under 1% for MiniLM at
128 tokens); so are the padding tokens: ``s`` is each text's real length, so time spent on
padding shows as lost utilisation, not as work. MiniLM (h 384, i 1536, L 6) costs about
21.2 MFLOP per token in its linear layers.

**The peak** (``gemm_peak``) is the best of a few square matrix multiplications: fp32 by
``torch.matmul``, int8 by ``torch._int_mm`` (int8 x int8 -> int32, oneDNN/VNNI on CPU,
cuBLASLt on CUDA), fp16 and bf16 by ``torch.matmul`` in those dtypes (CUDA; bf16 on CPU
too). It is what this machine's GEMM library reaches on large, easy shapes: an encoder's
smaller, skinnier matrices cannot all reach it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EncoderDims:
    """The sizes that set a BERT-style encoder's FLOPs."""

    hidden: int
    intermediate: int
    layers: int

    @classmethod
    def from_config(cls, config) -> EncoderDims:
        """From a transformers config (BERT, RoBERTa, XLM-R, MiniLM: the same field names)."""
        return cls(config.hidden_size, config.intermediate_size, config.num_hidden_layers)

    @property
    def linear_flops_per_token(self) -> int:
        """2 FLOPs per weight of a layer's projections and feed-forward, times the layers."""
        h, i = self.hidden, self.intermediate
        return self.layers * 2 * (4 * h * h + 2 * h * i)


def encoder_flops(dims: EncoderDims, lengths: Iterable[int]) -> int:
    """Forward-pass FLOPs for sequences of these real token counts (see the module docstring)."""
    lengths = list(lengths)
    attention = sum(4 * dims.hidden * s * s for s in lengths) * dims.layers
    return dims.linear_flops_per_token * sum(lengths) + attention


GEMM_DTYPES = ("fp32", "int8", "fp16", "bf16")


def gemm_peak(dtype: str = "fp32", size: int = 2048, repeats: int = 5, device: str = "cpu") -> tuple[float, str]:
    """Best GFLOP/s (GOP/s for int8) of ``size`` x ``size`` matrix products, and how it was measured.

    One untimed product first (allocation, kernel choice); the best of ``repeats`` counts,
    as the least disturbed on a shared machine.
    """
    dev = torch.device(device)
    if dtype == "int8":
        a = torch.randint(-64, 64, (size, size), dtype=torch.int8, device=dev)
        b = torch.randint(-64, 64, (size, size), dtype=torch.int8, device=dev)
        how = "torch._int_mm (int8 x int8 -> int32)"

        def product():
            return torch._int_mm(a, b)
    else:
        torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        a = torch.randn(size, size, device=dev).to(torch_dtype)
        b = torch.randn(size, size, device=dev).to(torch_dtype)
        how = f"torch.matmul ({dtype})"

        def product():
            return a @ b

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    product()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        product()
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9, f"{how}, {size}x{size}, {device}, {torch.get_num_threads()} threads"


def utilisation(flops: float, seconds: float, peak_gflops: float) -> str:
    """'X GFLOP/s (Y% of the peak)' for ``flops`` done in ``seconds``."""
    achieved = flops / seconds / 1e9
    return f"{achieved:7.1f} GFLOP/s ({100 * achieved / peak_gflops:4.1f}% of the fp32 peak)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=2048, help="square matrix side")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="fp32,int8", help=f"comma-separated, of {', '.join(GEMM_DTYPES)}")
    args = ap.parse_args(argv)
    for dtype in args.dtypes.split(","):
        peak, how = gemm_peak(dtype, args.size, args.repeats, args.device)
        print(f"GEMM peak {dtype:>4}: {peak:8.1f} G{'OP' if dtype == 'int8' else 'FLOP'}/s ({how})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
