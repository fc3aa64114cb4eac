"""Every configuration of a ladder — each tier alone, the cascade at each threshold, sub-ladders —
derived from the answers with :meth:`Policy.decide`, the rule a node runs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from agentkit.errors import ConfigError
from agentkit.eval.answers import TierAnswer
from agentkit.policy import Decision, Policy, Rung
from agentkit.stats import percentile, wilson

__all__ = ["THRESHOLDS", "CascadeOutcome", "cascade", "configurations", "figures"]

THRESHOLDS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)
"""The default threshold sweep."""


@dataclass
class CascadeOutcome:
    value: Any
    tier: int | None
    """Index of the tier whose answer was taken (None: failure or abstention)."""
    cost_usd: float
    seconds: float
    escalated: bool
    abstained: bool = False
    confidence: float | None = None
    review: bool = False
    """Accepted, but marked for review (``Result.needs_review``)."""


def cascade(
    row: Sequence[TierAnswer],
    policy: Policy,
    abstention: Any = None,
    is_abstention: Callable[[Any], bool] | None = None,
) -> CascadeOutcome:
    """What a node with ``policy`` over these tiers returns: :meth:`Policy.decide` after each answer,
    as :meth:`Node.run` calls it. ``abstention`` is the task's abstention (``when_unsure="abstain"``,
    when no tier abstained on its own); ``is_abstention`` tells a tier's own abstention
    (:meth:`~agentkit.task.Task.is_abstention`)."""
    cost = seconds = 0.0
    rungs: list[Rung] = []
    decision = Decision("fail")
    for a in row:
        cost += a.cost_usd
        seconds += a.seconds
        abstains = a.valid and is_abstention is not None and is_abstention(a.value)
        rungs.append(Rung(a.valid, a.confidence, abstains))
        decision = policy.decide(rungs, tiers=len(row))
        if decision.action != "next":
            break
    escalated = len(rungs) > 1
    if decision.action == "accept":
        assert decision.index is not None
        taken = row[decision.index]
        review = decision.how == "below_threshold"
        return CascadeOutcome(
            taken.value, decision.index, cost, seconds, escalated, confidence=taken.confidence, review=review
        )
    if decision.action == "abstain":
        value = row[decision.index].value if decision.index is not None else abstention
        return CascadeOutcome(value, None, cost, seconds, escalated, abstained=True)
    return CascadeOutcome(None, None, cost, seconds, escalated)


def figures(outcomes: Sequence[CascadeOutcome], scores: Sequence[float], n_tiers: int) -> dict[str, Any]:
    """Score (mean, 95% interval), escalation rate, share answered per tier, cost per item and per
    answer (all attempts counted), latency p50/p95 and failures of one configuration; the share of
    items accepted as confident (not marked for review) and the error among them."""
    n = len(outcomes)
    answered = sum(o.tier is not None or o.abstained for o in outcomes)
    cost = sum(o.cost_usd for o in outcomes)
    score = sum(scores) / n if n else 0.0
    confident = [s for o, s in zip(outcomes, scores, strict=True) if o.tier is not None and not o.review]
    return {
        "score": score,
        "ci95": wilson(sum(scores), n),
        "accepted_share": len(confident) / n if n else 0.0,
        "accepted_error": 1 - sum(confident) / len(confident) if confident else None,
        "review_rate": sum(o.review for o in outcomes) / n if n else 0.0,
        "escalation_rate": sum(o.escalated for o in outcomes) / n if n else 0.0,
        "answered_by": [sum(o.tier == t for o in outcomes) / n if n else 0.0 for t in range(n_tiers)],
        "abstained": sum(o.abstained for o in outcomes) / n if n else 0.0,
        "failures": n - answered,
        "cost_per_item": cost / n if n else 0.0,
        "cost_per_answer": cost / answered if answered else None,
        "s_per_item": sum(o.seconds for o in outcomes) / n if n else 0.0,
        "latency_p50_s": percentile([o.seconds for o in outcomes], 0.5),
        "latency_p95_s": percentile([o.seconds for o in outcomes], 0.95),
    }


def configurations(
    table: Sequence[Sequence[TierAnswer]],
    policy: Policy,
    thresholds: Sequence[float],
    abstention: Any = None,
    ladders: Mapping[str, Sequence[int]] | None = None,
    is_abstention: Callable[[Any], bool] | None = None,
    calibrate: Callable[[Sequence[TierAnswer], Sequence[int]], list[TierAnswer]] | None = None,
) -> dict[str, list[CascadeOutcome]]:
    """Outcomes per configuration: each tier alone (its own answer whatever its confidence — the
    small-only / large-only baselines; an invalid answer is still a failure or, under an abstaining
    policy, an abstention), the cascade per threshold, and each of ``ladders`` (name → tier indices,
    cheapest first) as a cascade per threshold (``NAME@THRESHOLD``), e.g. the stock and the tuned
    small tier each under the same large one. ``calibrate(answers, tiers)``: the answers of the rungs ``tiers``
    of a configuration, cheapest first, with their confidences as a calibrated node would see them."""
    n_tiers = len(table[0]) if table else 0

    def rungs(row: Sequence[TierAnswer], which: Sequence[int]) -> list[TierAnswer]:
        asked = [row[t] for t in which]
        return calibrate(asked, which) if calibrate is not None else asked

    out: dict[str, list[CascadeOutcome]] = {}
    alone = replace(policy, threshold=0.0)
    for t in range(n_tiers):
        out[f"tier{t}"] = [_on(cascade(rungs(row, [t]), alone, abstention, is_abstention), [t]) for row in table]
    if n_tiers > 1:
        every = list(range(n_tiers))
        for th in thresholds:
            at = replace(policy, threshold=th)
            out[f"cascade@{th:g}"] = [cascade(rungs(row, every), at, abstention, is_abstention) for row in table]
    for name, ladder in (ladders or {}).items():
        if not ladder or any(not 0 <= t < n_tiers for t in ladder):
            raise ConfigError(f"ladder {name!r} names tiers outside 0..{n_tiers - 1}: {list(ladder)}")
        for th in thresholds:
            at = replace(policy, threshold=th)
            out[f"{name}@{th:g}"] = [
                _on(cascade(rungs(row, ladder), at, abstention, is_abstention), ladder) for row in table
            ]
    return out


def _on(outcome: CascadeOutcome, rungs: Sequence[int]) -> CascadeOutcome:
    """``outcome`` of a sub-ladder, its tier index mapped back to the node's ladder."""
    return replace(outcome, tier=rungs[outcome.tier] if outcome.tier is not None else None)
