"""Worker for the torchrun smoke test of the train_embedder recipe with cross-device negatives.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed/train_worker.py OUT_DIR

The HF Trainer joins the process group itself (gloo on CPU); 24 queries, batch 4 per rank.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flagops.config import load_config
from flagops.data.formats import TrainExample
from flagops.training.embedder import train

WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river stone cloud light".split()


def examples(n: int = 24) -> list[TrainExample]:
    out = []
    for i in range(n):
        topic = [WORDS[(i + k) % len(WORDS)] for k in (0, 3, 7)]
        negs = [" ".join(WORDS[(i + k + j) % len(WORDS)] for k in range(5)) for j in (2, 5, 9)]
        out.append(TrainExample(query=" ".join(topic), pos=[" ".join(topic + WORDS[:2])], neg=negs))
    return out


if __name__ == "__main__":
    overrides = [
        "train.max_steps=2",
        "train.batch_size=4",
        "train.cross_device_negatives=true",
        "train.save_steps=1",
        "train.logging_steps=1",
    ]
    cfg = load_config("tiny", overrides)
    summary = train(cfg.model, cfg.train, examples(), Path(sys.argv[1]))
    print(f"train_worker: {summary}")
