"""Choosing what a node runs with — each tier's confidence calibrated, the cascade's threshold, the bar
below which answers go to review — and the ratios the literature reports for it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from agentkit.calibration import Agreement, TierCalibration, agreement
from agentkit.errors import ConfigError
from agentkit.eval.answers import TierAnswer
from agentkit.eval.cascades import CascadeOutcome

__all__ = ["calibrate", "calibrated", "checked_costs", "fit_confidence", "headline", "review_bar"]


def calibrated(fitted: TierCalibration, names: Sequence[str], rungs: Sequence[TierAnswer]) -> list[TierAnswer]:
    """The answers of a ladder's rungs (``names[j]`` answered ``rungs[j]``, cheapest first) with each valid
    answer's confidence calibrated as a node with ``fitted`` calibrates it (a tier without a map keeps its own)."""
    out = []
    for j, a in enumerate(rungs):
        if a.valid and a.confidence is not None:
            p = fitted.probability(names[j], a.confidence, _agreement(rungs, j))
            a = replace(a, confidence=p) if p is not None else a
        out.append(a)
    return out


def _agreement(rungs: Sequence[TierAnswer], j: int) -> Agreement | None:
    """How rung ``j``'s answer stands to the rung before it (:func:`agentkit.calibration.agreement`)."""
    return agreement((rungs[j - 1].valid, rungs[j - 1].value) if j else None, rungs[j].value)


def checked_costs(costs: Sequence[float]) -> tuple[float, float]:
    """``(review, wrong)``: what a review and a wrong answer cost, or a :class:`ConfigError`."""
    if len(costs) != 2 or not 0 <= costs[0] <= costs[1]:
        raise ConfigError(f"costs are REVIEW,WRONG: two numbers with 0 <= REVIEW <= WRONG, got {tuple(costs)}")
    return costs[0], costs[1]


def fit_confidence(
    table: Sequence[Sequence[TierAnswer]], scores: Sequence[Sequence[float]], names: Sequence[str], which: Sequence[int]
) -> tuple[TierCalibration | None, str]:
    """Per tier, isotonic maps from its confidence (and its agreement with the tier before) to the probability
    that its answer is right (scores in full), fitted on the items ``which``; ``scores[t][i]`` is tier ``t``'s
    score on item ``i``. Tiers that give no confidence are left out. ``None`` and why, when there are too few
    answers to fit."""
    if len(set(names)) < len(names):
        return None, f"tiers share a name ({', '.join(names)}): name them apart to calibrate them"
    samples: dict[str, list[tuple[float, bool, Agreement | None]]] = {name: [] for name in names}
    for i in which:
        row = table[i]
        for t, a in enumerate(row):
            if a.valid and a.confidence is not None:
                samples[names[t]].append((a.confidence, scores[t][i] >= 1 - 1e-9, _agreement(row, t)))
    samples = {name: rows for name, rows in samples.items() if rows}
    try:
        return TierCalibration.fit(samples), f"fitted on {len(which)} items"
    except ConfigError as e:
        return None, f"{e}; confidences left raw"


def review_bar(outcomes: Sequence[CascadeOutcome], scores: Sequence[float], floor: float, max_error: float) -> float:
    """The lowest confidence (at least ``floor``) at which the answers accepted at or above it fall short of a
    full score by at most ``max_error`` on average (for a classifier: are wrong at most that often) on these
    items; 1.0 when no bar gets there."""
    answered = [(o.confidence, s) for o, s in zip(outcomes, scores, strict=True) if o.tier is not None]
    bars = sorted({c for c, _ in answered if c is not None and c >= floor} | {floor})
    for bar in bars:  # an answer with no confidence is accepted whatever the bar (the policy cannot weigh it)
        kept = [s for c, s in answered if c is None or c >= bar]
        if kept and 1 - sum(kept) / len(kept) <= max_error + 1e-9:
            return bar
    return 1.0


def calibrate(
    points: Mapping[str, Mapping[str, Any]],
    *,
    target: float | None = None,
    budget: float | None = None,
    tolerance: float = 0.01,
) -> tuple[str, str]:
    """The cascade configuration to use, and why. ``target``: the cheapest reaching that score;
    ``budget``: the best score at most that cost per item; neither: the cheapest within
    ``tolerance`` of the best cascade score. Falls back to the best score when nothing qualifies."""
    cascades = {k: v for k, v in points.items() if k.startswith("cascade@")}
    if not cascades:
        raise ConfigError("calibration needs at least two tiers")
    best = max(cascades, key=lambda k: (cascades[k]["score"], -cascades[k]["cost_per_item"]))
    if budget is not None:
        within = [k for k, v in cascades.items() if v["cost_per_item"] <= budget]
        if not within:
            return best, f"no threshold costs at most {budget:g} per item; took the best score"
        pick = max(within, key=lambda k: (cascades[k]["score"], -cascades[k]["cost_per_item"]))
        return pick, f"best score at most {budget:g} USD per item"
    if target is None:
        target = cascades[best]["score"] - tolerance
        rule = f"cheapest within {tolerance:g} of the best score"
    else:
        rule = f"cheapest reaching score {target:g}"
    reaching = [k for k, v in cascades.items() if v["score"] >= target - 1e-9]
    if not reaching:
        return best, f"no threshold reaches {target:.4f}; took the best score"
    return min(reaching, key=lambda k: (cascades[k]["cost_per_item"], -cascades[k]["score"])), rule


def headline(points: Mapping[str, Mapping[str, Any]], pick: str) -> dict[str, Any]:
    """Ratios as the literature prints them: the cascade's cost relative to large-only (at the
    chosen threshold, and at the cheapest threshold matching large-only's score), the share of
    the small→large gap recovered (PGR) per share escalated, and APGR (area under PGR vs
    escalation rate, RouteLLM)."""
    tiers = sorted(k for k in points if k.startswith("tier"))
    small, large = points[tiers[0]], points[tiers[-1]]
    out: dict[str, Any] = {"cascade_vs_large_cost": _ratio(points[pick]["cost_per_item"], large["cost_per_item"])}
    matching = [v for k, v in points.items() if k.startswith("cascade@") and v["score"] >= large["score"] - 1e-9]
    cheapest = min((v["cost_per_item"] for v in matching), default=None)
    out["cost_vs_large_at_matched_score"] = _ratio(cheapest, large["cost_per_item"]) if cheapest is not None else None
    gap = large["score"] - small["score"]
    if gap <= 0:  # the larger tier is not better: escalation cannot recover anything
        out |= {"gap": gap, "pgr": None, "pgr_per_escalated": None, "apgr": None}
        return out
    pgr = (points[pick]["score"] - small["score"]) / gap
    esc = points[pick]["escalation_rate"]
    curve = sorted(
        [(0.0, 0.0), (1.0, 1.0)]
        + [
            (v["escalation_rate"], (v["score"] - small["score"]) / gap)
            for k, v in points.items()
            if k.startswith("cascade@")
        ]
    )
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False))
    out |= {"gap": gap, "pgr": pgr, "pgr_per_escalated": pgr / esc if esc else None, "apgr": area}
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None
