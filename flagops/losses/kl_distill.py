"""Distillation from teacher scores: KL(teacher softmax || student softmax) over each group.

FlagEmbedding's ``kl_div`` mode minimises the soft cross-entropy
``-sum(softmax(teacher) * log_softmax(student))``; that differs from this KL only by the
teacher's entropy, a constant, so the gradients are identical and the value reads as a
true divergence (0 when the student matches the teacher).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def compute_loss_from_scores(student: torch.Tensor, teacher: torch.Tensor, teacher_temperature: float = 1.0) -> torch.Tensor:
    """student: (batch, group) scores already divided by the student temperature;
    teacher: (batch, group) raw teacher scores (pos_scores + neg_scores)."""
    target = F.softmax(teacher / teacher_temperature, dim=-1)  # (batch, group)
    return F.kl_div(F.log_softmax(student, dim=-1), target, reduction="batchmean")


class KLDistillLoss(nn.Module):
    def __init__(self, teacher_temperature: float = 1.0):
        super().__init__()
        self.teacher_temperature = teacher_temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return compute_loss_from_scores(student, teacher, self.teacher_temperature)
