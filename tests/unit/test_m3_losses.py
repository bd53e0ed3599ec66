"""The M3 unified loss, term by term, against hand computation on tiny score matrices."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from flagops.losses import distributed
from flagops.losses import m3 as m3_losses
from flagops.losses.m3 import (
    CrossDeviceDense,
    M3UnifiedLoss,
    compute_loss_from_scores,
    ensemble_scores,
    m3_kd_loss,
    self_distill_kl,
)

B, G = 2, 2  # 2 queries, group of 2: columns 0,1 are query 0's group, 2,3 query 1's


def _scores(seed: int) -> torch.Tensor:
    return torch.randn(B, B * G, generator=torch.Generator().manual_seed(seed))


def _ce(row: list[float], target: int) -> float:
    """-log softmax(row)[target], by hand."""
    return -row[target] + math.log(sum(math.exp(x) for x in row))


def _kl(p_logits: list[float], q_logits: list[float]) -> float:
    """KL(softmax(p) || softmax(q)) by hand."""
    zp, zq = sum(math.exp(x) for x in p_logits), sum(math.exp(x) for x in q_logits)
    p = [math.exp(x) / zp for x in p_logits]
    return sum(pi * (math.log(pi) - (qi - math.log(zq))) for pi, qi in zip(p, q_logits, strict=True))


def _infonce(s: torch.Tensor) -> float:
    rows = s.tolist()
    return (_ce(rows[0], 0) + _ce(rows[1], G)) / B  # positives at columns i * group


def test_single_mode_is_plain_infonce_with_in_batch_negatives():
    s = _scores(0)
    out = compute_loss_from_scores({"dense": s}, G)
    assert out.loss.item() == pytest.approx(_infonce(s), rel=1e-6)
    assert set(out.terms) == {"dense"}  # no ensemble, nothing to self-distil


def test_without_in_batch_negatives_each_query_sees_its_own_group():
    local = torch.tensor([[2.0, 0.5], [0.1, 0.3]])  # (batch, group)
    out = compute_loss_from_scores({"dense": local}, G, in_batch=False)
    assert out.loss.item() == pytest.approx((_ce([2.0, 0.5], 0) + _ce([0.1, 0.3], 0)) / 2, rel=1e-6)


def test_unified_loss_weights_modes_and_ensemble_as_bge_m3():
    d, s, c = _scores(1), _scores(2), _scores(3)
    out = compute_loss_from_scores({"dense": d, "sparse": s, "colbert": c}, G)
    ens = d + 0.3 * s + c
    torch.testing.assert_close(ensemble_scores({"dense": d, "sparse": s, "colbert": c}), ens)
    want = (_infonce(d) + _infonce(ens) + 0.1 * _infonce(s) + _infonce(c)) / 4
    assert out.loss.item() == pytest.approx(want, rel=1e-6)
    assert out.terms["sparse"].item() == pytest.approx(_infonce(s), rel=1e-6)  # terms are unweighted


def test_self_distillation_adds_the_weighted_kl_mean_then_halves():
    d, s, c = _scores(1), _scores(2), _scores(3)
    out = compute_loss_from_scores({"dense": d, "sparse": s, "colbert": c}, G, self_distill=True)
    ens = (d + 0.3 * s + c).tolist()

    def kl(m):
        return sum(_kl(ens[i], m.tolist()[i]) for i in range(B)) / B  # batch mean, each row over all B*G columns

    unified = (_infonce(d) + _infonce(d + 0.3 * s + c) + 0.1 * _infonce(s) + _infonce(c)) / 4
    distil = (kl(d) + 0.1 * kl(s) + kl(c)) / 3
    assert out.terms["self_distill"].item() == pytest.approx(distil, rel=1e-5)
    assert out.loss.item() == pytest.approx((unified + distil) / 2, rel=1e-5)


def test_a_subset_of_modes_divides_by_its_own_term_count():
    d, s = _scores(4), _scores(5)
    out = compute_loss_from_scores({"dense": d, "sparse": s}, G)
    want = (_infonce(d) + _infonce(d + 0.3 * s) + 0.1 * _infonce(s)) / 3
    assert out.loss.item() == pytest.approx(want, rel=1e-6)


def test_self_distillation_teacher_is_detached_and_gradient_matches_flagembeddings_soft_ce():
    d = _scores(6).requires_grad_()
    c = _scores(7).requires_grad_()
    ens = d + c
    self_distill_kl(d, ens).backward()
    # Only the student path carries gradient: (softmax(d) - softmax(ens)) / B, as for
    # FlagEmbedding's soft cross-entropy -mean(sum(p_t * log_softmax(d))).
    want = (F.softmax(d.detach(), -1) - F.softmax(ens.detach(), -1)) / B
    torch.testing.assert_close(d.grad, want)
    assert c.grad is None
    d2 = d.detach().clone().requires_grad_()
    (-(F.softmax(ens.detach(), -1) * F.log_softmax(d2, -1)).sum(-1).mean()).backward()
    torch.testing.assert_close(d.grad, d2.grad)


def test_m3_kd_loss_by_hand():
    s = torch.tensor([[1.0, 0.5, -1.0, 0.2], [0.3, 0.1, 2.0, -0.5]])  # (B, B*G)
    teacher = torch.tensor([[0.7, 0.3], [0.4, 0.6]])  # (B, G) probabilities
    rows = s.tolist()
    # member j of query i: CE with target i*G + j, the group's earlier members masked out
    q0 = 0.7 * _ce(rows[0], 0) + 0.3 * _ce([rows[0][k] for k in (1, 2, 3)], 0)
    q1 = 0.4 * _ce(rows[1], 2) + 0.6 * _ce([rows[1][k] for k in (0, 1, 3)], 2)
    # the mean over the batch is taken per member: sum_j mean_i(p_ij * ce_ij)
    assert m3_kd_loss(s, teacher, G, in_batch=True).item() == pytest.approx((q0 + q1) / 2, rel=1e-5)


def test_m3_kd_loss_with_a_one_hot_teacher_is_infonce():
    s = _scores(8)
    one_hot = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert m3_kd_loss(s, one_hot, G, in_batch=True).item() == pytest.approx(_infonce(s), rel=1e-6)


def test_teacher_scores_replace_or_add_to_infonce_by_kd_loss():
    s = _scores(9)
    teacher_raw = torch.tensor([[3.0, 1.0], [0.5, 2.0]])
    kd = compute_loss_from_scores({"dense": s}, G, teacher=teacher_raw, kd_loss="m3_kd_loss")
    assert kd.loss.item() == pytest.approx(m3_kd_loss(s, F.softmax(teacher_raw, -1), G, True).item(), rel=1e-6)
    kl = compute_loss_from_scores({"dense": s}, G, teacher=teacher_raw, kd_loss="kl_div", distill_weight=0.5)
    local = [s[0, 0:2].tolist(), s[1, 2:4].tolist()]
    kl_hand = (_kl(teacher_raw[0].tolist(), local[0]) + _kl(teacher_raw[1].tolist(), local[1])) / B
    assert kl.loss.item() == pytest.approx(_infonce(s) + 0.5 * kl_hand, rel=1e-5)


def test_module_divides_by_temperature_and_slices_local_groups():
    sims = {"dense": _scores(10) * 0.02, "colbert": _scores(11) * 0.02}
    scaled = {k: v / 0.02 for k, v in sims.items()}
    got = M3UnifiedLoss(temperature=0.02)(sims, G, self_distill=True).loss
    torch.testing.assert_close(got, compute_loss_from_scores(scaled, G, self_distill=True).loss)
    local = {k: torch.stack([v[0, 0:2], v[1, 2:4]]) for k, v in scaled.items()}
    got = M3UnifiedLoss(temperature=0.02, in_batch=False)(sims, G).loss
    torch.testing.assert_close(got, compute_loss_from_scores(local, G, in_batch=False).loss)
    with pytest.raises(ValueError, match="kd_loss"):
        M3UnifiedLoss(kd_loss="mse")


# --------------------------------------------------------------------------- cross-device negatives (dense only)


def _global_infonce(s: torch.Tensor) -> float:
    """InfoNCE over every rank's rows: query j's positive at column j * G."""
    return sum(_ce(row, j * G) for j, row in enumerate(s.tolist())) / s.shape[0]


def test_cross_device_in_one_process_is_todays_loss():
    sims = {"dense": _scores(20) * 0.02, "sparse": _scores(21) * 0.02, "colbert": _scores(22) * 0.02}
    teacher = torch.tensor([[3.0, 1.0], [0.5, 2.0]])
    dense = (torch.randn(B, 8), torch.randn(B * G, 8))  # world size 1: not gathered, not used
    for kd_loss in ("m3_kd_loss", "kl_div"):
        want = M3UnifiedLoss(0.02, kd_loss=kd_loss)(sims, G, teacher=teacher, self_distill=True)
        got = M3UnifiedLoss(0.02, kd_loss=kd_loss, cross_device=True)(sims, G, teacher=teacher, self_distill=True, dense=dense)
        assert torch.equal(got.loss, want.loss)
    # The pure function with a "world" of one rank: the global dense scores are the local ones.
    scores = {m: v / 0.02 for m, v in sims.items()}
    want = compute_loss_from_scores(scores, G, teacher=teacher, self_distill=True)
    got = compute_loss_from_scores(scores, G, teacher=teacher, self_distill=True, dense_global=CrossDeviceDense(scores["dense"], teacher))
    assert torch.equal(got.loss, want.loss) and got.terms.keys() == want.terms.keys()


def test_cross_device_dense_term_is_global_and_everything_else_local_by_hand():
    """Rank 1 of 2: L_dense over all 4 queries and 8 passages; the ensemble and KLs on rank 1's own block."""
    dense_all = torch.randn(2 * B, 2 * B * G, generator=torch.Generator().manual_seed(23))  # (W*B, W*B*G)
    d = dense_all[B:, B * G :]  # rank 1's block: its queries against its passages
    s, c = _scores(24), _scores(25)
    out = compute_loss_from_scores({"dense": d, "sparse": s, "colbert": c}, G, self_distill=True, dense_global=CrossDeviceDense(dense_all))
    ens = d + 0.3 * s + c

    def kl(m):
        return sum(_kl(ens.tolist()[i], m.tolist()[i]) for i in range(B)) / B

    unified = (_global_infonce(dense_all) + _infonce(ens) + 0.1 * _infonce(s) + _infonce(c)) / 4
    distil = (kl(d) + 0.1 * kl(s) + kl(c)) / 3
    assert out.terms["dense"].item() == pytest.approx(_global_infonce(dense_all), rel=1e-6)
    assert out.terms["ensemble"].item() == pytest.approx(_infonce(ens), rel=1e-6)
    assert out.loss.item() == pytest.approx((unified + distil) / 2, rel=1e-5)
    # Dense alone is exactly InfoNCE over the gathered batch (InBatchContrastiveLoss's cross-device loss).
    alone = compute_loss_from_scores({"dense": d}, G, dense_global=CrossDeviceDense(dense_all))
    assert alone.loss.item() == pytest.approx(_global_infonce(dense_all), rel=1e-6)


def test_cross_device_teacher_is_gathered_for_dense_only():
    dense_all = torch.randn(2 * B, 2 * B * G, generator=torch.Generator().manual_seed(26))
    teacher_all = torch.tensor([[3.0, 1.0], [0.5, 2.0], [1.0, 1.5], [2.5, 0.0]])  # (W*B, G), rank 0's rows first
    d, c, teacher = dense_all[:B, : B * G], _scores(27), teacher_all[:B]  # rank 0
    out = compute_loss_from_scores({"dense": d, "colbert": c}, G, teacher=teacher, dense_global=CrossDeviceDense(dense_all, teacher_all))
    kd_dense = m3_kd_loss(dense_all, F.softmax(teacher_all, -1), G, True).item()
    kd_ens, kd_colbert = (m3_kd_loss(x, F.softmax(teacher, -1), G, True).item() for x in (d + c, c))
    assert out.terms["dense"].item() == pytest.approx(kd_dense, rel=1e-6)
    assert out.loss.item() == pytest.approx((kd_dense + kd_ens + kd_colbert) / 3, rel=1e-6)


def test_cross_device_needs_in_batch_negatives_and_the_dense_mode():
    with pytest.raises(ValueError, match="in-batch negatives"):
        M3UnifiedLoss(in_batch=False, cross_device=True)
    with pytest.raises(ValueError, match="dense mode"):
        compute_loss_from_scores({"sparse": _scores(28)}, G, dense_global=CrossDeviceDense(torch.zeros(2 * B, 2 * B * G)))


def test_module_gathers_dense_vectors_and_teacher_as_rank_1_of_2(monkeypatch):
    """A faked 2-rank group: rank 0's rows arrive as copies; L_dense is over both ranks."""
    q0, p0, t0 = torch.randn(B, 8), torch.randn(B * G, 8), torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # rank 0's
    q1, p1, t1 = torch.randn(B, 8), torch.randn(B * G, 8), torch.tensor([[0.5, 1.5], [0.0, 3.0]])  # ours
    remote = {q1.shape: q0, p1.shape: p0, t1.shape: t0}  # three distinct shapes

    def all_gather(slots, t):
        slots[0].copy_(remote[t.shape])
        slots[1].copy_(t)

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(m3_losses, "world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "all_gather", all_gather)
    sims = {"dense": q1 @ p1.T, "colbert": _scores(29)}
    got = M3UnifiedLoss(0.05, cross_device=True)(sims, G, teacher=t1, self_distill=True, dense=(q1, p1))
    dense_all = torch.cat([q0, q1]) @ torch.cat([p0, p1]).T / 0.05  # (W*B, W*B*G)
    local = {m: v / 0.05 for m, v in sims.items()}
    want = compute_loss_from_scores(local, G, teacher=t1, self_distill=True, dense_global=CrossDeviceDense(dense_all, torch.cat([t0, t1])))
    torch.testing.assert_close(got.loss, want.loss)
