"""The champion/challenger gate, case by case, with numbers worked out by hand."""

from __future__ import annotations

import pytest

from flagops.registry.promotion import decide

GUARDS = ["recall@100", "mrr@10"]


def metrics(ndcg: float, recall: float = 0.80, mrr: float = 0.40) -> dict[str, float]:
    # The baselines' keys must be ignored: the gate compares candidate/ values only.
    return {"candidate/ndcg@10": ndcg, "candidate/recall@100": recall, "candidate/mrr@10": mrr, "bm25/ndcg@10": 0.99}


def gate(candidate, champion, min_delta=0.0, tolerance=0.01):
    return decide(candidate, champion, "ndcg@10", min_delta, GUARDS, tolerance)


def test_first_model_is_promoted():
    d = gate(metrics(0.10), None)
    assert d.promote
    assert d.reasons[0].startswith("first model")
    assert "0.1000" in d.reasons[0]


def test_clear_win_is_promoted_and_reasons_carry_numbers():
    d = gate(metrics(0.55), metrics(0.50), min_delta=0.01)
    assert d.promote
    assert "0.5500 vs champion 0.5000 (+0.0500)" in d.reasons[0]
    assert len(d.reasons) == 1 + len(GUARDS)  # one line per guard


def test_win_below_min_delta_is_not_promoted():
    d = gate(metrics(0.505), metrics(0.50), min_delta=0.01)
    assert not d.promote
    assert "less than min_delta 0.0100" in d.reasons[0]


def test_gain_of_exactly_min_delta_is_enough_despite_float_noise():
    assert 0.30 - 0.28 < 0.02  # the float noise the gate must absorb
    assert gate(metrics(0.30), metrics(0.28), min_delta=0.02).promote


def test_tie_keeps_the_champion():
    d = gate(metrics(0.50), metrics(0.50))
    assert not d.promote
    assert "ties" in d.reasons[0]


def test_worse_candidate_is_not_promoted():
    d = gate(metrics(0.40), metrics(0.50))
    assert not d.promote
    assert "(-0.1000)" in d.reasons[0]


def test_guard_drop_beyond_tolerance_blocks_promotion():
    d = gate(metrics(0.60, recall=0.75), metrics(0.50, recall=0.80), tolerance=0.01)
    assert not d.promote
    assert any("recall@100: 0.7500 vs champion 0.8000 drops 0.0500 > tolerance 0.0100" in r for r in d.reasons)


def test_guard_drop_within_tolerance_is_allowed():
    d = gate(metrics(0.60, mrr=0.395), metrics(0.50, mrr=0.40), tolerance=0.01)
    assert d.promote
    assert any("mrr@10" in r and "within tolerance" in r for r in d.reasons)


def test_guard_missing_on_candidate_blocks_but_missing_on_champion_is_skipped():
    cand = metrics(0.60)
    del cand["candidate/mrr@10"]
    assert not gate(cand, metrics(0.50)).promote
    champ = metrics(0.50)
    del champ["candidate/mrr@10"]
    d = gate(metrics(0.60), champ)
    assert d.promote
    assert any("mrr@10: champion has no recorded value; skipped" in r for r in d.reasons)


def test_champion_without_primary_fails_closed():
    d = gate(metrics(0.60), {"candidate/recall@100": 0.8})
    assert not d.promote
    assert "cannot compare" in d.reasons[0]


def test_candidate_without_primary_is_an_error_naming_the_key():
    with pytest.raises(KeyError, match="candidate/ndcg@10"):
        gate({"base/ndcg@10": 0.5}, None)
