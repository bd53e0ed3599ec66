"""InfoNCE: cross-entropy over query-passage scores divided by a temperature (BGE's loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


def compute_loss_from_embeddings(
    q: torch.Tensor, p: torch.Tensor, temperature: float = 0.02, in_batch: bool = True
) -> torch.Tensor:
    scores = group_scores(q, p, temperature, in_batch)
    return F.cross_entropy(scores, positive_targets(q, p, in_batch))


class InBatchContrastiveLoss(nn.Module):
    """InfoNCE with the group's hard negatives and, optionally, every other query's passages."""

    def __init__(self, temperature: float = 0.02, in_batch: bool = True):
        super().__init__()
        self.temperature = temperature
        self.in_batch = in_batch

    def forward(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return compute_loss_from_embeddings(q, p, self.temperature, self.in_batch)
