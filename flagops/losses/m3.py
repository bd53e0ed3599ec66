"""BGE-M3's unified loss: InfoNCE per mode and for their ensemble, plus self-distillation.

With scores s_m already divided by the temperature, for modes dense, sparse and ColBERT:

    ensemble = s_dense + 0.3 * s_sparse + s_colbert
    L        = (L_dense + L_ensemble + 0.1 * L_sparse + L_colbert) / 4
    L_self   = (KL_dense + 0.1 * KL_sparse + KL_colbert) / 3     KL_m = KL(softmax(ensemble.detach()) || softmax(s_m))
    loss     = (L + L_self) / 2                                  (once self-distillation is on)

A subset of modes keeps the same shape: the divisor is the number of InfoNCE terms (modes,
plus the ensemble when there are two or more), then the number of modes. A single mode is
its plain InfoNCE, with no ensemble and nothing to self-distil.

Each L_m is InfoNCE over the scores: (batch, batch * group) with in-batch negatives, the
positive of query i in column i * group; (batch, group) without, positive in column 0.
With teacher scores (pos_scores / neg_scores) every L_m becomes, as ``kd_loss`` says:

* ``m3_kd_loss`` (FlagEmbedding's M3 default): sum over the group's members j of
  p_teacher(j) * CE(scores, target j) with members before j masked out. It replaces InfoNCE
  (a one-hot teacher on the positive gives InfoNCE back).
* ``kl_div``: InfoNCE + distill_weight * KL(softmax(teacher) || softmax(the group's scores)).

Cross-device negatives (``dense_global``, FlagEmbedding's ``negatives_cross_device``) change
L_dense alone: it becomes InfoNCE over every rank's queries and passages, (W * batch,
W * batch * group) with query j's positive in column j * group, and every rank's teacher
scores. Everything else (L_sparse, L_colbert, L_ensemble and the KL terms, s_dense inside the
ensemble included) stays on this rank's own scores. ``M3UnifiedLoss`` multiplies L_dense's
gradient by W (see ``InBatchContrastiveLoss``): DDP's mean then gives the gradient of
L_dense over the whole batch plus the mean of the ranks' local terms.

FlagEmbedding writes its KL terms as the soft cross-entropy -sum(p_t * log_softmax(s));
here they are true KL divergences (``flagops.losses.kl_distill``). The two differ by the
teacher's entropy, a constant to the student, so the gradients are identical; the value
reads as a divergence (0 when a mode agrees with its teacher).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from flagops.losses.distributed import gather_with_grad, scale_grad, world_size
from flagops.losses.infonce import group_scores, local_scores
from flagops.losses.kl_distill import compute_loss_from_scores as kl_from_scores

ENSEMBLE_WEIGHTS = {"dense": 1.0, "sparse": 0.3, "colbert": 1.0}  # inside the ensemble score
LOSS_WEIGHTS = {"dense": 1.0, "sparse": 0.1, "colbert": 1.0}  # of each mode's loss and KL term


@dataclass
class M3LossOutput:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor]  # "dense", ..., "ensemble", "self_distill": each unweighted


class CrossDeviceDense(NamedTuple):
    """L_dense's inputs over every rank's batch, rank-major: rank r's queries are rows r * batch onward."""

    scores: torch.Tensor  # (world * batch, world * batch * group), divided by the temperature
    teacher: torch.Tensor | None = None  # (world * batch, group) raw teacher scores


def targets(batch: int, group: int, in_batch: bool, device=None) -> torch.Tensor:
    """Column of each query's positive: i * group with in-batch negatives, else 0. (batch,)"""
    idx = torch.arange(batch, device=device)
    return idx * group if in_batch else torch.zeros_like(idx)


def m3_kd_loss(scores: torch.Tensor, teacher_probs: torch.Tensor, group: int, in_batch: bool) -> torch.Tensor:
    """FlagEmbedding's ``m3_kd_loss``. scores: (batch, batch * group) or (batch, group);
    teacher_probs: (batch, group), each row a distribution over the query's own group."""
    first = targets(scores.shape[0], group, in_batch, scores.device)  # (batch,)
    mask = torch.zeros_like(scores)  # (batch, n): -inf-like on members already used as targets
    loss = scores.new_zeros(())
    for j in range(group):
        ce = F.cross_entropy(scores + mask, first + j, reduction="none")  # (batch,)
        loss = loss + (teacher_probs[:, j] * ce).mean()
        mask = mask.scatter(1, (first + j)[:, None], torch.finfo(scores.dtype).min)
    return loss


def mode_loss(scores: torch.Tensor, group: int, *, in_batch: bool, teacher=None, kd_loss="m3_kd_loss", distill_weight=1.0) -> torch.Tensor:
    """One mode's contrastive (or teacher-distilled) loss. ``teacher``: raw scores (batch, group)."""
    if teacher is not None and kd_loss == "m3_kd_loss":
        return m3_kd_loss(scores, F.softmax(teacher, dim=-1), group, in_batch)
    loss = F.cross_entropy(scores, targets(scores.shape[0], group, in_batch, scores.device))
    if teacher is not None:
        loss = loss + distill_weight * kl_from_scores(local_scores(scores, group, in_batch), teacher)
    return loss


def ensemble_scores(scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return sum(ENSEMBLE_WEIGHTS[m] * s for m, s in scores.items())


def self_distill_kl(student: torch.Tensor, ensemble: torch.Tensor) -> torch.Tensor:
    """KL(softmax(ensemble) || softmax(student)) over each query's full row, the ensemble detached."""
    return F.kl_div(F.log_softmax(student, dim=-1), F.softmax(ensemble.detach(), dim=-1), reduction="batchmean")


def compute_loss_from_scores(
    scores: Mapping[str, torch.Tensor],
    group: int,
    *,
    in_batch: bool = True,
    teacher: torch.Tensor | None = None,
    kd_loss: str = "m3_kd_loss",
    distill_weight: float = 1.0,
    self_distill: bool = False,
    dense_global: CrossDeviceDense | None = None,
) -> M3LossOutput:
    """scores: mode -> (batch, batch * group) or (batch, group), already divided by the temperature.

    ``dense_global`` (cross-device negatives, in-batch only): L_dense is computed on it
    instead of ``scores["dense"]``, which still enters the ensemble and its KL term. Its
    gradient is not rescaled here.
    """
    if not scores or set(scores) - set(LOSS_WEIGHTS):
        raise ValueError(f"scores must be keyed by some of {', '.join(LOSS_WEIGHTS)}, got {sorted(scores)}")
    infonce_inputs = {m: (s, teacher) for m, s in scores.items()}  # mode -> (scores, teacher)
    if dense_global is not None:
        if not in_batch or "dense" not in scores:
            raise ValueError("cross-device negatives need in-batch negatives and the dense mode")
        infonce_inputs["dense"] = dense_global
    kw = {"in_batch": in_batch, "kd_loss": kd_loss, "distill_weight": distill_weight}
    terms = {m: mode_loss(s, group, teacher=t, **kw) for m, (s, t) in infonce_inputs.items()}
    total = sum(LOSS_WEIGHTS[m] * terms[m] for m in scores)
    if len(scores) == 1:
        return M3LossOutput(total, terms)
    ensemble = ensemble_scores(scores)
    terms["ensemble"] = mode_loss(ensemble, group, teacher=teacher, **kw)
    loss = (total + terms["ensemble"]) / len(terms)
    if self_distill:
        kls = {m: self_distill_kl(s, ensemble) for m, s in scores.items()}
        terms["self_distill"] = sum(LOSS_WEIGHTS[m] * kl for m, kl in kls.items()) / len(kls)
        loss = (loss + terms["self_distill"]) / 2
    return M3LossOutput(loss, terms)


class M3UnifiedLoss(nn.Module):
    """The unified loss over raw similarities: divides by ``temperature``, then
    ``compute_loss_from_scores``. Self-distillation is switched per call (it starts late).

    With ``cross_device`` under a process group of W > 1 ranks, the dense vectors passed as
    ``dense=(q, p)`` and the teacher scores are all-gathered for L_dense (rank-major, as
    ``InBatchContrastiveLoss`` gathers), and L_dense's gradient is multiplied by W: every
    rank computes the same L_dense but backprops only through its own shard, and DDP
    averages. The other terms are per-rank losses, which DDP's mean already averages right.
    """

    def __init__(
        self,
        temperature: float = 0.02,
        in_batch: bool = True,
        kd_loss: str = "m3_kd_loss",
        distill_weight: float = 1.0,
        cross_device: bool = False,
    ):
        super().__init__()
        if kd_loss not in ("m3_kd_loss", "kl_div"):
            raise ValueError(f"kd_loss {kd_loss!r}: use m3_kd_loss or kl_div")
        if cross_device and not in_batch:
            raise ValueError("cross-device negatives need in-batch negatives (in_batch=True)")
        self.temperature = temperature
        self.in_batch = in_batch
        self.kd_loss = kd_loss
        self.distill_weight = distill_weight
        self.cross_device = cross_device

    def forward(self, similarities: Mapping[str, torch.Tensor], group: int, teacher=None, self_distill=False, dense=None) -> M3LossOutput:
        """``dense``: this rank's (q (batch, dim), p (batch * group, dim)) dense vectors; used only cross-device."""
        scores = {m: s / self.temperature for m, s in similarities.items()}
        if not self.in_batch:
            scores = {m: local_scores(s, group, True) for m, s in scores.items()}  # (batch, group)
        return compute_loss_from_scores(
            scores,
            group,
            in_batch=self.in_batch,
            teacher=teacher,
            kd_loss=self.kd_loss,
            distill_weight=self.distill_weight,
            self_distill=self_distill,
            dense_global=self.gather_dense(dense, teacher),
        )

    def gather_dense(self, dense, teacher) -> CrossDeviceDense | None:
        """Every rank's dense scores and teacher, L_dense's gradient scaled by W; None in one process."""
        world = world_size() if self.cross_device else 1
        if world == 1:
            return None
        if dense is None:
            raise ValueError("cross-device negatives gather the dense vectors: pass dense=(q, p)")
        q, p = (gather_with_grad(t) for t in dense)  # (world * batch, dim), (world * batch * group, dim)
        # these scores feed L_dense alone, so scaling their gradient scales L_dense's
        scores = scale_grad(group_scores(q, p, self.temperature, in_batch=True), world)  # (world * batch, world * batch * group)
        return CrossDeviceDense(scores, None if teacher is None else gather_with_grad(teacher))  # teacher: (world * batch, group)
