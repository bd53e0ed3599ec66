"""Reranker losses against hand computation on tiny tensors (plain math, no torch in the expectations)."""

import math

import pytest
import torch

from flagops.losses.reranker import RerankerLoss, grouped_ce, layerwise_loss, teacher_kd


def _log_softmax(xs: list[float]) -> list[float]:
    log_z = math.log(sum(math.exp(x) for x in xs))
    return [x - log_z for x in xs]


def _ce(xs: list[float]) -> float:
    """Cross-entropy with target 0: log(sum exp) - x0."""
    return -_log_softmax(xs)[0]


def _kd(student: list[float], teacher: list[float]) -> float:
    """-sum(softmax(teacher) * log_softmax(student)) for one group."""
    t = [math.exp(x) for x in _log_softmax(teacher)]
    return -sum(ti * si for ti, si in zip(t, _log_softmax(student), strict=True))


# Two queries, group 3 (positive first), flat in group order as the reranker emits them.
SCORES = [2.0, 0.0, -1.0, 0.5, 1.5, 0.0]
TEACHER = [[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]]


def test_grouped_ce_by_hand():
    # q0: log(e^2 + e^0 + e^-1) - 2 = 0.1698; q1: log(e^.5 + e^1.5 + e^0) - 0.5 = 1.4644
    expected = (math.log(math.exp(2) + 1 + math.exp(-1)) - 2 + math.log(math.exp(0.5) + math.exp(1.5) + 1) - 0.5) / 2
    assert grouped_ce(torch.tensor(SCORES), 3).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx((_ce(SCORES[:3]) + _ce(SCORES[3:])) / 2)
    # the target is index 0 of each group: a group that puts its positive last costs more
    assert grouped_ce(torch.tensor([-1.0, 0.0, 2.0]), 3).item() > grouped_ce(torch.tensor([2.0, 0.0, -1.0]), 3).item()


def test_teacher_kd_by_hand():
    student = torch.tensor(SCORES).view(2, 3)
    expected = (_kd(SCORES[:3], TEACHER[0]) + _kd(SCORES[3:], TEACHER[1])) / 2
    assert teacher_kd(student, torch.tensor(TEACHER)).item() == pytest.approx(expected, rel=1e-6)
    # at the teacher, the value is the teacher's entropy: the KL is 0, the gradient too
    s = torch.tensor(TEACHER, requires_grad=True)
    teacher_kd(s, torch.tensor(TEACHER)).backward()
    entropy = sum(-sum(math.exp(x) * x for x in _log_softmax(row)) for row in TEACHER) / 2
    assert teacher_kd(torch.tensor(TEACHER), torch.tensor(TEACHER)).item() == pytest.approx(entropy, rel=1e-6)
    assert s.grad.abs().max().item() < 1e-7


def test_teacher_kd_gradient_is_student_minus_teacher_softmax():
    # d/ds of -sum(p_t * log_softmax(s)) = softmax(s) - p_t, divided by the batch (mean)
    s = torch.tensor([[0.3, -1.0, 2.0]], requires_grad=True)
    teacher_kd(s, torch.tensor([[1.0, 0.5, -0.5]])).backward()
    ps = [math.exp(x) for x in _log_softmax([0.3, -1.0, 2.0])]
    pt = [math.exp(x) for x in _log_softmax([1.0, 0.5, -0.5])]
    assert s.grad[0].tolist() == pytest.approx([a - b for a, b in zip(ps, pt, strict=True)], abs=1e-6)


# Three layers x (2 queries x group 2); the last layer is the deepest.
LAYERS = [[0.0, 1.0, 2.0, 0.0], [1.0, 0.0, 0.5, 0.5], [3.0, -1.0, 1.0, 2.0]]


def _groups(row: list[float]) -> list[list[float]]:
    return [row[:2], row[2:]]


def test_layerwise_loss_self_distillation_by_hand():
    ce = sum(sum(_ce(g) for g in _groups(row)) / 2 for row in LAYERS)
    last = _groups(LAYERS[-1])
    kd = sum(sum(_kd(s, t) for s, t in zip(_groups(row), last, strict=True)) / 2 for row in LAYERS[:-1])  # earlier layers only
    assert layerwise_loss(torch.tensor(LAYERS), 2).item() == pytest.approx(ce + kd, rel=1e-6)


def test_layerwise_loss_with_teacher_distils_every_layer():
    teacher = [[0.0, 3.0], [1.0, -1.0]]
    ce = sum(sum(_ce(g) for g in _groups(row)) / 2 for row in LAYERS)
    kd = sum(sum(_kd(s, t) for s, t in zip(_groups(row), teacher, strict=True)) / 2 for row in LAYERS)  # the last layer too
    assert layerwise_loss(torch.tensor(LAYERS), 2, torch.tensor(teacher)).item() == pytest.approx(ce + kd, rel=1e-6)


def test_layerwise_self_distillation_target_is_detached():
    """The last layer learns from the labels only: its gradient is the CE's alone, no pull towards the earlier layers."""
    scores = torch.tensor(LAYERS, requires_grad=True)
    layerwise_loss(scores, 2).backward()
    ce_only = torch.tensor(LAYERS[-1], requires_grad=True)
    grouped_ce(ce_only, 2).backward()
    assert torch.allclose(scores.grad[-1], ce_only.grad, atol=1e-7)
    assert scores.grad[0].abs().sum() > 0  # the earlier layers still get CE + KD gradient


def test_reranker_loss_picks_the_form_by_shape():
    loss = RerankerLoss(group=3)
    flat, teacher = torch.tensor(SCORES), torch.tensor(TEACHER)
    assert loss(flat).item() == pytest.approx(grouped_ce(flat, 3).item())
    assert loss(flat, teacher).item() == pytest.approx(grouped_ce(flat, 3).item() + teacher_kd(flat.view(2, 3), teacher).item())
    layers = torch.tensor(LAYERS)
    assert RerankerLoss(group=2)(layers).item() == pytest.approx(layerwise_loss(layers, 2).item())
