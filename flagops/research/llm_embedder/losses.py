"""LLM-Embedder's losses over a batch of B queries, each with a group of G keys (B * G keys, each
query's group contiguous, its positive first), scores = cosine / temperature.

**Stabilized distillation** (FlagEmbedding's ``stable_distill``). The LM's rewards vary a lot from
query to query and between keys of similar use, so regressing the student onto their softmax (KL)
is noisy. Instead each query's keys are ranked by the teacher, best first, and the loss is a
ListMLE-style sum over the ranking: at step i, a cross-entropy over all B * G keys of the batch
whose target is the i-th best key of the query's group, with the keys ranked before it masked
out, weighted by that key's teacher weight ``softmax(teacher_scores)``. So the student is asked
only to rank each key above those the teacher ranks below it, and the weights let the keys the
teacher is sure about dominate. The terms are averaged over the queries and summed over steps.

**KL distillation**: KL(softmax(teacher / t_T) || softmax(student / t_S)) over each query's own
group (flagops' ``kl_distill``; its value differs from FlagEmbedding's soft cross-entropy only by
the teacher's entropy, a constant).

**Contrastive**: InfoNCE over all B * G keys, the positive the target (flagops' ``infonce``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flagops.losses.infonce import compute_loss_from_embeddings, group_scores, local_scores
from flagops.losses.kl_distill import compute_loss_from_scores


def stable_distill_loss(scores: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
    """scores: (B, B * G) student scores (already / temperature); teacher_scores: (B, G) in group order."""
    batch, group = teacher_scores.shape
    weights = F.softmax(teacher_scores, dim=-1)  # (B, G)
    order = torch.argsort(teacher_scores, dim=-1, descending=True, stable=True)  # (B, G): the teacher's ranking
    own = torch.arange(batch, device=scores.device)[:, None] * group  # (B, 1): first column of each query's group
    masked = scores
    loss = scores.new_zeros(())
    for i in range(group):
        target = own[:, 0] + order[:, i]  # (B,): column of the i-th best key
        ce = F.cross_entropy(masked, target, reduction="none")  # (B,)
        loss = loss + (weights.gather(1, order[:, i : i + 1]).squeeze(1) * ce).mean()
        masked = masked.scatter(1, target[:, None], torch.finfo(scores.dtype).min)  # ranked keys leave the softmax
    return loss


def kl_distill_loss(group_student: torch.Tensor, teacher_scores: torch.Tensor, teacher_temperature: float, student_temperature: float):
    """group_student: (B, G) student scores (already / cosine temperature); teacher_scores: (B, G)."""
    return compute_loss_from_scores(group_student / student_temperature, teacher_scores, teacher_temperature)


def llm_embedder_loss(
    q: torch.Tensor,
    keys: torch.Tensor,
    teacher_scores: torch.Tensor | None,
    *,
    temperature: float,
    stable_distill: bool,
    distill_weight: float,
    contrastive_weight: float,
    teacher_temperature: float = 1.0,
    student_temperature: float = 1.0,
) -> torch.Tensor:
    """q: (B, dim), keys: (B * G, dim) normalised embeddings; teacher_scores (B, G) or None (contrastive only)."""
    loss = q.new_zeros(())
    if teacher_scores is not None and distill_weight > 0:
        scores = group_scores(q, keys, temperature, in_batch=True)  # (B, B * G)
        if stable_distill:
            distill = stable_distill_loss(scores, teacher_scores)
        else:
            own = local_scores(scores, teacher_scores.shape[1], in_batch=True)  # (B, G)
            distill = kl_distill_loss(own, teacher_scores, teacher_temperature, student_temperature)
        loss = loss + distill_weight * distill
    if contrastive_weight > 0:
        loss = loss + contrastive_weight * compute_loss_from_embeddings(q, keys, temperature, in_batch=True)
    return loss
