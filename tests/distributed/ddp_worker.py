"""Worker for the DDP equivalence test; run by torchrun, 2 processes, gloo on CPU.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed/ddp_worker.py OUT_DIR

Each rank takes its half of ``BATCH`` (queries and their groups), wraps the tiny BERT's
training module in DistributedDataParallel with cross-device negatives on, runs one
forward and backward, and saves its loss and its (DDP-averaged) gradients to
``OUT_DIR/rank<r>.pt``. The test computes the same batch in one process and compares.
Importing this module has no side effects: the test takes ``BATCH`` and ``model`` from it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from flagops.losses.distributed import gather_with_grad
from flagops.models.embedder import Embedder
from flagops.training.common import GroupCollator
from flagops.training.embedder import BiEncoderForTraining

TEMPERATURE = 0.05
# 8 queries, group 3 (positive first), teacher scores for the distillation case.
BATCH = [
    (f"query {i} about {topic}", [f"{topic} passage {i}", f"negative {i} on {other}", f"another {other} text {i}"], [0.9, 0.2, 0.1])
    for i, (topic, other) in enumerate(
        [
            ("river", "stone"),
            ("cloud", "light"),
            ("alpha", "omega"),
            ("gamma", "delta"),
            ("kappa", "sigma"),
            ("theta", "zeta"),
            ("stone", "river"),
            ("light", "cloud"),
        ]
    )
]


def model(cross_device: bool, distill_weight: float = 1.0) -> BiEncoderForTraining:
    """The tiny BERT from the flagops cache, dropout off so every run is deterministic."""
    embedder = Embedder.load("tiny-bert", pooling="mean", query_max_len=16, passage_max_len=16)
    return BiEncoderForTraining(embedder, TEMPERATURE, True, distill_weight, cross_device).eval()


def loss_and_grads(module: torch.nn.Module, wrapped: torch.nn.Module, items, distill: bool):
    """One forward/backward of ``wrapped`` on ``items``; returns (loss, {name: grad})."""
    batch = GroupCollator(module.embedder)(items)
    if not distill:
        batch.pop("teacher_scores")
    module.zero_grad(set_to_none=True)
    loss = wrapped(**batch)["loss"]
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss.item(), grads


def gather_by_hand(rank: int, world: int) -> dict[str, torch.Tensor]:
    """The real all-gather on tiny tensors: values and the gradient that reaches this rank."""
    t = torch.full((2, 3), float(rank + 1), requires_grad=True)  # rank r holds (2, 3) of r + 1
    g = gather_with_grad(t)  # (world * 2, 3)
    weights = torch.arange(g.numel(), dtype=torch.float32).view_as(g)
    (g * weights).sum().backward()
    return {"gathered": g.detach(), "grad": t.grad, "weights": weights}


def main(out_dir: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    per_rank = len(BATCH) // world
    items = BATCH[rank * per_rank : (rank + 1) * per_rank]
    result: dict[str, object] = {"rank": rank, "world": world, "gather": gather_by_hand(rank, world)}
    for case, cross_device, distill in (("cross", True, False), ("cross_distill", True, True), ("local", False, False)):
        torch.manual_seed(0)
        module = model(cross_device)
        # The BERT pooler is unused with mean pooling, hence find_unused_parameters.
        ddp = torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)
        result[case] = loss_and_grads(module, ddp, items, distill)
    torch.save(result, out_dir / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
