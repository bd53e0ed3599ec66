"""Memory and CPU of ``train.checkpoint_chunks`` (GradCache's trade) on the bge recipe.

    .venv/bin/python benchmarks/checkpoint_chunks.py [--batch-size 32] [--group 8] [--steps 3] [--threads 1]

Trains the demo profile's MiniLM for ``--steps`` steps at a big batch (default 32 queries x 8
passages = 256 passages a step) on stdlib rows (``train_reranker_speed.training_rows``), once
with ``train.checkpoint_chunks=false`` and once with ``true``, each in its own process, and
prints each run's peak RSS (``os.wait4``, loading included), CPU seconds and the losses, which
must be equal: checkpointing changes what is kept, not what is computed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_run(args: argparse.Namespace) -> int:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from train_reranker_speed import training_rows

    from flagops.config import load_config
    from flagops.data.formats import TrainExample
    from flagops.training import embedder as recipe

    torch.set_num_threads(args.threads)
    overrides = [f"train.batch_size={args.batch_size}", f"train.train_group_size={args.group}", f"train.max_steps={args.steps}"]
    overrides += ["train.save_steps=100000", "train.logging_steps=1", f"train.checkpoint_chunks={args.checkpoint}"]
    cfg = load_config("demo", overrides)
    rows = training_rows(args.batch_size * args.steps, 15)
    examples = [TrainExample(query=r["query"], pos=r["pos"], neg=r["neg"]) for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        summary = recipe.train(cfg.model, cfg.train, examples, Path(tmp) / "model")
    print("RESULT " + json.dumps(summary))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpoint", choices=["true", "false"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.checkpoint:
        return one_run(args)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    print(f"batch {args.batch_size} x group {args.group}, {args.steps} steps, {args.threads} thread(s); load {os.getloadavg()[0]:.1f}")
    for flag in ("false", "true"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--checkpoint", flag]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"checkpoint_chunks={flag}: the run failed")
        result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT ")).removeprefix("RESULT "))
        cpu, rss = usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024**2
        losses = f"loss {result['loss_start']:.6f} -> {result['loss_end']:.6f}"
        print(f"checkpoint_chunks={flag}: peak RSS {rss:.2f} GiB, CPU {cpu:.1f} s, {losses}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
