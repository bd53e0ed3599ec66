"""The champion/challenger gate: a pure function of two flat metric dicts.

Both dicts are what the evaluator wrote (``candidate/ndcg@10``, ``base/ndcg@10``, ...);
the gate compares only the ``<prefix><metric>`` values, i.e. each model's own scores:
``candidate/`` for an embedder, ``reranked/`` for a reranker (``registry.families``).

Rules (``gain = candidate - champion`` on the primary metric):

* No champion: promote ("first model").
* Promote only if ``gain > 0`` and ``gain >= min_delta``: with ``min_delta = 0`` a tie
  keeps the champion (no churn for no gain); with ``min_delta > 0`` a gain of exactly
  ``min_delta`` is enough. Sums are compared with a 1e-9 slack against float noise.
* And no guard metric dropped by more than ``tolerance`` (``champion - candidate <=
  tolerance``). A guard the champion never recorded is skipped; one the candidate lacks
  while the champion has it blocks promotion (it cannot be checked).
* A champion with no recorded primary metric also blocks promotion (fail closed): move
  the alias by hand or tag that version's metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

PREFIX = "candidate/"
EPS = 1e-9  # slack for float noise: 0.30 - 0.28 is 0.01999999999999999


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)


def decide(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    primary: str,
    min_delta: float,
    guards: Sequence[str],
    tolerance: float,
    prefix: str = PREFIX,
) -> Decision:
    """Decide whether ``candidate`` takes the champion alias. Reasons carry the numbers."""
    key = prefix + primary
    if key not in candidate:
        have = ", ".join(sorted(candidate)) or "nothing"
        raise KeyError(f"candidate metrics lack {key!r} (the primary metric); they have: {have}")
    cand = float(candidate[key])
    if champion is None:
        return Decision(True, [f"first model: no champion yet; {primary} = {cand:.4f}"])
    if key not in champion:
        return Decision(
            False,
            [f"champion has no recorded {key}: cannot compare, keeping it; move the alias by hand or tag its metrics"],
        )

    champ = float(champion[key])
    gain = cand - champ
    wins = gain > EPS and gain >= min_delta - EPS
    if wins:
        verdict = "beats the champion"
    elif abs(gain) <= EPS:
        verdict = "ties the champion, which stays"
    elif gain < 0:
        verdict = "is worse than the champion"
    else:
        verdict = f"gains less than min_delta {min_delta:.4f}"
    reasons = [f"{primary}: {cand:.4f} vs champion {champ:.4f} ({gain:+.4f}); {verdict}"]

    guards_ok = True
    for guard in guards:
        ok, reason = _check_guard(candidate, champion, prefix + guard, tolerance)
        guards_ok = guards_ok and ok
        reasons.append(reason)
    return Decision(wins and guards_ok, reasons)


def _check_guard(candidate: Mapping[str, float], champion: Mapping[str, float], key: str, tolerance: float):
    guard = key.partition("/")[2]
    if key not in champion:
        return True, f"guard {guard}: champion has no recorded value; skipped"
    if key not in candidate:
        return False, f"guard {guard}: candidate has no recorded value (champion {champion[key]:.4f}); cannot check"
    cand, champ = float(candidate[key]), float(champion[key])
    drop = champ - cand
    if drop > tolerance + EPS:
        return False, f"guard {guard}: {cand:.4f} vs champion {champ:.4f} drops {drop:.4f} > tolerance {tolerance:.4f}"
    return True, f"guard {guard}: {cand:.4f} vs champion {champ:.4f} ({-drop:+.4f}) within tolerance {tolerance:.4f}"
