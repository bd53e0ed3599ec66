"""InfoNCE: cross-entropy over query-passage scores divided by a temperature (BGE's loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flagops.losses.distributed import gather_with_grad, scale_grad, world_size


def group_scores(q: torch.Tensor, p: torch.Tensor, temperature: float, in_batch: bool) -> torch.Tensor:
    """Scores divided by temperature.

    q: (batch, dim) queries; p: (batch * group, dim) passages, each query's group contiguous
    with its positive first. Returns (batch, batch * group) with in-batch negatives, else
    (batch, group).
    """
    if in_batch:
        return q @ p.T / temperature  # (batch, batch * group)
    group = p.shape[0] // q.shape[0]
    return torch.einsum("bd,bgd->bg", q, p.view(q.shape[0], group, -1)) / temperature  # (batch, group)


def positive_targets(q: torch.Tensor, p: torch.Tensor, in_batch: bool) -> torch.Tensor:
    """Column of each query's positive: i * group with in-batch negatives, else 0."""
    group = p.shape[0] // q.shape[0]
    idx = torch.arange(q.shape[0], device=q.device)  # (batch,)
    return idx * group if in_batch else torch.zeros_like(idx)


def local_scores(scores: torch.Tensor, group: int, in_batch: bool) -> torch.Tensor:
    """Each query's own group of scores, (batch, group), from either score layout."""
    if not in_batch:
        return scores
    batch = scores.shape[0]
    cols = torch.arange(batch, device=scores.device)[:, None] * group + torch.arange(group, device=scores.device)
    return scores.gather(1, cols)  # (batch, group)


def compute_loss_from_embeddings(q: torch.Tensor, p: torch.Tensor, temperature: float = 0.02, in_batch: bool = True) -> torch.Tensor:
    scores = group_scores(q, p, temperature, in_batch)
    return F.cross_entropy(scores, positive_targets(q, p, in_batch))


class InBatchContrastiveLoss(nn.Module):
    """InfoNCE with the group's hard negatives and, optionally, every other query's passages.

    With ``cross_device`` (and in-batch negatives) under a process group of W > 1 ranks,
    queries and passages are all-gathered first, so each query also scores every other
    rank's passages. Gathering keeps the layout ``positive_targets`` expects: rank r's B
    queries become rows r*B.., and its B*group passages columns r*B*group.., so global
    query j's positive is still column j * group.

    Gradient scaling: every rank computes the same full loss L over all W*B queries, but
    its backward reaches the parameters only through its own shard (the other slots are
    copies), giving g_r = dL/d(shard r) * d(shard r)/dθ. The true gradient is the sum
    dL/dθ = g_1 + ... + g_W, while DDP (and DeepSpeed) all-reduce the *mean* (g_1 + ... +
    g_W) / W. So the gradient is multiplied by W here, and DDP's average then equals the
    single-process gradient on the concatenated batch exactly. Only the gradient is scaled:
    the reported loss stays L. (FlagEmbedding omits this factor: its contrastive gradient
    is W times too small, which Adam mostly absorbs but which tilts the balance towards
    the local distillation term.)
    """

    def __init__(self, temperature: float = 0.02, in_batch: bool = True, cross_device: bool = False):
        super().__init__()
        if cross_device and not in_batch:
            raise ValueError("cross-device negatives need in-batch negatives (in_batch=True)")
        self.temperature = temperature
        self.in_batch = in_batch
        self.cross_device = cross_device

    def forward(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        world = world_size() if self.cross_device else 1
        if world == 1:
            return compute_loss_from_embeddings(q, p, self.temperature, self.in_batch)
        q, p = gather_with_grad(q), gather_with_grad(p)  # (world * batch, dim), (world * batch * group, dim)
        return scale_grad(compute_loss_from_embeddings(q, p, self.temperature, self.in_batch), world)
