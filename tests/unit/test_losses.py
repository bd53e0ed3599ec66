"""Losses against hand computation on tiny tensors."""

import math

import torch

from flagops.losses.infonce import compute_loss_from_embeddings, group_scores, local_scores
from flagops.losses.kl_distill import compute_loss_from_scores

# Two queries, group 2 (pos, neg) each; 2-d unit vectors so dot products are easy.
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
P = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])  # q0: [p0, n0]; q1: [p1, n1]
T = 0.5


def _ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(x) for x in logits))


def test_infonce_without_in_batch_negatives():
    # q0 . [p0, n0] = [1, 0] ; q1 . [p1, n1] = [0.8, 0]; divided by T = 0.5.
    expected = (_ce([2.0, 0.0], 0) + _ce([1.6, 0.0], 0)) / 2
    got = compute_loss_from_embeddings(Q, P, temperature=T, in_batch=False)
    assert math.isclose(got.item(), expected, rel_tol=1e-6)


def test_infonce_with_in_batch_negatives():
    # q0 . all 4 passages = [1, 0, 0.6, 1]; target column 0
    # q1 . all 4 passages = [0, 1, 0.8, 0]; target column 2 (its group starts at 1 * 2)
    expected = (_ce([2.0, 0.0, 1.2, 2.0], 0) + _ce([0.0, 2.0, 1.6, 0.0], 2)) / 2
    got = compute_loss_from_embeddings(Q, P, temperature=T, in_batch=True)
    assert math.isclose(got.item(), expected, rel_tol=1e-6)


def test_local_scores_pick_each_querys_group():
    full = group_scores(Q, P, T, in_batch=True)  # (2, 4)
    assert torch.equal(local_scores(full, 2, True), group_scores(Q, P, T, in_batch=False))


def test_kl_distill_matches_hand_kl_and_is_zero_at_teacher():
    student = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])

    def softmax(xs):
        z = sum(math.exp(x) for x in xs)
        return [math.exp(x) / z for x in xs]

    expected = 0.0
    for s, t in zip(student.tolist(), teacher.tolist(), strict=True):
        ps, pt = softmax(s), softmax(t)
        expected += sum(b * math.log(b / a) for a, b in zip(ps, pt, strict=True))
    expected /= 2  # batchmean
    assert math.isclose(compute_loss_from_scores(student, teacher).item(), expected, rel_tol=1e-5)
    assert compute_loss_from_scores(teacher, teacher).item() < 1e-7


def test_kl_has_flagembedding_soft_ce_gradients():
    """FlagEmbedding's kl_div = -sum(p_t * log_softmax(s)): same gradient as our KL."""
    s1 = torch.tensor([[0.3, -1.0, 2.0]], requires_grad=True)
    s2 = s1.detach().clone().requires_grad_(True)
    t = torch.tensor([[1.0, 0.5, -0.5]])
    compute_loss_from_scores(s1, t).backward()
    (-(torch.softmax(t, -1) * torch.log_softmax(s2, -1)).sum(-1).mean()).backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-7)
