"""Reranker losses: grouped cross-entropy, teacher distillation and the layerwise sum.

A reranker scores every (query, passage) pair of a batch in one flat vector, query by
query: ``B`` queries x a group of ``G`` passages, the positive first, so ``scores[b * G]``
is query ``b``'s positive. With ``s`` the (B, G) view of the scores:

- ``grouped_ce``: ``mean_b (logsumexp_j s[b, j] - s[b, 0])``, cross-entropy with target 0.
- ``teacher_kd``: ``-mean_b sum_j log_softmax(s)[b, j] * softmax(t)[b, j]``, the soft
  cross-entropy towards the teacher's distribution ``t``. It differs from KL(teacher ||
  student) by the teacher's entropy, a constant, so it trains the same; FlagEmbedding adds
  this form to the CE, and we keep its values comparable.
- ``layerwise_loss``: over the L scored layers, ``sum_l grouped_ce(s_l)``, plus
  ``sum_{l < L} teacher_kd(s_l, s_L.detach())`` (the last layer teaches the earlier ones)
  or, with teacher scores, ``sum_l teacher_kd(s_l, t)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def grouped_ce(scores: torch.Tensor, group: int) -> torch.Tensor:
    """Cross-entropy of each query's group with the positive (index 0) as the target.

    Args:
        scores: (batch * group,) pair scores in group order.
        group: passages per query (1 positive + negatives).
    """
    grouped = scores.float().view(-1, group)  # (batch, group); float32 so half-precision logits do not overflow the softmax
    target = torch.zeros(grouped.shape[0], dtype=torch.long, device=grouped.device)
    return F.cross_entropy(grouped, target)


def teacher_kd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy ``-mean(sum(log_softmax(student) * softmax(teacher), -1))``.

    Args:
        student: (batch, group) scores being trained.
        teacher: (batch, group) target scores; no gradient flows into them.
    """
    target = F.softmax(teacher.detach().float(), dim=-1)  # (batch, group)
    return -(F.log_softmax(student.float(), dim=-1) * target).sum(-1).mean()


def layerwise_loss(scores: torch.Tensor, group: int, teacher: torch.Tensor | None = None) -> torch.Tensor:
    """Grouped CE summed over layers, plus distillation into every layer.

    Args:
        scores: (layers, batch * group) one row of pair scores per trained layer, the last layer last.
        group: passages per query.
        teacher: (batch, group) teacher scores, or None: the last layer's (detached) scores
            then teach the earlier layers.
    """
    layers = scores.shape[0]
    loss = sum(grouped_ce(layer, group) for layer in scores)
    if teacher is None:
        teacher, students = scores[-1].view(-1, group), range(layers - 1)  # teacher_kd detaches the last layer
    else:
        students = range(layers)
    return loss + sum(teacher_kd(scores[i].view(-1, group), teacher) for i in students)


class RerankerLoss(nn.Module):
    """The reranker's training loss, chosen by the scores' shape: (batch * group,) from a
    cross-encoder or LLM reranker takes ``grouped_ce`` (+ ``teacher_kd`` with teacher
    scores); (layers, batch * group) from a layerwise reranker takes ``layerwise_loss``."""

    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, scores: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        if scores.ndim == 2:
            return layerwise_loss(scores, self.group, teacher)
        loss = grouped_ce(scores, self.group)
        if teacher is not None:
            loss = loss + teacher_kd(scores.view(-1, self.group), teacher)
        return loss
