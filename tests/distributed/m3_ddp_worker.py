"""Worker for the M3 cross-device equivalence test; run by torchrun, 2 processes, gloo on CPU.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed/m3_ddp_worker.py OUT_DIR

Each rank takes its half of ``BATCH``, wraps a tiny M3 (BERT hidden 64, all three modes,
self-distillation on) in DistributedDataParallel with cross-device negatives, runs one
forward and backward through ``M3ForTraining`` and the real ``M3UnifiedLoss``, and saves
its loss, loss terms and (DDP-averaged) gradients to ``OUT_DIR/rank<r>.pt``. Each case
runs with and without teacher scores, and once more with L_dense's gradient scaling
switched off: a control the test expects to miss the single-process gradient.

Then, in the same process group, the ``train_m3`` recipe runs 2 steps of the ``tiny_m3``
profile (length-grouped, sub-batched) with cross-device negatives into ``OUT_DIR/model``.
Importing this module has no side effects: the test takes ``BATCH`` and ``model`` from it.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist
from train_worker import examples  # tests/distributed is on sys.path: the script's own folder

from flagops.config import ConfigError, load_config
from flagops.losses import m3 as m3_losses
from flagops.models.m3 import M3Embedder
from flagops.training.common import GroupCollator
from flagops.training.m3 import M3ForTraining, train

TEMPERATURE = 0.05
MODES = ("dense", "sparse", "colbert")
# 4 queries (2 per rank), group 2 (positive first), teacher scores for the distillation case.
BATCH = [
    (f"query {i} about {topic}", [f"{topic} passage {i}", f"negative {i} on {other}"], [0.9, 0.2 + 0.1 * i])
    for i, (topic, other) in enumerate([("river", "stone"), ("cloud", "light"), ("alpha", "omega"), ("gamma", "delta")])
]


def model(cross_device: bool) -> M3ForTraining:
    """The tiny BERT from the flagops cache with seeded heads; dropout off so every run is deterministic.

    Mean pooling: a random BERT's CLS state barely varies, which would leave L_dense with
    almost no gradient and the unscaled control with nothing to miss.
    """
    m3 = M3Embedder.load("tiny-bert", pooling="mean", query_max_len=16, passage_max_len=16, colbert_dim=16, seed=0)
    loss = m3_losses.M3UnifiedLoss(TEMPERATURE, in_batch=True, cross_device=cross_device)
    return M3ForTraining(m3, loss, MODES, self_distill=True).eval()


def collate(module: M3ForTraining, items, teacher: bool) -> dict[str, torch.Tensor]:
    batch = GroupCollator(module.m3)(items)
    if not teacher:
        batch.pop("teacher_scores")
    return batch


def loss_and_grads(module: M3ForTraining, wrapped: torch.nn.Module, items, teacher: bool):
    """One forward/backward of ``wrapped``; returns (loss, {term: value}, {name: grad})."""
    module.zero_grad(set_to_none=True)
    loss = wrapped(**collate(module, items, teacher))["loss"]
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss.item(), dict(module.last_terms), grads


def main(out_dir: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    per_rank = len(BATCH) // world
    items = BATCH[rank * per_rank : (rank + 1) * per_rank]
    result: dict[str, object] = {"rank": rank, "world": world}
    unscaled = mock.patch.object(m3_losses, "scale_grad", lambda x, factor: x)  # L_dense's gradient left as is
    for case, teacher, context in (("plain", False, nullcontext()), ("teacher", True, nullcontext()), ("unscaled", False, unscaled)):
        module = model(cross_device=True)
        # The BERT pooler is unused with mean pooling, hence find_unused_parameters.
        ddp = torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)
        with context:
            result[case] = loss_and_grads(module, ddp, items, teacher)
    torch.save(result, out_dir / f"rank{rank}.pt")
    train_recipe(out_dir / "model")
    dist.destroy_process_group()


def train_recipe(out: Path) -> None:
    overrides = ["train.max_steps=2", "train.cross_device_negatives=true", "train.save_steps=1", "train.logging_steps=1"]
    cfg = load_config("tiny_m3", overrides)
    try:  # ranks draw different length buckets: their batch sizes must agree for the all-gather
        train(cfg.model, cfg.m3.model_copy(update={"bucket_batch_sizes": (8, 4)}), cfg.train, examples(), out)
    except ConfigError as e:
        print(f"m3_ddp_worker: refused: {e}")
    summary = train(cfg.model, cfg.m3, cfg.train, examples(), out)
    print(f"m3_ddp_worker: {summary}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
