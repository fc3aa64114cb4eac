"""Summary figures: one percentile, one interval, one batch summary — used by traces, ``agentkit run``
and ``agentkit eval`` alike, so that the same records always print the same figures."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["percentile", "summarize", "wilson"]


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation between the nearest ranks; 0 for no values."""
    xs = sorted(values)
    if not xs:
        return 0.0
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion ``k/n``."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n))) / d
    return (max(0.0, c - h), min(1.0, c + h))


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts, escalation rate, answers per tier, cost and latency of result records (``ok``, ``status``,
    ``escalated``, ``tier``, ``cost_usd``, ``latency_s``: :meth:`Result.to_record` or ``agentkit run``'s lines).
    ``needs_review`` counts the answers that are ``ok`` but marked for a person (``status: "needs_review"``)."""
    n = len(records)
    per_tier: dict[str, int] = {}
    for r in records:
        if r.get("tier"):
            per_tier[str(r["tier"])] = per_tier.get(str(r["tier"]), 0) + 1
    cost = sum(float(r.get("cost_usd") or 0.0) for r in records)
    latency = [float(r.get("latency_s") or 0.0) for r in records]
    return {
        "items": n,
        "ok": sum(bool(r.get("ok")) for r in records),
        "needs_review": sum(bool(r.get("ok")) and r.get("status") == "needs_review" for r in records),
        "failed": sum(not r.get("ok") for r in records),
        "escalation_rate": sum(bool(r.get("escalated")) for r in records) / n if n else 0.0,
        "answered_by_tier": per_tier,
        "cost_usd": cost,
        "cost_per_item_usd": cost / n if n else 0.0,
        "latency_p50_s": percentile(latency, 0.5),
        "latency_p95_s": percentile(latency, 0.95),
    }
