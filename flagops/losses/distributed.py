"""Cross-device negatives: all-gather embeddings so each query sees every rank's passages.

``gather_with_grad`` concatenates every rank's tensor along dim 0, in rank order. Only this
rank's slot is differentiable (the local tensor itself sits there); the other slots are
received copies with no gradient. Its backward therefore hands this rank exactly the slice
of the upstream gradient that belongs to its own rows, and nothing travels between ranks.

``scale_grad`` leaves a value unchanged and multiplies its gradient; the contrastive loss
uses it to undo DDP's gradient averaging (see ``InBatchContrastiveLoss``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Ranks in the default process group; 1 when none is initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """All-gather ``t`` (rows, ...) from every rank into (world * rows, ...), rank-major.

    Every rank must pass the same shape. Gradients flow into this rank's rows only. With
    no process group, or a group of one, ``t`` is returned as is.
    """
    world = world_size()
    if world == 1:
        return t
    t = t.contiguous()
    slots = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(slots, t.detach())  # all_gather is not differentiable: copies only
    slots[dist.get_rank()] = t  # put the graph back for the local shard
    return torch.cat(slots, dim=0)  # (world * rows, ...)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` unchanged in value; its gradient multiplied by ``factor``."""
    return x if factor == 1 else _ScaleGrad.apply(x, factor)
